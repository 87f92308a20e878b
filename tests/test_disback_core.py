import copy
import time

import pytest
import torch

from disback_pipeline.diffusion.backbones import build_network
from disback_pipeline.diffusion.checkpoint import Checkpoint, CheckpointError
from disback_pipeline.diffusion.config import ConfigError, DegradationConfig
from disback_pipeline.diffusion.data import GaussianMixture2D, load_digits_source
from disback_pipeline.diffusion.degradation import record_degradation
from disback_pipeline.diffusion.disback import Callbacks, distill
from disback_pipeline.diffusion.losses import make_generator_loss
from disback_pipeline.diffusion.path import candidate_steps, load_path, pick_by_distance, save_path

from .test_sampling import GaussianDenoiser

TINY = {"backbone": "mlp", "dim": 2, "width": 16, "num_blocks": 1, "emb_dim": 8}


@pytest.mark.parametrize("kind", ["di", "dmd"])
def test_one_generator_step_moves_mean_towards_target(kind):
    torch.manual_seed(0)
    mu_t, mu_g, s = torch.tensor([1.0, -0.5]), torch.tensor([-0.4, 0.3]), 0.3
    mean = torch.nn.Parameter(mu_g.clone())
    opt = torch.optim.SGD([mean], lr=0.05)
    x0 = mean + s * torch.randn(4096, 2)
    fake, target = GaussianDenoiser(mu_g, s), GaussianDenoiser(mu_t, s)
    out = make_generator_loss(kind)(x0, fake, target)
    opt.zero_grad()
    out.loss.mean().backward()
    opt.step()
    before = (mu_g - mu_t).norm()
    after = (mean.detach() - mu_t).norm()
    assert after < before - 1e-3
    # the step is along the line from mu_g to mu_t
    step = mean.detach() - mu_g
    cos = torch.dot(step, mu_t - mu_g) / (step.norm() * (mu_t - mu_g).norm())
    assert cos > 0.99


def _teacher():
    torch.manual_seed(0)
    return Checkpoint(build_network(TINY), dict(TINY), {"role": "teacher"})


SRC = GaussianMixture2D.ring(4, 1.0, 0.1)


def _record(teacher, source, s_init=2.5, **kw):
    """Stage 1 with small settings (node spacing by iterations unless given)."""
    cfg = {"spacing": "iterations", "log_every": 0, "device": "cpu", **kw}
    return record_degradation(teacher, source, DegradationConfig(**cfg), s_init)


@pytest.mark.parametrize("spacing", ["iterations", "distance"])
def test_degradation_path_order_and_distances(spacing, tmp_path):
    path, hist = _record(_teacher(), SRC, k1=20, n_nodes=4, lr=1e-2, batch_size=16,
                         seed=0, spacing=spacing, candidates=20, probe_size=64)
    assert len(path.nodes) == 5 and path.nodes[0].step == 0 and path.nodes[-1].step == 20
    assert [n.step for n in path.nodes] == sorted({n.step for n in path.nodes})
    if spacing == "iterations":
        assert path.keys == ["000000", "000005", "000010", "000015", "000020"]
    assert path.nodes[0].distance_to_teacher == 0.0 and path.nodes[-1].distance_to_final == 0.0
    assert path.nodes[-1].distance_to_teacher > 0
    assert len(hist) == 20 and hist[0]["stage"] == "degradation"
    assert path.metadata["stage1_iterations"] == 20 and path.metadata["stage1_seconds"] > 0
    # persisted path round-trips and loads node by node
    save_path(path, tmp_path / "p")
    loaded = load_path(tmp_path / "p")
    assert loaded.keys == path.keys
    net = build_network(TINY)
    loaded.load_into(net, path.keys[2])
    ref = build_network(TINY)
    path.load_into(ref, path.keys[2])
    for a, b in zip(net.state_dict().values(), ref.state_dict().values()):
        assert torch.equal(a, b)


def _saved_path(tmp_path):
    path, _ = _record(_teacher(), SRC, k1=4, n_nodes=2, lr=1e-2, batch_size=8, seed=0)
    save_path(path, tmp_path / "p")
    return tmp_path / "p"


def test_path_node_with_renamed_keys_fails_loudly(tmp_path):
    folder = _saved_path(tmp_path)
    file = folder / "step_000002.pt"
    payload = torch.load(file, weights_only=True)
    payload["state_dict"] = {f"module.{k}": v for k, v in payload["state_dict"].items()}
    torch.save(payload, file)
    path = load_path(folder)
    path.nodes[1].sha256 = None  # get past the hash check: the key check itself must fail
    with pytest.raises(CheckpointError, match=r"step_000002\.pt.*missing keys.*unexpected keys: \['module\."):
        path.load_into(build_network(TINY), "000002")


def test_modified_path_file_is_detected(tmp_path):
    folder = _saved_path(tmp_path)
    with open(folder / "step_000004.pt", "ab") as fh:
        fh.write(b"x")
    with pytest.raises(CheckpointError, match="sha256 differs"):
        load_path(folder).load_into(build_network(TINY), "000004")


def test_missing_manifest_is_explained(tmp_path):
    with pytest.raises(CheckpointError, match="run the degradation pipeline first"):
        load_path(tmp_path)


CFG = {"loss": "di", "s_init": 2.5, "k2": 3, "budget": 12, "fake_steps": 2, "lr_generator": 1e-3,
       "lr_fake": 1e-3, "batch_size": 16, "ema_decay": 0.9, "seed": 0, "log_every": 0, "keep": "last",
       "lr_schedule": "constant"}


def test_distill_walks_the_path_and_ends_on_the_teacher(caplog):
    teacher = _teacher()
    path, _ = _record(teacher, SRC, k1=8, n_nodes=4, lr=1e-2, batch_size=8, seed=0)
    before = copy.deepcopy(teacher.net.state_dict())
    with caplog.at_level("INFO"):
        res = distill(teacher, SRC, path, CFG, time_offset=100.0)
    targets = [r["target"] for r in res.history]
    assert targets == ["000006"] * 3 + ["000004"] * 3 + ["000002"] * 3 + ["teacher"] * 3
    assert "target is now path node 000006" in caplog.text and "target is now teacher" in caplog.text
    assert "fake score initialised from the end of the path (000008)" in caplog.text
    assert all(r["wall_clock_s"] > 100.0 for r in res.history)
    assert res.generator.metadata["method"] == "disback" and res.generator.metadata["s_init"] == 2.5
    for k, v in teacher.net.state_dict().items():  # the teacher is never trained
        assert torch.equal(v, before[k])


def test_baseline_targets_teacher_throughout_and_is_reproducible():
    a = distill(_teacher(), SRC, None, CFG)
    b = distill(_teacher(), SRC, None, CFG)
    assert {r["target"] for r in a.history} == {"teacher"}
    assert a.generator.metadata["method"] == "baseline"
    for x, y in zip(a.generator.net.state_dict().values(), b.generator.net.state_dict().values()):
        assert torch.equal(x, y)


def test_bad_values_are_named():
    with pytest.raises(ConfigError, match="backtracking.fake_steps must be >= 1"):
        distill(_teacher(), SRC, None, {**CFG, "fake_steps": 0})
    with pytest.raises(ConfigError, match="backtracking.loss must be one of di | dmd | sid, got 'vsd'"):
        distill(_teacher(), SRC, None, {**CFG, "loss": "vsd"})
    with pytest.raises(ValueError, match="unknown score-distillation loss 'vsd'"):
        make_generator_loss("vsd")
    with pytest.raises(ConfigError, match="k1"):
        _record(_teacher(), SRC, k1=1, n_nodes=2, lr=1e-2, batch_size=8, seed=0)


def test_evaluation_runs_on_its_own_interval_and_off_the_clock():
    calls = []

    def evaluate(gen):
        calls.append(len(calls))
        time.sleep(0.2)
        return {"proxy_q": float(len(calls))}

    start = time.perf_counter()
    res = distill(_teacher(), SRC, None, {**CFG, "record_every": 1000, "eval_every": 4},
                  callbacks=Callbacks(evaluate=evaluate))
    elapsed = time.perf_counter() - start
    evaluated = [r["iteration"] for r in res.history if "proxy_q" in r]
    assert evaluated == [4, 8, 12] and len(calls) == 3
    # the three 0.2 s evaluations are not training time: the clock of the last row leaves out the first two, and
    # the third comes after it. A lower bound, whatever the machine's load.
    assert elapsed - res.history[-1]["wall_clock_s"] >= 3 * 0.2


def test_keep_best_hands_on_the_ema_generator_of_the_best_evaluation():
    scores = iter([4.0, 2.0, float("nan"), 3.0])  # evaluations at 4, 8, 12, 16: the best is iteration 8

    def evaluate(gen):
        return {"proxy_q": next(scores)}

    cfg = {**CFG, "budget": 16, "eval_every": 4, "keep": "best"}
    best = distill(_teacher(), SRC, None, cfg, callbacks=Callbacks(evaluate=evaluate, select_by="proxy_q"))
    assert {k: best.generator_ema.metadata[k] for k in ("selected_iteration", "selected_by", "selected_value")} == {
        "selected_iteration": 8, "selected_by": "proxy_q", "selected_value": 2.0}
    at_8 = distill(_teacher(), SRC, None, {**CFG, "budget": 8})  # the same run stopped at iteration 8
    last = distill(_teacher(), SRC, None, {**CFG, "budget": 16})
    for (k, a), b in zip(best.generator_ema.net.state_dict().items(), at_8.generator_ema.net.state_dict().values()):
        assert torch.equal(a, b), k
    assert not all(torch.equal(a, c) for a, c in zip(best.generator_ema.net.parameters(),
                                                      last.generator_ema.net.parameters()))
    for a, c in zip(best.generator.net.parameters(), last.generator.net.parameters()):  # raw weights: the last
        assert torch.equal(a, c)
    assert "selected_iteration" not in last.generator_ema.metadata


def test_keep_best_without_an_evaluator_is_refused():
    with pytest.raises(ValueError, match="keep: best picks the EMA generator by its proxy quality.*no evaluator"):
        distill(_teacher(), SRC, None, {**CFG, "eval_every": 4, "keep": "best"})
    with pytest.raises(ConfigError, match=r"^backtracking.keep: best .* eval_every is 0 \(never\); set eval_every > 0"):
        distill(_teacher(), SRC, None, {**CFG, "eval_every": 0, "keep": "best"})
    with pytest.raises(KeyError, match="selects by 'proxy_fid', which the evaluator does not return"):
        distill(_teacher(), SRC, None, {**CFG, "eval_every": 4, "keep": "best"},
                callbacks=Callbacks(evaluate=lambda g: {"proxy_q": 1.0}, select_by="proxy_fid"))


def test_teacher_for_other_data_is_refused_clearly():
    with pytest.raises(ValueError,
                       match=r"built for data of shape \(2,\).*has shape \(1, 8, 8\).*Point teacher.checkpoint_path"):
        distill(_teacher(), load_digits_source(), None, CFG)


def test_node_selection_on_given_distances():
    """Equal drops of the distance to P_N: with N = 4 the levels are 75%, 50%, 25% of P_0's distance."""
    steps = list(range(0, 11))
    dist = {0: 1.0, 1: 0.9, 2: 0.8, 3: 0.74, 4: 0.6, 5: 0.52, 6: 0.45, 7: 0.3, 8: 0.26, 9: 0.1, 10: 0.0}
    assert pick_by_distance(steps, dist, 4) == [0, 3, 5, 8, 10]
    # a fast collapse: most of the drop in the first steps; the nodes crowd there but stay ordered and distinct
    fast = {s: 0.0 if s else 1.0 for s in steps} | {1: 0.3, 2: 0.1}
    assert pick_by_distance(steps, fast, 4) == [0, 1, 2, 3, 10]
    # too few snapshots for the nodes asked for: each node still comes after the previous one
    assert pick_by_distance([0, 5, 10], {0: 1.0, 5: 0.5, 10: 0.0}, 4) == [0, 5, 10]
    assert candidate_steps(400, 4, "iterations", 40) == [0, 100, 200, 300, 400]
    assert candidate_steps(400, 4, "distance", 8) == [0, 50, 100, 150, 200, 250, 300, 350, 400]


def test_tampered_or_missing_node_stops_the_run_at_its_switch(tmp_path, caplog):
    folder = _saved_path(tmp_path)  # nodes 000000, 000002, 000004 (K1 = 4, N = 2)
    teacher = _teacher()
    with open(folder / "step_000002.pt", "ab") as fh:  # the intermediate node, the target of iteration 1
        fh.write(b"x")
    with pytest.raises(CheckpointError, match=r"step_000002\.pt: sha256 differs from the manifest"):
        distill(teacher, SRC, load_path(folder), CFG)
    (folder / "step_000002.pt").unlink()
    with pytest.raises(CheckpointError, match=r"manifest lists step_000002\.pt but the file is missing"):
        load_path(folder)


def test_manifest_without_hash_is_refused(tmp_path):
    import json

    folder = _saved_path(tmp_path)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["nodes"][1]["sha256"] = None
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="node 000002 has no sha256"):
        load_path(folder)


def test_teacher_for_other_data_is_refused_in_stage_one_and_evaluation():
    from disback_pipeline.evaluation.features import FeatureSpec
    from disback_pipeline.pipelines.evaluation.nodes import evaluate_models

    digits = load_digits_source()
    with pytest.raises(ValueError, match=r"built for data of shape \(2,\).*Point teacher.checkpoint_path at"):
        _record(_teacher(), digits, k1=4, n_nodes=2, lr=1e-2, batch_size=8, seed=0)
    gen = _teacher()
    gen.metadata["s_init"] = 2.5
    with pytest.raises(ValueError, match=r"built for data of shape \(2,\).*Point teacher.checkpoint_path at"):
        evaluate_models(_teacher(), gen, FeatureSpec("none"), {}, None, {"source": "digits"},
                        {"sampler": {"nfe": 3}}, {"n_samples": 8})


def test_an_adaptive_cap_too_long_for_the_budget_is_named(caplog):
    """On digits at 600 iterations the default cap (500 per node) never reached the teacher (LONGRUN.md)."""
    import logging

    path, _ = _record(_teacher(), SRC, k1=6, n_nodes=4, batch_size=8, seed=0)
    cfg = {**CFG, "switch": "adaptive", "budget": 30, "adaptive": {"cap": 12, "warmup": 2, "window": 5}}
    with caplog.at_level(logging.WARNING):
        distill(_teacher(), SRC, path, cfg)
    assert "3 intermediate nodes x cap 12 = 36 iterations may pass before the teacher, and the budget is 30; " \
           "lower backtracking.adaptive.cap (e.g. to 5)" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        distill(_teacher(), SRC, path, {**cfg, "adaptive": {"cap": 5, "warmup": 2, "window": 5}})
    assert "adaptive walk" not in caplog.text
