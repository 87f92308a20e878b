"""Stage 2's bookkeeping beside its networks (:mod:`.disback` holds the loop and its steps).

- :class:`Callbacks`: what the loop reports as it goes; :func:`rank_callbacks`, this rank's share of them.
- :func:`make_walk`: the switch schedule over the path, with a warning when the budget ends before the teacher;
  :func:`switch_target` and :func:`target_net`: a change of target and the network that is the target.
- :class:`Run`: the current target, the history, the switch samples, the training clock (:class:`Clock`,
  evaluation time left out) and, with ``keep: best``, the best EMA generator so far (:func:`evaluate`).
- :func:`save_state` / :func:`restore_state`: all of it, with the networks and optimisers, in a training state.
- :func:`finish`: the checkpoints the stage hands on.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from . import distributed
from .adapters import load_trained_state, merged, trained_state
from .checkpoint import Checkpoint
from .config import DistillConfig
from .diffusers_teacher import guided
from .path import DegradationPath
from .schedule import TEACHER, Walk, reaches_teacher
from .state import StateStore
from .training import frozen

if TYPE_CHECKING:
    from .disback import Nets

log = logging.getLogger(__name__)

RecordCallback = Callable[[dict], None]


@dataclass
class DistillResult:
    generator: Checkpoint
    generator_ema: Checkpoint
    history: list[dict]
    switch_samples: list = field(default_factory=list)  # (iteration, target, what on_switch returned)


@dataclass
class Callbacks:
    """What stage 2 reports as it goes (all optional); see :func:`distill`.

    ``select_by`` names the column of ``evaluate``'s result (lower is better) that picks the EMA generator
    handed on when ``backtracking.keep`` is ``best``."""

    on_record: RecordCallback | None = None
    evaluate: Callable[[torch.nn.Module], dict] | None = None
    on_switch: Callable[[int, str, torch.nn.Module], object] | None = None
    select_by: str | None = None


def rank_callbacks(callbacks: Callbacks | None, cfg: DistillConfig) -> Callbacks:
    """This rank's callbacks: rank 0 reports, evaluates and picks (keep = best); the other ranks none."""
    if not distributed.ranks().writer:
        return Callbacks()
    cb = callbacks if callbacks is not None else Callbacks()
    if cfg.keep == "best" and (cb.evaluate is None or cb.select_by is None):
        raise ValueError("backtracking.keep: best picks the EMA generator by its proxy quality, and this run has "
                         "no evaluator (callbacks.evaluate and callbacks.select_by); set keep: last, or evaluate")
    return cb


def switch_target(nets: Nets, path: DegradationPath | None, cfg: DistillConfig, run: Run, it: int,  # noqa: PLR0913
                  switch: tuple[str, str], on_switch) -> torch.nn.Module:
    """A change of target at iteration ``it``: ``switch`` is (new target, reason); returns the target network."""
    run.key, target = switch[0], target_net(nets, path, switch[0], cfg.guidance_scale)
    if cfg.reset_optimizer and switch[1] != "start":
        nets.opt_g.state.clear()  # Adam's moments were fitted to the old target's gradients
    log.info("iteration %d: target is now %s (%s)", it, run.key if run.key == TEACHER else f"path node {run.key}",
             switch[1])
    if on_switch is not None:
        run.switch_samples.append((it, run.key, on_switch(it, run.key, nets.ema.net)))
    return target


def target_net(nets: Nets, path: DegradationPath | None, key: str, guidance: float = 1.0) -> torch.nn.Module:
    """The network that is target ``key``: the teacher, or the scratch copy loaded with that path node; under
    classifier-free guidance ``guidance`` (:class:`.diffusers_teacher.Guided`; 1 = none)."""
    if key == TEACHER:
        return guided(nets.teacher, guidance)
    path.load_into(nets.scratch, key)
    return guided(nets.scratch, guidance)


def make_walk(path: DegradationPath | None, cfg: DistillConfig) -> Walk:
    walk = Walk(path.keys if path else [], cfg.switch, cfg.k2, cfg.budget, cfg.adaptive)
    if path and cfg.switch == "fixed" and not reaches_teacher(walk.segments):
        log.warning("budget %d ends before the walk reaches the teacher (%d path nodes x K2=%d)",
                    cfg.budget, len(path.keys) - 1, cfg.k2)
    intermediate = len(path.keys) - 2 if path else 0
    if intermediate and cfg.switch == "adaptive" and cfg.adaptive.cap * intermediate >= cfg.budget:
        log.warning("adaptive walk: %d intermediate nodes x cap %d = %d iterations may pass before the teacher, "
                    "and the budget is %d; lower backtracking.adaptive.cap (e.g. to %d) so the walk can end on "
                    "the teacher", intermediate, cfg.adaptive.cap, intermediate * cfg.adaptive.cap, cfg.budget,
                    max(cfg.adaptive.warmup + 1, cfg.budget // (2 * intermediate)))
    return walk


@dataclass
class Run:
    """Stage 2's progress besides the networks: current target, history, switch samples, clock."""

    key: str
    history: list[dict]
    switch_samples: list
    clock: Clock
    first: int  # the iteration to run next
    best: dict | None = None  # keep = best: {"iteration", "by", "value", "state"} of the best EMA generator so far

    @classmethod
    def start(cls, time_offset: float) -> Run:
        """A run at its first iteration, on the teacher until the walk says otherwise."""
        return cls(TEACHER, [], [], Clock(time_offset), 1)


def evaluate(run: Run, it: int, ema: torch.nn.Module, cb: Callbacks, keep: str) -> dict:
    """The evaluator's columns for this iteration (off the training clock); with keep = best, the best EMA
    generator so far is updated."""
    columns = run.clock.off_the_clock(cb.evaluate, ema)
    if keep == "best":
        if cb.select_by not in columns:
            raise KeyError(f"backtracking.keep: best selects by {cb.select_by!r}, which the evaluator does not "
                           f"return (it returns {sorted(columns)})")
        run.best = better(run.best, it, cb.select_by, columns[cb.select_by], ema)
    return columns


def better(best: dict | None, it: int, by: str, value, ema: torch.nn.Module) -> dict | None:
    """The best EMA generator so far, given this evaluation's ``value`` of column ``by`` (lower is better; not
    finite: ignored)."""
    if value is None or not math.isfinite(float(value)):
        return best
    if best is not None and not float(value) < best["value"]:
        return best
    return {"iteration": it, "by": by, "value": float(value),
            "state": {k: v.detach().to("cpu", copy=True) for k, v in trained_state(ema).items()}}


MODULES = ("generator", "fake")


def save_state(store: StateStore, it: int, budget: int, nets: Nets, walk: Walk, run: Run) -> None:
    modules = {name: trained_state(getattr(nets, name)) for name in MODULES}  # LoRA: the adapters only
    modules["ema"] = trained_state(nets.ema.net)
    optimizers = {"generator": nets.opt_g.state_dict(), "fake": nets.opt_f.state_dict()}
    if nets.gan is not None:
        modules["gan_head"], optimizers["gan_head"] = nets.gan.head.state_dict(), nets.opt_d.state_dict()
    store.save(it, {"modules": modules, "optimizers": optimizers, "walk": walk.state_dict(), "key": run.key,
                    "history": run.history, "switch_samples": run.switch_samples, "clock": run.clock.now(),
                    "best": run.best},
               complete=it == budget, modules=(nets.generator, nets.fake, nets.ema.net))


def restore_state(nets: Nets, walk: Walk, state: dict) -> Run:
    for name in MODULES:
        load_trained_state(getattr(nets, name), state["modules"][name])
    load_trained_state(nets.ema.net, state["modules"]["ema"])
    nets.opt_g.load_state_dict(state["optimizers"]["generator"])
    nets.opt_f.load_state_dict(state["optimizers"]["fake"])
    if nets.gan is not None:
        nets.gan.head.load_state_dict(state["modules"]["gan_head"])
        nets.opt_d.load_state_dict(state["optimizers"]["gan_head"])
    walk.load_state_dict(state["walk"])
    return Run(state["key"], list(state["history"]), list(state["switch_samples"]), Clock(float(state["clock"])),
                state["iteration"] + 1, state.get("best"))


class Clock:
    """Training wall-clock: continues after stage 1 (``offset``) and leaves evaluation time out."""

    def __init__(self, offset: float):
        self.offset, self.start, self.excluded = offset, time.perf_counter(), 0.0

    def now(self) -> float:
        return self.offset + time.perf_counter() - self.start - self.excluded

    def off_the_clock(self, fn, *args):
        t = time.perf_counter()
        try:
            return fn(*args)
        finally:
            self.excluded += time.perf_counter() - t


def finish(teacher, source, cfg: DistillConfig, nets: Nets, run: Run, on_switch, method: str) -> DistillResult:
    if on_switch is not None:
        run.switch_samples.append((cfg.budget, "final", on_switch(cfg.budget, "final", nets.ema.net)))
    meta = {"role": "generator", "s_init": cfg.s_init, "step": cfg.budget, "dataset": source.name, "seed": cfg.seed,
            "method": method, "loss": cfg.loss}
    if cfg.trained_nets.lora:  # what `export_diffusers --lora` needs to write the adapters back out
        meta.update(lora_rank=cfg.trained_nets.lora_rank, lora_targets=list(cfg.trained_nets.lora_targets))
    # LoRA adapters are folded into the weights: the student has the teacher's architecture and config
    gen_ckpt = Checkpoint(merged(frozen(nets.generator).cpu()), dict(teacher.config), {**meta, "weights": "raw"})
    ema = nets.ema.net.cpu()
    if run.best is not None:
        by, last = run.best["by"], next((r for r in reversed(run.history) if r.get("iteration") == cfg.budget), {})
        log.info("keeping the EMA generator of iteration %d (%s %.4g; at the last iteration %s)",
                 run.best["iteration"], by, run.best["value"], last.get(by, "not evaluated"))
        ema = copy.deepcopy(ema)
        load_trained_state(ema, run.best["state"])
        meta = {**meta, "selected_iteration": run.best["iteration"], "selected_by": by,
                "selected_value": run.best["value"]}
    ema_ckpt = Checkpoint(merged(ema), dict(teacher.config), {**meta, "weights": "ema"})
    teacher.net.cpu()
    return DistillResult(gen_ckpt, ema_ckpt, run.history, run.switch_samples)
