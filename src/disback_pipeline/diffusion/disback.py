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
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .checkpoint import Checkpoint
from .config import DistillConfig, from_dict
from .data import DataSource
from .losses import AdversarialTerm, EDMLoss
from .path import DegradationPath
from .sampling import draw_generator_batch
from .schedule import TEACHER, Walk, reaches_teacher
from .teacher import check_teacher_fits
from .training import (
    EMA,
    StatusLine,
    frozen,
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
    ema = EMA(generator, cfg.ema_decay)
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
    return walk


def _target_net(nets: _Nets, path: DegradationPath | None, key: str) -> torch.nn.Module:
    if key == TEACHER:
        return nets.teacher
    path.load_into(nets.scratch, key)
    return nets.scratch


def fake_score_step(nets: _Nets, loss_fn: EDMLoss, source: DataSource, cfg: DistillConfig, dev) -> torch.Tensor:
    """Step 1: one DSM step of the fake score on detached generator samples."""
    x0, labels = draw_generator_batch(nets.generator, source, cfg.batch_size, cfg.s_init, dev)
    return train_step(nets.opt_f, mean_loss, loss_fn, nets.fake, x0.detach(), labels, device=dev, bf16=cfg.bf16)


def discriminator_step(nets: _Nets, source: DataSource, cfg: DistillConfig, dev) -> torch.Tensor:
    """With gan_weight > 0: one step of the adversarial head, real data against detached generator samples."""
    real, real_labels = source.sample(cfg.batch_size)
    real, real_labels = real.to(dev), None if real_labels is None else real_labels.to(dev)
    x0, labels = draw_generator_batch(nets.generator, source, cfg.batch_size, cfg.s_init, dev)
    return train_step(nets.opt_d, nets.gan.discriminator_loss, nets.fake, real, real_labels, x0, labels,
                      device=dev, bf16=cfg.bf16)


def generator_step(nets: _Nets, loss_fn, target: torch.nn.Module, source: DataSource, cfg: DistillConfig, dev):
    """Step 2: one generator step on the score-distillation loss against ``target`` (plus the adversarial
    term at ``gan_weight``); EMA follows."""
    def compute():
        x0, labels = draw_generator_batch(nets.generator, source, cfg.batch_size, cfg.s_init, dev, grad=True)
        out = loss_fn(x0, nets.fake, target, labels)
        loss = out.loss.mean()
        if nets.gan is not None:
            loss = loss + cfg.gan_weight * nets.gan.generator_loss(nets.fake, x0, labels)
        return loss, out

    loss, out = train_step(nets.opt_g, compute, device=dev, bf16=cfg.bf16)
    nets.ema.update(nets.generator)
    return loss, out


def distill(teacher: Checkpoint, source: DataSource, path: DegradationPath | None, cfg: DistillConfig | dict,
            time_offset: float = 0.0, on_record: RecordCallback | None = None,
            evaluate: Callable[[torch.nn.Module], dict] | None = None,
            on_switch: Callable[[int, str, torch.nn.Module], None] | None = None) -> DistillResult:
    """Stage 2: score distillation of a one-step generator.

    With a path (backtracking enabled) the fake score starts from P_N and the
    targets walk P_{N-1} ... P_0 = teacher (:class:`Walk`: K2 iterations per
    node, or until the mismatch converges); without one (the baseline) the
    fake score starts from the teacher, which is the target throughout.
    ``evaluate(generator)`` (optional) returns extra history columns every
    ``eval_every`` iterations (on the EMA generator; its time is not counted in
    ``wall_clock_s``). ``on_switch(iteration, new_target, ema_generator)`` is
    called at every change of target and once at the end (target ``"final"``).
    """
    cfg = cfg if isinstance(cfg, DistillConfig) else from_dict(DistillConfig, cfg, "backtracking")
    check_teacher_fits(teacher.config, source)
    dev = select_device(cfg.device)
    seed_everything(cfg.seed)
    path = path if path is not None and len(path.nodes) >= 2 else None
    walk = _walk(path, cfg)
    nets = _build_nets(teacher, source, path, cfg, dev)
    fake_loss = EDMLoss(cfg.fake_P_mean, cfg.fake_P_std, nets.fake.sigma_data)
    gen_loss = cfg.generator_loss()
    clock = _Clock(time_offset)
    history: list[dict] = []
    status = StatusLine("backtracking" if path else "baseline", cfg.budget, cfg.log_every)
    target, key = nets.teacher, TEACHER
    with progress(cfg.budget, status.desc) as bar:
        for it in range(1, cfg.budget + 1):
            switch = walk.target_for(it)
            if switch is not None:
                key, target = switch[0], _target_net(nets, path, switch[0])
                log.info("iteration %d: target is now %s (%s)", it, key if key == TEACHER else f"path node {key}",
                         switch[1])
                if on_switch is not None:
                    on_switch(it, key, nets.ema.net)
            loss_f = sum(fake_score_step(nets, fake_loss, source, cfg, dev).item()
                         for _ in range(cfg.fake_steps)) / cfg.fake_steps
            if nets.gan is not None:
                discriminator_step(nets, source, cfg, dev)
            loss_g, out = generator_step(nets, gen_loss, target, source, cfg, dev)
            bar.update(1)
            eval_due = evaluate is not None and cfg.eval_every > 0 and (it % cfg.eval_every == 0 or it == cfg.budget)
            record_due = it % cfg.record_every == 0 or it == cfg.budget or switch is not None or eval_due
            mismatch = out.score_mismatch().item() if (record_due or status.due(it) or walk.switch == "adaptive") \
                else float("nan")
            walk.observe(mismatch)
            if record_due:
                rec = {"iteration": it, "wall_clock_s": clock.now(), "stage": "backtracking", "target": key,
                       "switch_reason": switch[1] if switch is not None else "", "loss_generator": loss_g.item(),
                       "loss_fake_score": loss_f, "score_mismatch": mismatch,
                       **(clock.off_the_clock(evaluate, nets.ema.net) if eval_due else {})}
                history.append(rec)
                if on_record is not None:
                    on_record(rec)
            status(it, target=key, loss_g=loss_g.item(), loss_fake=loss_f, mismatch=mismatch)
    return _finish(teacher, source, cfg, nets, history, on_switch, "disback" if path else "baseline")


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


def _finish(teacher, source, cfg: DistillConfig, nets: _Nets, history, on_switch, method: str) -> DistillResult:
    if on_switch is not None:
        on_switch(cfg.budget, "final", nets.ema.net)
    meta = {"role": "generator", "s_init": cfg.s_init, "step": cfg.budget, "dataset": source.name, "seed": cfg.seed,
            "method": method, "loss": cfg.loss}
    gen_ckpt = Checkpoint(frozen(nets.generator).cpu(), dict(teacher.config), {**meta, "weights": "raw"})
    ema_ckpt = Checkpoint(nets.ema.net.cpu(), dict(teacher.config), {**meta, "weights": "ema"})
    teacher.net.cpu()
    return DistillResult(gen_ckpt, ema_ckpt, history)
