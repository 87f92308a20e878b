"""Training states: each loop stopped part-way and continued ends bit-identical to an uninterrupted run; a state
written under other settings is refused (unfinished) or superseded (finished); the divergence guard."""

import math

import numpy as np
import pytest
import torch

from disback_pipeline.diffusion.backbones import build_network
from disback_pipeline.diffusion.checkpoint import Checkpoint
from disback_pipeline.diffusion.config import DegradationConfig, DistillConfig, TrainingConfig, from_dict
from disback_pipeline.diffusion.data import GaussianMixture2D
from disback_pipeline.diffusion.degradation import record_degradation
from disback_pipeline.diffusion.disback import Callbacks, distill
from disback_pipeline.diffusion.divergence import DivergenceError, Guard
from disback_pipeline.diffusion.state import StateError, StateStore, fingerprint
from disback_pipeline.diffusion.teacher import pretrain_teacher, train_dsm

TINY = {"backbone": "mlp", "width": 16, "num_blocks": 1, "emb_dim": 8}
SRC = GaussianMixture2D.ring(4, 1.0, 0.1)


class Stop(Exception):
    """Stands in for a kill: raised from a callback after a given iteration."""


def stop_after(n, key):
    def callback(*args):
        record = args[-1]
        if record[key] == n:
            raise Stop

    return callback


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def without_clock(rows):
    return [{k: v for k, v in r.items() if k != "wall_clock_s"} for r in rows]


def same_rows(a, b) -> bool:
    def norm(v):
        return "nan" if isinstance(v, float) and math.isnan(v) else v
    return [{k: norm(v) for k, v in r.items()} for r in without_clock(a)] == \
        [{k: norm(v) for k, v in r.items()} for r in without_clock(b)]


def store(tmp_path, every, name="s", **fp):
    return StateStore(tmp_path / name, name, every, fingerprint(**(fp or {"x": 1})))


TRAIN = TrainingConfig(steps=24, batch_size=32, lr=3e-3, warmup_steps=4, log_every=0)


def test_teacher_training_resumes_bit_identical(tmp_path):
    full, full_hist = pretrain_teacher(SRC, TINY, TRAIN, seed=3, device="cpu")
    with pytest.raises(Stop):
        pretrain_teacher(SRC, TINY, TRAIN, seed=3, device="cpu", on_step=stop_after(14, "step"),
                         store=store(tmp_path, 5))
    assert [p.name for p in (tmp_path / "s").iterdir()] and len(store(tmp_path, 5).files()) == 2  # keep = 2
    seen, again_store = [], store(tmp_path, 5)
    resumed, hist = pretrain_teacher(SRC, TINY, TRAIN, seed=3, device="cpu",
                                     on_step=lambda step, rec: seen.append(step), store=again_store)
    assert (again_store.resumed_from, again_store.trained) == (10, 14)  # the state after 10; 11..24 trained
    assert same_weights(full.net, resumed.net)
    assert same_rows(full_hist, hist) and len(hist) == 24
    assert seen == list(range(1, 25))  # restored steps replayed (a resumed MLflow run skips those it holds)
    # the finished state makes a re-run reuse the stage: nothing is trained, the same teacher comes back
    reuse = store(tmp_path, 5)
    again, hist2 = pretrain_teacher(SRC, TINY, TRAIN, seed=3, device="cpu", store=reuse)
    assert same_weights(full.net, again.net) and same_rows(hist, hist2)
    assert (reuse.resumed_from, reuse.trained) == (24, 0)


def _teacher():
    torch.manual_seed(0)
    cfg = {**TINY, "dim": 2}
    return Checkpoint(build_network(cfg), cfg, {"role": "teacher"})


DEG = DegradationConfig(k1=18, n_nodes=3, spacing="distance", candidates=9, probe_size=64, lr=1e-2,
                        batch_size=16, log_every=0, device="cpu")


def test_stage1_resumes_bit_identical(tmp_path):
    full, full_hist = record_degradation(_teacher(), SRC, DEG, 2.5)
    with pytest.raises(Stop):
        record_degradation(_teacher(), SRC, DEG, 2.5, on_record=stop_after(11, "iteration"),
                           store=store(tmp_path, 4))
    again = store(tmp_path, 4)
    resumed, hist = record_degradation(_teacher(), SRC, DEG, 2.5, store=again)
    assert (again.resumed_from, again.trained) == (8, 10)  # the state after 8; 9..18 trained
    assert resumed.keys == full.keys
    assert all(all(torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict)
               for a, b in zip(full.nodes, resumed.nodes))
    assert [n.distance_to_final for n in full.nodes] == [n.distance_to_final for n in resumed.nodes]
    assert same_rows(full_hist, hist)


def _path():
    return record_degradation(_teacher(), SRC, DEG, 2.5)[0]


@pytest.mark.parametrize("settings", [
    {"switch": "fixed", "k2": 6},
    {"switch": "adaptive", "adaptive": {"warmup": 2, "window": 3, "cap": 5, "fraction": 0.9}, "fake_steps": 2},
    {"switch": "fixed", "k2": 6, "gan_weight": 0.1, "loss": "sid"},
    {"switch": "fixed", "k2": 6, "lr_schedule": "cosine", "ema_decay": 0.999, "ema_rampup": 0.2, "keep": "best"},
], ids=["fixed", "adaptive", "sid+gan", "cosine+ema_rampup+keep_best"])
def test_stage2_resumes_bit_identical(tmp_path, settings):
    cfg = from_dict(DistillConfig, {"budget": 30, "batch_size": 16, "lr_generator": 1e-3, "lr_fake": 1e-3,
                                    "log_every": 0, "eval_every": 7, "device": "cpu", "s_init": 2.5, **settings},
                    "backtracking")
    path = _path()

    def evaluate(g):
        return {"proxy_mean": float(g(torch.ones(4, 2), torch.ones(4)).mean())}

    def on_switch(it, key, g):
        return g(torch.zeros(2, 2), torch.ones(2)).detach()

    full = distill(_teacher(), SRC, path, cfg, callbacks=Callbacks(evaluate=evaluate, on_switch=on_switch,
                                                                   select_by="proxy_mean"))
    with pytest.raises(Stop):
        distill(_teacher(), SRC, path, cfg, store=store(tmp_path, 5),
                callbacks=Callbacks(stop_after(17, "iteration"), evaluate, on_switch, "proxy_mean"))
    again = store(tmp_path, 5)
    resumed = distill(_teacher(), SRC, path, cfg, store=again,
                      callbacks=Callbacks(evaluate=evaluate, on_switch=on_switch, select_by="proxy_mean"))
    assert (again.resumed_from, again.trained) == (15, 15)  # the state after 15; 16..30 trained
    assert same_weights(full.generator.net, resumed.generator.net)
    assert same_weights(full.generator_ema.net, resumed.generator_ema.net)
    assert full.generator_ema.metadata == resumed.generator_ema.metadata
    if cfg.keep == "best":  # picked before the stop: the choice came back with the state
        assert resumed.generator_ema.metadata["selected_iteration"] < 15
    assert same_rows(full.history, resumed.history)
    assert [(i, k) for i, k, _ in full.switch_samples] == [(i, k) for i, k, _ in resumed.switch_samples]
    assert all(torch.equal(a[2], b[2]) for a, b in zip(full.switch_samples, resumed.switch_samples))
    reasons = [r["switch_reason"] for r in resumed.history if r["switch_reason"]]
    assert reasons[0] == "start" and len(reasons) >= 3  # the walk went on past the stop


def test_changed_settings_refuse_an_unfinished_state_and_supersede_a_finished_one(tmp_path):
    old = TrainingConfig(steps=12, batch_size=16, lr=3e-3, log_every=0)
    with pytest.raises(Stop):
        pretrain_teacher(SRC, TINY, old, 0, "cpu", on_step=stop_after(7, "step"),
                         store=store(tmp_path, 3, lr=3e-3, steps=12))
    with pytest.raises(StateError, match=r"lr: 0.003 -> 0.001.*checkpointing.resume=never"):
        pretrain_teacher(SRC, TINY, old, 0, "cpu", store=store(tmp_path, 3, lr=1e-3, steps=12))
    # never: starts afresh (and removes the old states)
    fresh = StateStore(tmp_path / "s", "s", 3, fingerprint(lr=1e-3, steps=12), resume="never")
    pretrain_teacher(SRC, TINY, old, 0, "cpu", store=fresh)
    finished = store(tmp_path, 3, lr=1e-3, steps=12).begin()
    assert finished["complete"] and finished["iteration"] == 12
    # a finished state under other settings is superseded: the stage trains again
    steps = []
    pretrain_teacher(SRC, TINY, old, 0, "cpu", on_step=lambda s, r: steps.append(s),
                     store=store(tmp_path, 3, lr=5e-4, steps=12))
    assert steps == list(range(1, 13))


def test_unreadable_newest_state_falls_back_to_the_previous_one(tmp_path):
    with pytest.raises(Stop):
        pretrain_teacher(SRC, TINY, TRAIN, 3, "cpu", on_step=stop_after(12, "step"), store=store(tmp_path, 5))
    newest = store(tmp_path, 5).files()[0]
    newest.write_bytes(newest.read_bytes()[:100])  # damaged after it was written
    state = store(tmp_path, 5).begin()
    assert state["iteration"] == 5
    for f in store(tmp_path, 5).files():
        f.write_bytes(b"junk")
    with pytest.raises(StateError, match="no training state .* is readable; delete the folder"):
        store(tmp_path, 5).begin()


@pytest.mark.parametrize("defer", [False, True], ids=["immediate", "deferred"])
def test_divergence_guard_names_stage_iteration_and_value_and_keeps_the_last_good_state(tmp_path, monkeypatch,
                                                                                        defer):
    """Immediate (the CPU's guard) and deferred (CUDA's: flags read at record and state intervals, a bad step's
    update zeroed on the device) end alike: the first bad iteration named, no state after it, finite weights."""
    monkeypatch.setattr(Guard, "for_device", classmethod(lambda cls, stage, device: cls(stage, defer=defer)))
    calls = {"n": 0}

    def batches(n):
        calls["n"] += 1
        x, labels = SRC.sample(n)
        if calls["n"] == 9:
            x[0, 0] = float("nan")
        return x, labels

    torch.manual_seed(0)
    net = build_network({**TINY, "dim": 2})
    st = store(tmp_path, 4)
    with pytest.raises(DivergenceError, match=r"teacher diverged at iteration 9: the loss is nan"):
        train_dsm(net, batches, TRAIN, desc="teacher", store=st)
    assert [f.name for f in st.files()] == ["state-000000008.pt", "state-000000004.pt"]
    assert all(torch.isfinite(p).all() for p in net.parameters())  # the step was not applied (deferred: zeroed)
    assert store(tmp_path, 4).begin()["iteration"] == 8


def test_infinite_gradient_and_weights_are_caught(tmp_path):
    torch.manual_seed(0)
    net = build_network({**TINY, "dim": 2})
    with torch.no_grad():
        net.parameters().__next__().mul_(1e38)  # overflows to inf in the first matmul's gradient

    with pytest.raises(DivergenceError, match=r"at iteration 1: the (loss|gradient norm) is (inf|nan)"):
        train_dsm(net, SRC.sample, TRAIN, desc="teacher")
    torch.manual_seed(0)
    net = build_network({**TINY, "dim": 2})
    with torch.no_grad():
        next(net.parameters())[0, 0] = float("inf")
    with pytest.raises(DivergenceError, match=r"at iteration 0: the weight .* is inf"):
        store(tmp_path, 1).save(0, {}, complete=False, modules=(net,))
    assert not store(tmp_path, 1).files()


def test_a_state_of_another_format_version_is_set_aside(tmp_path):
    pretrain_teacher(SRC, TINY, TRAIN, 3, "cpu", store=store(tmp_path, 12))
    file = store(tmp_path, 12).files()[0]
    state = torch.load(file, weights_only=True)
    torch.save({**state, "version": 1}, file)
    assert store(tmp_path, 12).begin() is None and not store(tmp_path, 12).files()  # the stage trains afresh


def test_deferred_guard_reads_flags_only_when_checked():
    net = torch.nn.Linear(2, 1)
    opt = torch.optim.Adam(net.parameters(), lr=0.1)
    guard = Guard("stage x", defer=True)
    from disback_pipeline.diffusion.training import train_step

    for it in range(1, 6):
        x = torch.full((4, 2), float("inf") if it in (3, 4) else 1.0)
        train_step(opt, lambda x=x: net(x).mean(), device=torch.device("cpu"), where=guard.at(it))  # no raise
    assert all(torch.isfinite(p).all() for p in net.parameters())
    with pytest.raises(DivergenceError, match=r"stage x diverged at iteration 3: the (loss|gradient norm) is"):
        guard.check()
    guard.check()  # read once: nothing pending


def test_cosine_schedule_sets_both_learning_rates_by_iteration(monkeypatch):
    seen = []
    step = torch.optim.Adam.step

    def spy(self, *args, **kwargs):
        seen.append(self.param_groups[0]["lr"])
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", spy)
    cfg = from_dict(DistillConfig, {"budget": 8, "batch_size": 8, "lr_generator": 2e-3, "lr_fake": 1e-3,
                                    "lr_schedule": "cosine", "log_every": 0, "eval_every": 0, "device": "cpu",
                                    "keep": "last"},
                    "backtracking")
    distill(_teacher(), SRC, None, cfg)
    fake, gen = seen[0::2], seen[1::2]  # each iteration: one fake-score step, then the generator step
    factors = [0.5 * (1 + math.cos(math.pi * i / 8)) for i in range(8)]
    assert fake == pytest.approx([1e-3 * f for f in factors])
    assert gen == pytest.approx([2e-3 * f for f in factors])


@pytest.mark.parametrize("reset", [False, True])
def test_reset_optimizer_restarts_the_generator_moments_at_each_change_of_target(tmp_path, reset):
    cfg = {"budget": 20, "batch_size": 16, "lr_generator": 1e-3, "lr_fake": 1e-3, "log_every": 0, "eval_every": 0,
           "device": "cpu", "s_init": 2.5, "switch": "fixed", "k2": 6, "reset_optimizer": reset, "keep": "last"}
    s = store(tmp_path, 20)
    res = distill(_teacher(), SRC, _path(), cfg, store=s)
    last_switch = [r["iteration"] for r in res.history if r["switch_reason"]][-1]
    assert last_switch < 20
    state = s._newest_readable()
    steps = {int(v["step"]) for v in state["optimizers"]["generator"]["state"].values()}
    # Adam counted its steps from the last change of target (reset) or from the start
    assert steps == ({20 - last_switch + 1} if reset else {20})
    assert {int(v["step"]) for v in state["optimizers"]["fake"]["state"].values()} == {20}  # the fake score's: kept


def _drop_newest_state(root, stage):
    """As if the run had been killed after the stage's previous state: its finished state goes."""
    newest = sorted((root / "09_training_state" / stage).glob("state-*.pt"))[-1]
    newest.unlink()


@pytest.mark.slow
def test_other_data_teacher_or_path_under_the_same_settings_refuse_an_unfinished_state(project, tmp_path):
    """The fingerprint holds what a stage trains on, not only its settings: the data's content, the teacher's
    weights (stages 1 and 2) and the path's (stage 2); log_every, checkpoint_every and device stay out of it."""
    from PIL import Image

    from .conftest import TINY_UNET

    rng = np.random.default_rng(0)
    for label in ("a", "b"):
        (tmp_path / "images" / label).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(tmp_path / "images" / label / f"{i}.png")
    project.edit("base", "parameters_data", data__source="image_folder", data__path=str(tmp_path / "images"),
                 data__resolution=8, data__channels=1, data__workers=0)
    project.edit("base", "parameters_teacher", teacher__network=TINY_UNET, teacher__training__steps=4,
                 teacher__training__batch_size=4, teacher__training__checkpoint_every=2,
                 teacher__report__num_samples=4, shared__sampler__nfe=3)
    project.edit("base", "parameters_degradation", degradation__k1=4, degradation__n_nodes=2,
                 degradation__candidates=4, degradation__probe_size=8, degradation__batch_size=4,
                 degradation__checkpoint_every=2)
    project.edit("base", "parameters_backtracking", backtracking__budget=4, backtracking__k2=1,
                 backtracking__batch_size=4, backtracking__eval_every=2, backtracking__checkpoint_every=2)
    project.edit("base", "parameters_evaluation", evaluation__domain__steps=5, evaluation__domain__batch_size=4,
                 evaluation__n_samples=8, evaluation__batch_size=8, backtracking__proxy_samples=8,
                 evaluation__grid_samples=4)
    project.run("distill")
    root = project.path / "data/base"

    _drop_newest_state(root, "teacher")
    extra = tmp_path / "images" / "a" / "extra.png"
    Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(extra)  # other data, same settings
    with pytest.raises(StateError, match=r"teacher pre-training: an unfinished training state .* data_sha256: "):
        project.run("teacher")
    extra.unlink()
    # the same data again, and settings that change neither the numbers nor their order: the state is resumed
    project.edit("base", "parameters_teacher", teacher__training__log_every=1, teacher__training__checkpoint_every=1,
                 teacher__device="auto")
    project.run("teacher")
    state = torch.load(sorted((root / "09_training_state/teacher").glob("state-*.pt"))[-1], weights_only=True)
    assert (state["resumed_from"], state["trained"]) == (2, 2)

    _drop_newest_state(root, "degradation")
    project.edit("base", "parameters_teacher", teacher__seed=1)  # another teacher for stage 1
    with pytest.raises(StateError, match=r"stage 1 \(degradation recording\): an unfinished .* teacher_sha256: "):
        project.run("distill")
    project.edit("base", "parameters_teacher", teacher__seed=0)
    project.run("distill")  # the first teacher again (trained afresh, the same weights): stage 1 resumes

    _drop_newest_state(root, "backtracking")
    project.edit("base", "parameters_degradation", degradation__spacing="iterations")  # another path for stage 2
    with pytest.raises(StateError, match=r"stage 2 \(disback\): an unfinished .* path: "):
        project.run("distill")
