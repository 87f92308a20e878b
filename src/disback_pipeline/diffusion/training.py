"""Training helpers: device choice, autocast, EMA, the one optimiser step, the
status line, and the DSM training loop (teacher pre-training)."""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from tqdm.auto import tqdm

from . import distributed
from .config import TrainingConfig
from .losses import EDMLoss
from .state import DivergenceError, StateStore

log = logging.getLogger(__name__)


def select_device(preference: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else the CPU; ``cpu``/``cuda`` force one."""
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if preference.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {preference!r} requested but CUDA is not available; use 'auto' or 'cpu'")
    return torch.device(preference)


def autocast(device: torch.device, bf16: bool):
    """bf16 autocast on CUDA when asked; a no-op elsewhere."""
    if bf16 and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def frozen(net: torch.nn.Module) -> torch.nn.Module:
    """``net`` in eval mode with no gradient for its weights (teacher, targets, the frozen generator)."""
    return net.eval().requires_grad_(False)


def seed_everything(seed: int) -> None:
    torch.manual_seed(int(seed))


class EMA:
    """Exponential moving average of a network's weights (decay per step)."""

    def __init__(self, net: torch.nn.Module, decay: float):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = float(decay)
        self.net = copy.deepcopy(net).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, net: torch.nn.Module) -> None:
        for p_ema, p in zip(self.net.parameters(), net.parameters()):
            p_ema.lerp_(p.detach(), 1.0 - self.decay)
        for b_ema, b in zip(self.net.buffers(), net.buffers()):
            b_ema.copy_(b)


def make_adam(params, lr: float, betas=(0.9, 0.999)) -> torch.optim.Adam:
    if not lr > 0:
        raise ValueError(f"learning rate must be > 0, got {lr}")
    return torch.optim.Adam(params, lr=float(lr), betas=tuple(float(b) for b in betas))


def progress(total: int, desc: str):
    """A progress bar shown only when stderr is a terminal."""
    return tqdm(total=total, desc=desc, disable=not sys.stderr.isatty(), leave=False)


def lr_lambda(schedule: str, steps: int, warmup_steps: int = 0) -> Callable[[int], float]:
    """Learning-rate multiplier per step: linear warm-up, then constant or cosine to zero."""
    if schedule not in ("constant", "cosine"):
        raise ValueError(f"lr_schedule must be 'constant' or 'cosine', got {schedule!r}")

    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "constant":
            return 1.0
        progress_ = (step - warmup_steps) / max(1, steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress_)))

    return factor


StepCallback = Callable[[int, dict], None]

# Columns of every stage's history table (stage 1 and stage 2 share one table).
HISTORY_COLUMNS = ["iteration", "wall_clock_s", "stage", "target", "switch_reason", "loss_generator",
                   "loss_fake_score", "score_mismatch"]


def train_step(opt: torch.optim.Optimizer, compute_loss: Callable[..., Any], *args, device: torch.device,
               bf16: bool = False, grad_clip: float | None = None, where: tuple[str, int] | None = None):
    """One optimiser step: autocast, loss, zero_grad, backward, (clip), step.

    ``compute_loss(*args)`` returns the scalar loss, or a tuple whose first
    entry is the scalar loss; the same is returned, so callers keep what they
    need of it (the generator step keeps the denoisers' outputs).

    The divergence guard: with ``where = (stage, iteration)`` a non-finite loss
    or gradient norm raises :class:`DivergenceError` before the weights change.
    """
    with autocast(device, bf16):
        out = compute_loss(*args)
    loss = out[0] if isinstance(out, tuple) else out
    opt.zero_grad(set_to_none=True)
    loss.backward()
    params = [p for g in opt.param_groups for p in g["params"] if p.grad is not None]
    if distributed.ranks().world > 1:  # the global batch's mean: gradients and loss averaged over the ranks
        loss = loss.detach().float().clone()
        distributed.average([*(p.grad for p in params), loss])
        out = (loss, *out[1:]) if isinstance(out, tuple) else loss
    norm = torch.nn.utils.get_total_norm([p.grad for p in params])
    if grad_clip:
        torch.nn.utils.clip_grads_with_norm_(params, grad_clip, norm)
    if where is not None and not bool(torch.isfinite(loss.detach()) & torch.isfinite(norm)):
        bad_loss = not bool(torch.isfinite(loss.detach()))
        raise DivergenceError(where[0], where[1], "loss" if bad_loss else "gradient norm",
                              float(loss.detach() if bad_loss else norm))
    opt.step()
    return out


def mean_loss(loss_fn, net, x0, labels) -> torch.Tensor:
    """The batch mean of a per-sample DSM loss."""
    return loss_fn(net, x0, labels).mean()


class StatusLine:
    """One log line every ``every`` steps (and at the last): step, s/step and the given values."""

    def __init__(self, desc: str, total: int, every: int):
        self.desc, self.total, self.every = desc, int(total), int(every)
        self._last, self._last_step = time.perf_counter(), 0

    def due(self, step: int) -> bool:
        return bool(self.every) and (step % self.every == 0 or step == self.total)

    def __call__(self, step: int, **values) -> None:
        if not self.due(step):
            return
        now = time.perf_counter()
        per_step = (now - self._last) / max(1, step - self._last_step)
        self._last, self._last_step = now, step
        fields = " | ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items())
        log.info("%s %d/%d | %.4f s/step | %s", self.desc, step, self.total, per_step, fields)


def train_dsm(net: torch.nn.Module, batches: Callable[[int], tuple], cfg: TrainingConfig,
              device: torch.device | str = "cpu", bf16: bool = False, desc: str = "dsm",
              on_step: StepCallback | None = None, store: StateStore | None = None
              ) -> tuple[torch.nn.Module, list[dict]]:
    """Train ``net`` with the EDM DSM loss on batches from ``batches(n) -> (x0, labels)`` (a
    :class:`~.data.BatchStream`, or any such function).

    Returns the EMA network and a history of per-step records
    ``{step, loss, wall_clock_s}``. ``on_step(step, record)`` is called after
    every step (e.g. to log metrics; on resume, for the restored steps too); a
    status line is logged every ``cfg.log_every`` steps. With a ``store`` the
    full training state is saved every ``cfg.checkpoint_every`` steps and at
    the end, and a run continues from the newest state it finds.
    """
    device = torch.device(device)
    steps = cfg.steps
    loss_fn = EDMLoss(cfg.P_mean, cfg.P_std, net.sigma_data)
    net.to(device).train()
    ema = EMA(net, cfg.ema_decay)
    opt = make_adam(net.parameters(), cfg.lr, cfg.betas)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg.lr_schedule, steps, cfg.warmup_steps))
    history: list[dict] = []
    first, clock = 1, 0.0
    if not distributed.ranks().writer:
        on_step = None  # rank 0 reports
    state = store.begin() if store is not None else None
    if state is not None:
        net.load_state_dict(state["modules"]["net"])
        ema.net.load_state_dict(state["modules"]["ema"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        history, first, clock = list(state["history"]), state["iteration"] + 1, float(state["clock"])
    if hasattr(batches, "start"):  # a seeded stream (BatchStream) continues at the step to run next
        batches.start(first)
        for record in history if on_step is not None else ():
            on_step(record["step"], record)
    status = StatusLine(desc, steps, cfg.log_every)
    start = time.perf_counter() - clock
    with progress(steps, desc) as bar:
        bar.update(first - 1)
        for step in range(first, steps + 1):
            x0, labels = batches(cfg.batch_size)
            x0 = x0.to(device)
            labels = None if labels is None else labels.to(device)
            loss = train_step(opt, mean_loss, loss_fn, net, x0, labels, device=device, bf16=bf16,
                              grad_clip=cfg.grad_clip, where=(desc, step))
            sched.step()
            ema.update(net)
            record = {"step": step, "loss": loss.item(), "wall_clock_s": time.perf_counter() - start}
            history.append(record)
            if on_step is not None:
                on_step(step, record)
            bar.update(1)
            status(step, loss=record["loss"])
            if store is not None and store.due(step, steps):
                store.save(step, {"modules": {"net": net.state_dict(), "ema": ema.net.state_dict()},
                                  "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                                  "history": history, "clock": record["wall_clock_s"]},
                           complete=step == steps, modules=(net, ema.net))
    net.eval()
    return ema.net, history
