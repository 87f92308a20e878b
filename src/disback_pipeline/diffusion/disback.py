"""DisBack stage 2: distribution backtracking (score distillation of a one-step generator).

Each generator iteration is the method's two steps, :func:`fake_score_step` (r times) and
:func:`generator_step`. Stage 1 is in :mod:`.degradation`, the losses in :mod:`.losses`, the optimiser
step in :mod:`.training`, the switch schedule in :mod:`.schedule`, the path in :mod:`.path`, the run's
bookkeeping (callbacks, target, clock, keep-best, training states, what is handed on) in
:mod:`.stage2_run`. The baseline is the same loop with no path: the fake score starts from the teacher,
which is the target throughout.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from . import distributed
from .adapters import frozen_copy, trainable_copy, trained_parameters
from .checkpoint import Checkpoint
from .config import ConfigError, DistillConfig, from_dict
from .data import DataSource
from .divergence import Guard
from .history import history_row
from .losses import AdversarialTerm, EDMLoss
from .path import DegradationPath
from .sampling import draw_generator_batch
from .schedule import Walk
from .stage2_run import (
    Callbacks,
    DistillResult,
    Run,
    evaluate,
    finish,
    make_walk,
    rank_callbacks,
    restore_state,
    save_state,
    switch_target,
    target_net,
)
from .state import StateStore
from .teacher import check_teacher_fits
from .training import (
    EMA,
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


@dataclass
class Nets:
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


def check_path_adapters(path: DegradationPath | None, cfg: DistillConfig) -> None:
    """The path's nodes must be what stage 2's copies hold: adapters of the same rank, or whole networks."""
    if not path or not path.nodes:
        return
    recorded, wanted = int(path.metadata.get("lora_rank", 0)), cfg.trained_nets.lora_rank
    if recorded != wanted:
        have = f"LoRA adapters of rank {recorded}" if recorded else "whole networks"
        raise ConfigError(f"the degradation path's nodes are {have}, and shared.trained_nets.lora_rank is {wanted}; "
                          f"set it to {recorded}, or re-run the degradation pipeline with the new setting")


def _build_nets(teacher: Checkpoint, source: DataSource, path: DegradationPath | None, cfg: DistillConfig,
                dev) -> Nets:
    check_path_adapters(path, cfg)
    teacher_net = frozen(teacher.net.to(dev))
    generator = trainable_copy(teacher.net, cfg.trained_nets, dev)  # every weight, or LoRA adapters only
    fake = trainable_copy(teacher.net, cfg.trained_nets, dev)
    if path is not None:
        path.load_into(fake, path.keys[-1])
        log.info("fake score initialised from the end of the path (%s)", path.keys[-1])
    scratch = frozen_copy(teacher.net, cfg.trained_nets, dev)
    ema = EMA(generator, cfg.ema_decay, cfg.ema_rampup)
    for net in (teacher_net, generator, fake, scratch):
        if cfg.channels_last and len(source.shape) == 3:
            net.to(memory_format=torch.channels_last)
        if cfg.compile:
            net.compile()  # in place: parameters, state_dict keys and checkpoints stay as they are
    nets = Nets(teacher_net, generator, fake, scratch, ema, make_adam(trained_parameters(generator),
                 cfg.lr_generator, cfg.betas), make_adam(trained_parameters(fake), cfg.lr_fake, cfg.betas))
    if cfg.gan_weight > 0:
        example, _ = source.sample(2)
        nets.gan = AdversarialTerm(fake, example.to(dev), cfg.gan.hidden, cfg.gan.P_mean, cfg.gan.P_std)
        nets.opt_d = make_adam(nets.gan.head.parameters(), cfg.gan.lr, cfg.betas)
    return nets


def fake_score_step(nets: Nets, loss_fn: EDMLoss, source: DataSource, cfg: DistillConfig, dev,
                    where: Guard | tuple[str, int] | None = None) -> torch.Tensor:
    """Step 1: one DSM step of the fake score on detached generator samples (drawn under the step's autocast)."""
    with autocast(dev, cfg.bf16):
        x0, labels = draw_generator_batch(nets.generator, source, cfg.batch_size, cfg.s_init, dev)
    return train_step(nets.opt_f, mean_loss, loss_fn, nets.fake, x0.detach(), labels, device=dev, bf16=cfg.bf16,
                      where=where)


def discriminator_step(nets: Nets, source: DataSource, cfg: DistillConfig, dev,
                       where: Guard | tuple[str, int] | None = None) -> torch.Tensor:
    """With gan_weight > 0: one step of the adversarial head, real data against detached generator samples."""
    real, real_labels = source.sample(distributed.global_size(cfg.batch_size))  # this rank's slice follows
    real, real_labels = distributed.local(real), None if real_labels is None else distributed.local(real_labels)
    real, real_labels = real.to(dev), None if real_labels is None else real_labels.to(dev)
    with autocast(dev, cfg.bf16):
        x0, labels = draw_generator_batch(nets.generator, source, cfg.batch_size, cfg.s_init, dev)
    return train_step(nets.opt_d, nets.gan.discriminator_loss, nets.fake, real, real_labels, x0, labels,
                      device=dev, bf16=cfg.bf16, where=where)


def generator_step(nets: Nets, loss_fn, target: torch.nn.Module, source: DataSource, cfg: DistillConfig, dev,
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


def distill(teacher: Checkpoint, source: DataSource, path: DegradationPath | None, cfg: DistillConfig | dict,
            time_offset: float = 0.0, callbacks: Callbacks | None = None,
            store: StateStore | None = None) -> DistillResult:
    """Stage 2: score distillation of a one-step generator.

    With a path the fake score starts from P_N and the targets walk P_{N-1} ... P_0 = teacher (:class:`Walk`);
    without one (the baseline) the teacher is the target throughout. ``callbacks``: ``evaluate(generator)``
    adds history columns every ``eval_every`` iterations (on the EMA generator, off the training clock);
    ``on_switch(iteration, target, ema_generator)`` runs at every change of target and at the end (target
    ``"final"``), its results kept in ``result.switch_samples``. With a ``store`` the training state is saved
    every ``checkpoint_every`` iterations and a run continues from the newest one (restored rows go to
    ``on_record`` again). ``keep: best`` hands on the EMA generator whose ``select_by`` value was lowest at an
    evaluation (named in its metadata); the raw generator is always the last.
    """
    cfg = cfg if isinstance(cfg, DistillConfig) else from_dict(DistillConfig, cfg, "backtracking")
    cb = rank_callbacks(callbacks, cfg)
    check_teacher_fits(teacher.config, source)
    dev = select_device(cfg.device)
    seed_everything(cfg.seed)
    path = path if path is not None and len(path.nodes) >= 2 else None
    walk = make_walk(path, cfg)
    nets = _build_nets(teacher, source, path, cfg, dev)
    losses = (EDMLoss(cfg.fake_P_mean, cfg.fake_P_std, nets.fake.sigma_data), cfg.generator_loss())
    run = Run.start(time_offset)
    state = store.begin() if store is not None else None
    if state is not None:
        run = restore_state(nets, walk, state)
        for rec in run.history if cb.on_record is not None else ():
            cb.on_record(rec)
    status = StatusLine("backtracking" if path else "baseline", cfg.budget, cfg.log_every)
    loop = _Loop(nets, path, walk, run, cb, cfg, store, status, Guard.for_device(f"stage 2 ({status.desc})", dev),
                 dev, source, losses, target_net(nets, path, run.key, cfg.guidance_scale))
    with progress(cfg.budget, status.desc) as bar:
        bar.update(run.first - 1)
        for it in range(run.first, cfg.budget + 1):
            loop.step(it)
            bar.update(1)
    return finish(teacher, source, cfg, nets, run, cb.on_switch, "disback" if path else "baseline")


@dataclass
class _Loop:
    """One call's fixed parts of the stage-2 loop, and the target it is on."""

    nets: Nets
    path: DegradationPath | None
    walk: Walk
    run: Run
    cb: Callbacks
    cfg: DistillConfig
    store: StateStore | None
    status: StatusLine
    guard: Guard
    dev: torch.device
    source: DataSource
    losses: tuple
    target: torch.nn.Module

    def step(self, it: int) -> None:
        """Iteration ``it``: a change of target if one is due, the training steps, then what is read, recorded,
        reported and saved after them."""
        switch = self.walk.target_for(it)
        if switch is not None:
            self.target = switch_target(self.nets, self.path, self.cfg, self.run, it, switch, self.cb.on_switch)
        loss_f, loss_g, out = _iteration(self.nets, self.losses, self.target, self.source, self.cfg, self.dev,
                                         self.guard.at(it))
        cfg, run = self.cfg, self.run
        eval_due = self.cb.evaluate is not None and cfg.eval_every > 0 and (it % cfg.eval_every == 0
                                                                            or it == cfg.budget)
        record_due = it % cfg.record_every == 0 or it == cfg.budget or switch is not None or eval_due
        save = self.store is not None and self.store.tick(it, cfg.budget)
        read = record_due or self.status.due(it)  # values leave the device only at record and status intervals
        if read or save:
            self.guard.check()  # a deferred guard's flags are read here, and before every state
        mismatch = out.score_mismatch().detach()
        distributed.average([mismatch])  # every rank's walk sees the global batch's mismatch
        mismatch = mismatch.item() if (read or self.walk.switch == "adaptive") else float("nan")
        loss_f = loss_f.item() if read else float("nan")
        self.walk.observe(mismatch)
        if record_due:
            rec = {**history_row(it, run.clock.now(), "backtracking", run.key, switch[1] if switch is not None else "",
                                 loss_g.item(), loss_f, mismatch),
                   **(evaluate(run, it, self.nets.ema.net, self.cb, cfg.keep) if eval_due else {})}
            run.history.append(rec)
            if self.cb.on_record is not None:
                self.cb.on_record(rec)
        if self.status.due(it):
            self.status(it, target=run.key, loss_g=loss_g.item(), loss_fake=loss_f, mismatch=mismatch)
        if save:
            save_state(self.store, it, cfg.budget, self.nets, self.walk, run)


def _iteration(nets: Nets, losses: tuple, target: torch.nn.Module, source: DataSource, cfg: DistillConfig, dev,
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


