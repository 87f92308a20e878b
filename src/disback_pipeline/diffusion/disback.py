"""DisBack stage 2: distribution backtracking (score distillation of a one-step generator).

Where things live: stage 1 in :mod:`.degradation`, the losses (DSM; di, dmd,
sid; the adversarial term) in :mod:`.losses`, the one optimiser step and
status line in :mod:`.training`, the switch schedule (fixed K2 or adaptive)
in :mod:`.schedule`, the path and node selection in :mod:`.path`, the
settings in :mod:`.config`. Each generator iteration is the two steps of the
method: :func:`fake_score_step` (r times) and :func:`generator_step`.

The baseline (Diff-Instruct / DMD / SiD without regression or GAN terms) is
the same loop with no path: the fake score starts from the teacher and the
teacher is the target throughout.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from . import distributed
from .checkpoint import Checkpoint
from .config import DistillConfig, from_dict
from .data import DataSource
from .losses import AdversarialTerm, EDMLoss
from .path import DegradationPath
from .sampling import draw_generator_batch
from .schedule import TEACHER, Walk, reaches_teacher
from .state import StateStore
from .teacher import check_teacher_fits
from .training import (
    EMA,
    Guard,
    StatusLine,
    autocast,
    frozen,
    lr_lambda,
    make_adam,
    mean_loss,
    progress,
    seed_everything,
    select_device,
    train_step,
)

log = logging.getLogger(__name__)

RecordCallback = Callable[[dict], None]


@dataclass
class DistillResult:
    generator: Checkpoint
    generator_ema: Checkpoint
    history: list[dict]
    switch_samples: list = field(default_factory=list)  # (iteration, target, what on_switch returned)


@dataclass
class _Nets:
    """Stage 2's networks and optimisers."""

    teacher: torch.nn.Module
    generator: torch.nn.Module
    fake: torch.nn.Module
    scratch: torch.nn.Module  # holds the current path node when it is the target
    ema: EMA
    opt_g: torch.optim.Optimizer
    opt_f: torch.optim.Optimizer
    gan: AdversarialTerm | None = None  # the adversarial head on real data (gan_weight > 0)
    opt_d: torch.optim.Optimizer | None = None


def _build_nets(teacher: Checkpoint, source: DataSource, path: DegradationPath | None, cfg: DistillConfig,
                dev) -> _Nets:
    teacher_net = frozen(teacher.net.to(dev))
    generator = copy.deepcopy(teacher.net).to(dev).train().requires_grad_(True)
    fake = copy.deepcopy(teacher.net).to(dev)
    if path is not None:
        path.load_into(fake, path.keys[-1])
        log.info("fake score initialised from the end of the path (%s)", path.keys[-1])
    fake.train().requires_grad_(True)
    scratch = frozen(copy.deepcopy(teacher.net).to(dev))
    ema = EMA(generator, cfg.ema_decay, cfg.ema_rampup)
    for net in (teacher_net, generator, fake, scratch):
        if cfg.channels_last and len(source.shape) == 3:
            net.to(memory_format=torch.channels_last)
        if cfg.compile:
            net.compile()  # in place: parameters, state_dict keys and checkpoints stay as they are
    nets = _Nets(teacher_net, generator, fake, scratch, ema, make_adam(generator.parameters(), cfg.lr_generator,
                 cfg.betas), make_adam(fake.parameters(), cfg.lr_fake, cfg.betas))
    if cfg.gan_weight > 0:
        example, _ = source.sample(2)
        nets.gan = AdversarialTerm(fake, example.to(dev), cfg.gan.hidden, cfg.gan.P_mean, cfg.gan.P_std)
        nets.opt_d = make_adam(nets.gan.head.parameters(), cfg.gan.lr, cfg.betas)
    return nets


def _walk(path: DegradationPath | None, cfg: DistillConfig) -> Walk:
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


def _switch(nets: _Nets, path: DegradationPath | None, cfg: DistillConfig, run: _Run, it: int,  # noqa: PLR0913
            switch: tuple[str, str], on_switch) -> torch.nn.Module:
    """A change of target at iteration ``it``: ``switch`` is (new target, reason); returns the target network."""
    run.key, target = switch[0], _target_net(nets, path, switch[0])
    if cfg.reset_optimizer and switch[1] != "start":
        nets.opt_g.state.clear()  # Adam's moments were fitted to the old target's gradients
    log.info("iteration %d: target is now %s (%s)", it, run.key if run.key == TEACHER else f"path node {run.key}",
             switch[1])
    if on_switch is not None:
        run.switch_samples.append((it, run.key, on_switch(it, run.key, nets.ema.net)))
    return target


def _target_net(nets: _Nets, path: DegradationPath | None, key: str) -> torch.nn.Module:
    if key == TEACHER:
        return nets.teacher
    path.load_into(nets.scratch, key)
    return nets.scratch


def fake_score_step(nets: _Nets, loss_fn: EDMLoss, source: DataSource, cfg: DistillConfig, dev,
                    where: Guard | tuple[str, int] | None = None) -> torch.Tensor:
    """Step 1: one DSM step of the fake score on detached generator samples (drawn under the step's autocast)."""
    with autocast(dev, cfg.bf16):
        x0, labels = draw_generator_batch(nets.generator, source, cfg.batch_size, cfg.s_init, dev)
    return train_step(nets.opt_f, mean_loss, loss_fn, nets.fake, x0.detach(), labels, device=dev, bf16=cfg.bf16,
                      where=where)


def discriminator_step(nets: _Nets, source: DataSource, cfg: DistillConfig, dev,
                       where: Guard | tuple[str, int] | None = None) -> torch.Tensor:
    """With gan_weight > 0: one step of the adversarial head, real data against detached generator samples."""
    real, real_labels = source.sample(distributed.global_size(cfg.batch_size))  # this rank's slice follows
    real, real_labels = distributed.local(real), None if real_labels is None else distributed.local(real_labels)
    real, real_labels = real.to(dev), None if real_labels is None else real_labels.to(dev)
    with autocast(dev, cfg.bf16):
        x0, labels = draw_generator_batch(nets.generator, source, cfg.batch_size, cfg.s_init, dev)
    return train_step(nets.opt_d, nets.gan.discriminator_loss, nets.fake, real, real_labels, x0, labels,
                      device=dev, bf16=cfg.bf16, where=where)


def generator_step(nets: _Nets, loss_fn, target: torch.nn.Module, source: DataSource, cfg: DistillConfig, dev,
                   where: Guard | tuple[str, int] | None = None, iteration: int | None = None):
    """Step 2: one generator step on the score-distillation loss against ``target`` (plus the adversarial
    term at ``gan_weight``); EMA follows (at its decay for ``iteration``, see :class:`EMA`)."""
    def compute():
        x0, labels = draw_generator_batch(nets.generator, source, cfg.batch_size, cfg.s_init, dev, grad=True)
        out = loss_fn(x0, nets.fake, target, labels)
        loss = out.loss.mean()
        if nets.gan is not None:
            loss = loss + cfg.gan_weight * nets.gan.generator_loss(nets.fake, x0, labels)
        return loss, out

    loss, out = train_step(nets.opt_g, compute, device=dev, bf16=cfg.bf16, where=where)
    nets.ema.update(nets.generator, iteration)
    return loss, out


@dataclass
class Callbacks:
    """What stage 2 reports as it goes (all optional); see :func:`distill`.

    ``select_by`` names the column of ``evaluate``'s result (lower is better) that picks the EMA generator
    handed on when ``backtracking.keep`` is ``best``."""

    on_record: RecordCallback | None = None
    evaluate: Callable[[torch.nn.Module], dict] | None = None
    on_switch: Callable[[int, str, torch.nn.Module], object] | None = None
    select_by: str | None = None


def distill(teacher: Checkpoint, source: DataSource, path: DegradationPath | None, cfg: DistillConfig | dict,
            time_offset: float = 0.0, callbacks: Callbacks | None = None,
            store: StateStore | None = None) -> DistillResult:
    """Stage 2: score distillation of a one-step generator.

    With a path (backtracking enabled) the fake score starts from P_N and the
    targets walk P_{N-1} ... P_0 = teacher (:class:`Walk`: K2 iterations per
    node, or until the mismatch converges); without one (the baseline) the
    fake score starts from the teacher, which is the target throughout.
    ``callbacks.evaluate(generator)`` (optional) returns extra history columns every
    ``eval_every`` iterations (on the EMA generator; its time is not counted in
    ``wall_clock_s``). ``on_switch(iteration, new_target, ema_generator)`` is
    called at every change of target and once at the end (target ``"final"``);
    what it returns is kept in ``result.switch_samples``. With a ``store`` the
    training state is saved every ``cfg.checkpoint_every`` iterations and a run
    continues from the newest state (restored history rows are passed to
    ``on_record`` again). With ``cfg.keep == "best"`` the EMA generator handed on is the one whose
    ``callbacks.select_by`` value was lowest at an evaluation (its iteration and value go into the
    checkpoint's metadata); the raw generator is always the last.
    """
    cfg = cfg if isinstance(cfg, DistillConfig) else from_dict(DistillConfig, cfg, "backtracking")
    cb = _reporting(callbacks, cfg)
    on_record, evaluate, on_switch = cb.on_record, cb.evaluate, cb.on_switch
    check_teacher_fits(teacher.config, source)
    dev = select_device(cfg.device)
    seed_everything(cfg.seed)
    path = path if path is not None and len(path.nodes) >= 2 else None
    walk = _walk(path, cfg)
    nets = _build_nets(teacher, source, path, cfg, dev)
    fake_loss = EDMLoss(cfg.fake_P_mean, cfg.fake_P_std, nets.fake.sigma_data)
    gen_loss = cfg.generator_loss()
    run = _Run(TEACHER, [], [], _Clock(time_offset), 1)
    state = store.begin() if store is not None else None
    if state is not None:
        run = _restore(nets, walk, state)
        for rec in run.history if on_record is not None else ():
            on_record(rec)
    target = _target_net(nets, path, run.key)
    status = StatusLine("backtracking" if path else "baseline", cfg.budget, cfg.log_every)
    guard = Guard.for_device(f"stage 2 ({status.desc})", dev)
    with progress(cfg.budget, status.desc) as bar:
        bar.update(run.first - 1)
        for it in range(run.first, cfg.budget + 1):
            switch = walk.target_for(it)
            if switch is not None:
                target = _switch(nets, path, cfg, run, it, switch, on_switch)
            loss_f, loss_g, out = _iteration(nets, (fake_loss, gen_loss), target, source, cfg, dev, guard.at(it))
            bar.update(1)
            eval_due = evaluate is not None and cfg.eval_every > 0 and (it % cfg.eval_every == 0 or it == cfg.budget)
            record_due = it % cfg.record_every == 0 or it == cfg.budget or switch is not None or eval_due
            save = store is not None and store.tick(it, cfg.budget)
            read = record_due or status.due(it)  # values leave the device only at record and status intervals
            if read or save:
                guard.check()  # a deferred guard's flags are read here, and before every state
            mismatch = out.score_mismatch().detach()
            distributed.average([mismatch])  # every rank's walk sees the global batch's mismatch
            mismatch = mismatch.item() if (read or walk.switch == "adaptive") else float("nan")
            loss_f = loss_f.item() if read else float("nan")
            walk.observe(mismatch)
            if record_due:
                rec = {"iteration": it, "wall_clock_s": run.clock.now(), "stage": "backtracking", "target": run.key,
                       "switch_reason": switch[1] if switch is not None else "", "loss_generator": loss_g.item(),
                       "loss_fake_score": loss_f, "score_mismatch": mismatch,
                       **(_evaluate(run, it, nets.ema.net, cb, cfg.keep) if eval_due else {})}
                run.history.append(rec)
                if on_record is not None:
                    on_record(rec)
            if status.due(it):
                status(it, target=run.key, loss_g=loss_g.item(), loss_fake=loss_f, mismatch=mismatch)
            if save:
                _save(store, it, cfg.budget, nets, walk, run)
    return _finish(teacher, source, cfg, nets, run, on_switch, "disback" if path else "baseline")


def _reporting(callbacks: Callbacks | None, cfg: DistillConfig) -> Callbacks:
    """This rank's callbacks: rank 0 reports, evaluates and picks (keep = best); the other ranks none."""
    if not distributed.ranks().writer:
        return Callbacks()
    cb = callbacks if callbacks is not None else Callbacks()
    if cfg.keep == "best" and (cb.evaluate is None or cb.select_by is None):
        raise ValueError("backtracking.keep: best picks the EMA generator by its proxy quality, and this run has "
                         "no evaluator (callbacks.evaluate and callbacks.select_by); set keep: last, or evaluate")
    return cb


def _iteration(nets: _Nets, losses: tuple, target: torch.nn.Module, source: DataSource, cfg: DistillConfig, dev,
               guard: Guard):
    """One stage-2 iteration: r fake-score steps, the adversarial head's step (gan_weight > 0), the generator
    step. The losses stay on the device until they are read."""
    fake_loss, gen_loss = losses
    if cfg.lr_schedule != "constant":  # a function of the iteration alone: nothing to keep for a resume
        factor = lr_lambda(cfg.lr_schedule, cfg.budget)(guard.iteration - 1)
        for opt, lr in ((nets.opt_g, cfg.lr_generator), (nets.opt_f, cfg.lr_fake)):
            for group in opt.param_groups:
                group["lr"] = lr * factor
    loss_f = sum(fake_score_step(nets, fake_loss, source, cfg, dev, guard).detach()
                 for _ in range(cfg.fake_steps)) / cfg.fake_steps
    if nets.gan is not None:
        discriminator_step(nets, source, cfg, dev, guard)
    loss_g, out = generator_step(nets, gen_loss, target, source, cfg, dev, guard, guard.iteration)
    return loss_f, loss_g, out


@dataclass
class _Run:
    """Stage 2's progress besides the networks: current target, history, switch samples, clock."""

    key: str
    history: list[dict]
    switch_samples: list
    clock: _Clock
    first: int  # the iteration to run next
    best: dict | None = None  # keep = best: {"iteration", "by", "value", "state"} of the best EMA generator so far


def _evaluate(run: _Run, it: int, ema: torch.nn.Module, cb: Callbacks, keep: str) -> dict:
    """The evaluator's columns for this iteration (off the training clock); with keep = best, the best EMA
    generator so far is updated."""
    columns = run.clock.off_the_clock(cb.evaluate, ema)
    if keep == "best":
        if cb.select_by not in columns:
            raise KeyError(f"backtracking.keep: best selects by {cb.select_by!r}, which the evaluator does not "
                           f"return (it returns {sorted(columns)})")
        run.best = _better(run.best, it, cb.select_by, columns[cb.select_by], ema)
    return columns


def _better(best: dict | None, it: int, by: str, value, ema: torch.nn.Module) -> dict | None:
    """The best EMA generator so far, given this evaluation's ``value`` of column ``by`` (lower is better; not
    finite: ignored)."""
    if value is None or not math.isfinite(float(value)):
        return best
    if best is not None and not float(value) < best["value"]:
        return best
    return {"iteration": it, "by": by, "value": float(value),
            "state": {k: v.detach().to("cpu", copy=True) for k, v in ema.state_dict().items()}}


_MODULES = ("generator", "fake")


def _save(store: StateStore, it: int, budget: int, nets: _Nets, walk: Walk, run: _Run) -> None:
    modules = {name: getattr(nets, name).state_dict() for name in _MODULES}
    modules["ema"] = nets.ema.net.state_dict()
    optimizers = {"generator": nets.opt_g.state_dict(), "fake": nets.opt_f.state_dict()}
    if nets.gan is not None:
        modules["gan_head"], optimizers["gan_head"] = nets.gan.head.state_dict(), nets.opt_d.state_dict()
    store.save(it, {"modules": modules, "optimizers": optimizers, "walk": walk.state_dict(), "key": run.key,
                    "history": run.history, "switch_samples": run.switch_samples, "clock": run.clock.now(),
                    "best": run.best},
               complete=it == budget, modules=(nets.generator, nets.fake, nets.ema.net))


def _restore(nets: _Nets, walk: Walk, state: dict) -> _Run:
    for name in _MODULES:
        getattr(nets, name).load_state_dict(state["modules"][name])
    nets.ema.net.load_state_dict(state["modules"]["ema"])
    nets.opt_g.load_state_dict(state["optimizers"]["generator"])
    nets.opt_f.load_state_dict(state["optimizers"]["fake"])
    if nets.gan is not None:
        nets.gan.head.load_state_dict(state["modules"]["gan_head"])
        nets.opt_d.load_state_dict(state["optimizers"]["gan_head"])
    walk.load_state_dict(state["walk"])
    return _Run(state["key"], list(state["history"]), list(state["switch_samples"]), _Clock(float(state["clock"])),
                state["iteration"] + 1, state.get("best"))


class _Clock:
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


def _finish(teacher, source, cfg: DistillConfig, nets: _Nets, run: _Run, on_switch, method: str) -> DistillResult:
    if on_switch is not None:
        run.switch_samples.append((cfg.budget, "final", on_switch(cfg.budget, "final", nets.ema.net)))
    meta = {"role": "generator", "s_init": cfg.s_init, "step": cfg.budget, "dataset": source.name, "seed": cfg.seed,
            "method": method, "loss": cfg.loss}
    gen_ckpt = Checkpoint(frozen(nets.generator).cpu(), dict(teacher.config), {**meta, "weights": "raw"})
    ema = nets.ema.net.cpu()
    if run.best is not None:
        by, last = run.best["by"], next((r for r in reversed(run.history) if r.get("iteration") == cfg.budget), {})
        log.info("keeping the EMA generator of iteration %d (%s %.4g; at the last iteration %s)",
                 run.best["iteration"], by, run.best["value"], last.get(by, "not evaluated"))
        ema = copy.deepcopy(ema)
        ema.load_state_dict(run.best["state"])
        meta = {**meta, "selected_iteration": run.best["iteration"], "selected_by": by,
                "selected_value": run.best["value"]}
    ema_ckpt = Checkpoint(ema, dict(teacher.config), {**meta, "weights": "ema"})
    teacher.net.cpu()
    return DistillResult(gen_ckpt, ema_ckpt, run.history, run.switch_samples)
