"""Data-parallel training: 2 gloo ranks with per-rank batch b against 1 process with batch 2b.

Both draw the same global stream (each rank keeps its half of every random tensor), so the only difference
is arithmetic order: two half-batch means averaged by an all-reduce instead of one mean, and each rank on
one thread. Measured here after 6 steps: largest weight difference 1.5e-8 (2-D teacher, stage 1), 3e-8 to
6e-8 (stage 2, di / dmd + adaptive / sid + GAN) and 6e-7 (digits UNet teacher): float32 rounding. One
process with the per-rank batch alone (what a rank that skipped the average would compute) differs by
6e-3 to 1e-2. The tolerance, 1e-5 absolute, is 1% of one Adam step at these learning rates (1e-3): rounding
passes with a margin of 15x or more, and a rank that drew other noise, skipped the gradient average or
averaged the wrong way fails by a factor of about 600.

The ranks run in processes started by torch's elastic launcher (spawn): the jobs below are module-level
functions so they can travel by pickle."""

import pytest
import torch

from disback_pipeline.diffusion import distributed
from disback_pipeline.diffusion.backbones import build_network
from disback_pipeline.diffusion.checkpoint import Checkpoint
from disback_pipeline.diffusion.config import DegradationConfig, DistillConfig, TrainingConfig, from_dict
from disback_pipeline.diffusion.data import GaussianMixture2D, load_digits_source
from disback_pipeline.diffusion.degradation import record_degradation
from disback_pipeline.diffusion.disback import distill
from disback_pipeline.diffusion.divergence import DivergenceError
from disback_pipeline.diffusion.state import StateStore, fingerprint
from disback_pipeline.diffusion.teacher import pretrain_teacher

TOL = 1e-5
MLP = {"backbone": "mlp", "width": 16, "num_blocks": 1, "emb_dim": 8}
UNET = {"backbone": "unet", "model_channels": 8, "channel_mult": [1, 2], "num_blocks": 1, "attn_resolutions": [4]}
SRC = GaussianMixture2D.ring(4, 1.0, 0.1)


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def teacher_job(source_name: str, batch: int, steps: int, folder: str | None = None, stop_at: int = 0):
    source = SRC if source_name == "ring" else load_digits_source()
    network = MLP if source_name == "ring" else UNET
    cfg = TrainingConfig(steps=steps, batch_size=batch, lr=1e-3, warmup_steps=2, log_every=0, checkpoint_every=3,
                         ema_decay=0.0)  # the EMA is the trained weights: what is compared is training itself
    store = None if folder is None else StateStore(folder, "teacher", 3, fingerprint(x=1))
    on_step = _Stop(stop_at) if stop_at else None
    ckpt, history = pretrain_teacher(source, network, cfg, seed=3, device="cpu", on_step=on_step, store=store)
    return {k: v.clone() for k, v in ckpt.net.state_dict().items()}, [r["loss"] for r in history]


class _Stop:
    """Fails rank 0 after a given step (a stand-in for a crash)."""

    def __init__(self, step: int):
        self.step = step

    def __call__(self, step, record):
        if step == self.step:
            raise RuntimeError(f"stopped at step {step}")


def _tiny_teacher():
    torch.manual_seed(0)
    cfg = {**MLP, "dim": 2}
    return Checkpoint(build_network(cfg), cfg, {"role": "teacher"})


def stage1_job(batch: int):
    deg = DegradationConfig(k1=6, n_nodes=2, spacing="distance", candidates=3, probe_size=64, lr=1e-3,
                            batch_size=batch, log_every=0, device="cpu")
    path, history = record_degradation(_tiny_teacher(), SRC, deg, 2.5)
    return path, [r["loss_fake_score"] for r in history]


def stage2_job(batch: int, path, settings: dict):
    cfg = from_dict(DistillConfig, {"budget": 6, "batch_size": batch, "lr_generator": 1e-3, "lr_fake": 1e-3,
                                    "log_every": 0, "device": "cpu", "s_init": 2.5, "keep": "last", **settings},
                    "backtracking")
    result = distill(_tiny_teacher(), SRC, path, cfg)
    return ({k: v.clone() for k, v in result.generator.net.state_dict().items()},
            [(r["iteration"], r["target"], r["switch_reason"]) for r in result.history if r["switch_reason"]])


def diverging_job():
    from disback_pipeline.diffusion.training import train_step

    net = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    x = torch.full((2, 2), float("nan") if distributed.ranks().rank == 1 else 1.0)  # one rank's data is bad
    train_step(opt, lambda: net(x).mean(), device=torch.device("cpu"), where=("test stage", 1))


@pytest.mark.parametrize("source_name", ["ring", "digits"])
def test_teacher_two_ranks_equal_one_process(source_name):
    one, loss_one = distributed.launch(teacher_job, source_name, 16, 6, nproc=1)
    two, loss_two = distributed.launch(teacher_job, source_name, 8, 6, nproc=2, backend="gloo")
    assert max_diff(one, two) < TOL
    assert loss_two == pytest.approx(loss_one, rel=1e-5)  # rank 0's history holds the global batch's loss
    # and the ranks really shared the work: half the batch on each rank is not the same run as half the batch
    half, _ = distributed.launch(teacher_job, source_name, 8, 6, nproc=1)
    assert max_diff(one, half) > 100 * TOL


def test_stage1_two_ranks_equal_one_process():
    path_one, loss_one = distributed.launch(stage1_job, 16, nproc=1)
    path_two, loss_two = distributed.launch(stage1_job, 8, nproc=2, backend="gloo")
    assert path_one.keys == path_two.keys  # the same nodes picked (by distance on the same whole probe)
    for a, b in zip(path_one.nodes, path_two.nodes):
        assert max_diff(a.state_dict, b.state_dict) < TOL
    assert loss_two == pytest.approx(loss_one, rel=1e-5)


@pytest.mark.parametrize("settings", [
    {"switch": "fixed", "k2": 1, "loss": "di"},
    {"switch": "adaptive", "adaptive": {"warmup": 1, "window": 2, "cap": 2, "fraction": 0.9}, "loss": "dmd"},
    {"switch": "fixed", "k2": 1, "loss": "sid", "gan_weight": 0.1},
], ids=["di-fixed", "dmd-adaptive", "sid+gan"])
def test_stage2_two_ranks_equal_one_process(settings):
    path, _ = stage1_job(16)
    one, switches_one = distributed.launch(stage2_job, 16, path, settings, nproc=1)
    two, switches_two = distributed.launch(stage2_job, 8, path, settings, nproc=2, backend="gloo")
    assert switches_one == switches_two  # the same walk (adaptive: on the all-reduced mismatch)
    assert max_diff(one, two) < TOL


def test_two_ranks_resume_after_a_crash(tmp_path):
    one, loss_one = distributed.launch(teacher_job, "ring", 16, 8, nproc=1)
    with pytest.raises(RuntimeError, match="stopped at step 5"):  # rank 0's own error, raised here
        distributed.launch(teacher_job, "ring", 8, 8, str(tmp_path), 5, nproc=2, backend="gloo")
    assert [f.name for f in StateStore(tmp_path, "t", 3, {}).files()] == ["state-000000003.pt"]  # rank 0 wrote it
    two, loss_two = distributed.launch(teacher_job, "ring", 8, 8, str(tmp_path), nproc=2, backend="gloo")
    assert max_diff(one, two) < TOL
    assert loss_two == pytest.approx(loss_one, rel=1e-5)


def test_a_rank_with_bad_data_stops_every_rank():
    """The guard sees the averaged loss and gradients, so all ranks stop at the same step (none hangs)."""
    with pytest.raises(DivergenceError, match="test stage"):
        distributed.launch(diverging_job, nproc=2, backend="gloo")


def test_the_callers_signal_handlers_come_back():
    import signal

    def mine(*_):
        pass

    before = signal.signal(signal.SIGTERM, mine)
    try:
        distributed.launch(stage1_job, 8, nproc=2, backend="gloo")
        assert signal.getsignal(signal.SIGTERM) is mine  # not the launcher's, which would outlive the ranks
    finally:
        signal.signal(signal.SIGTERM, before)


def test_one_rank_is_the_plain_call():
    assert distributed.launch(max, 3, 5, nproc=1) == 5
    assert distributed.global_size(8) == 8
    x = torch.arange(6)
    assert distributed.local(x) is x


@pytest.mark.slow
def test_kedro_run_on_two_ranks_equals_one_process(project):
    """`kedro run --pipelines=distill` with distributed.nproc 2: the nodes start the ranks; the run's MLflow
    curves are whole, and its weights equal a 1-process run with each batch doubled (the global batch)."""
    import json

    import mlflow

    project.edit("toy2d", "parameters_teacher", teacher__training__steps=30, teacher__training__batch_size=64,
                 teacher__report__num_samples=200, teacher__network__mlp__width=32)
    project.edit("toy2d", "parameters_degradation", degradation__k1=12, degradation__candidates=4,
                 degradation__probe_size=64, degradation__batch_size=32)
    project.edit("toy2d", "parameters_backtracking", backtracking__budget=12, backtracking__k2=3,
                 backtracking__eval_every=6, backtracking__batch_size=32)
    project.edit("toy2d", "parameters_evaluation", evaluation__reference_samples=500, evaluation__n_samples=500,
                 evaluation__batch_size=500, backtracking__proxy_samples=100, evaluation__grid_samples=100)
    models = project.path / "data/toy2d/06_models"

    def weights():
        return {name: torch.load(models / name, weights_only=True)["state_dict"]
                for name in ("teacher.pt", "generator.pt", "generator_ema.pt")}

    def trained():
        """Per stage, from its finished state: (the iteration its run resumed after, the iterations it trained)."""
        states = project.path / "data/toy2d/09_training_state"
        newest = {stage: torch.load(sorted((states / stage).glob("state-*.pt"))[-1], weights_only=True)
                  for stage in ("teacher", "degradation", "backtracking")}
        return {stage: (s["resumed_from"], s["trained"]) for stage, s in newest.items() if s["complete"]}

    totals = {"teacher": (0, 30), "degradation": (0, 12), "backtracking": (0, 12)}

    project.edit("toy2d", "parameters_distributed", distributed__nproc=2)
    project.run("distill", env="toy2d")
    two = weights()
    assert trained() == totals  # every stage trained in full, on the ranks
    run = mlflow.search_runs(experiment_names=None, search_all_experiments=True, output_format="list")[0]
    history = mlflow.MlflowClient().get_metric_history(run.info.run_id, "teacher/loss")
    assert [m.step for m in history] == list(range(1, 31))  # rank 0's history, logged by the node
    assert len(mlflow.MlflowClient().get_metric_history(run.info.run_id, "degradation/dsm_loss")) > 0
    assert "backtracking/proxy_reverse_kl" in run.data.metrics  # rank 0 evaluated during stage 2
    metrics_two = json.loads((project.path / "data/toy2d/08_reporting/metrics.json").read_text())

    project.edit("toy2d", "parameters_distributed", distributed__nproc=1)
    project.edit("toy2d", "parameters_teacher", teacher__training__batch_size=128)
    project.edit("toy2d", "parameters_degradation", degradation__batch_size=64)
    project.edit("toy2d", "parameters_backtracking", backtracking__batch_size=64)
    project.run("distill", env="toy2d")  # the changed batches retrain every stage (finished states superseded)
    one = weights()
    assert trained() == totals  # ... and again in one process: nothing was reused from the 2-rank run
    for name in one:
        assert max_diff(one[name], two[name]) < TOL, name
    metrics_one = json.loads((project.path / "data/toy2d/08_reporting/metrics.json").read_text())
    assert metrics_two["student"]["reverse_kl"] == pytest.approx(metrics_one["student"]["reverse_kl"], rel=1e-3)
