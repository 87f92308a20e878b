"""Training helpers shared by the three loops: device choice, autocast, EMA, Adam, the learning-rate
schedule, the one optimiser step (checked by :mod:`.divergence`'s guard) and the status line. The loops
themselves are in :mod:`.teacher` (DSM pre-training), :mod:`.degradation` (stage 1) and :mod:`.disback`
(stage 2)."""

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
from .divergence import Guard

log = logging.getLogger(__name__)


def select_device(preference: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else the CPU; ``cpu``/``cuda`` force one.

    On CUDA, cuDNN picks each convolution's fastest algorithm by timing them once per shape
    (``cudnn.benchmark``): every loop here repeats a few fixed shapes thousands of times.
    """
    if preference == "auto":
        preference = "cuda" if torch.cuda.is_available() else "cpu"
    if preference.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {preference!r} requested but CUDA is not available; use 'auto' or 'cpu'")
    device = torch.device(preference)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    return device


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
    """Exponential moving average of a network's weights (decay per step).

    With ``rampup`` > 0 the average's half-life is at most ``rampup`` times the
    steps taken so far: early on the EMA follows a fast-moving network closely,
    later it averages over a window that grows with the run (up to ``decay``'s).
    The decay at a step is a function of the step alone: nothing to keep for a resume.
    """

    def __init__(self, net: torch.nn.Module, decay: float, rampup: float = 0.0):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        if not rampup >= 0.0:
            raise ValueError(f"EMA rampup must be >= 0, got {rampup}")
        self.decay, self.rampup = float(decay), float(rampup)
        # the average of the trained weights; frozen ones (the teacher's under LoRA) are shared, not copied
        frozen_params = {id(p): p for p in net.parameters() if not p.requires_grad}
        self.net = copy.deepcopy(net, memo=frozen_params).eval().requires_grad_(False)

    def decay_at(self, step: int | None) -> float:
        """The decay used at ``step`` (1-based; ``None``: the configured decay)."""
        if self.rampup == 0.0 or step is None:
            return self.decay
        return min(self.decay, 0.5 ** (1.0 / (self.rampup * max(int(step), 1))))

    @torch.no_grad()
    def update(self, net: torch.nn.Module, step: int | None = None) -> None:
        weight = 1.0 - self.decay_at(step)
        # the trained weights (with LoRA, the adapters: the frozen rest is the teacher's in both networks)
        pairs = [(e, p) for e, p in zip(self.net.parameters(), net.parameters()) if p.requires_grad]
        pairs = pairs or list(zip(self.net.parameters(), net.parameters()))
        torch._foreach_lerp_([e for e, _ in pairs], [p.detach() for _, p in pairs], weight)
        for b_ema, b in zip(self.net.buffers(), net.buffers()):
            b_ema.copy_(b)


def make_adam(params, lr: float, betas=(0.9, 0.999)) -> torch.optim.Adam:
    """Adam; on CUDA the fused implementation (one kernel for all the parameters; the same update and state)."""
    if not lr > 0:
        raise ValueError(f"learning rate must be > 0, got {lr}")
    params = list(params)
    fused = bool(params) and all(p.is_cuda for p in params)
    return torch.optim.Adam(params, lr=float(lr), betas=tuple(float(b) for b in betas), fused=fused or None)


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


def train_step(opt: torch.optim.Optimizer, compute_loss: Callable[..., Any], *args, device: torch.device,
               bf16: bool = False, grad_clip: float | None = None, where: Guard | tuple[str, int] | None = None):
    """One optimiser step: autocast, loss, zero_grad, backward, (clip), step.

    ``compute_loss(*args)`` returns the scalar loss, or a tuple whose first
    entry is the scalar loss; the same is returned, so callers keep what they
    need of it (the generator step keeps the denoisers' outputs).

    The divergence guard: with ``where`` (a loop's :class:`Guard` at this iteration, or ``(stage, iteration)``)
    a non-finite loss or gradient norm raises :class:`DivergenceError` before the weights change (a deferred
    guard: at its next check, with the bad step's update zeroed).
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
    if where is not None:
        guard = where if isinstance(where, Guard) else Guard(where[0]).at(where[1])
        guard.observe(loss.detach(), norm, [p.grad for p in params])
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
