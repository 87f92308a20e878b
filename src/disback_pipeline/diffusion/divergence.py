"""Divergence: the error a loop stops with when a loss, gradient norm or weight is no longer finite, and the
guard that checks each step for it."""

from __future__ import annotations

from collections.abc import Iterable

import torch


class DivergenceError(RuntimeError):
    """A loss, gradient norm or weight became NaN or infinite."""

    def __init__(self, stage: str, iteration: int, what: str, value: float):
        self.stage, self.iteration, self.what, self.value = stage, iteration, what, value
        super().__init__(
            f"{stage} diverged at iteration {iteration}: the {what} is {value}. Nothing was written after the "
            "last good training state, and earlier outputs are untouched. Lower the learning rate (or set "
            "grad_clip) and re-run: with checkpointing.resume = auto the stage continues from that state."
        )

    def __reduce__(self):  # travels from a data-parallel rank to the launching process as itself
        return type(self), (self.stage, self.iteration, self.what, self.value)


def check_finite(stage: str, iteration: int, modules: Iterable[torch.nn.Module]) -> None:
    """Raise :class:`DivergenceError` naming the first parameter that holds a NaN or infinity."""
    for net in modules:
        for name, p in net.named_parameters():
            if not bool(torch.isfinite(p).all()):
                bad = p.detach()[~torch.isfinite(p.detach())].flatten()[0].item()
                raise DivergenceError(stage, iteration, f"weight {name}", bad)


class Guard:
    """The divergence guard of one loop: a non-finite loss or gradient norm stops training with
    :class:`DivergenceError` naming the stage, the iteration, the quantity and its value.

    Immediate (the default, and on the CPU): each step's check is read at once, before the weights change.
    Deferred (``defer=True``, the loops' choice on CUDA): reading a flag every step would make the host wait
    for the device every step, so each step's flag stays on the device, a bad step's gradients are zeroed on
    the device (the update cannot put a NaN into the weights), and :meth:`check` reads all pending flags at
    once: the loops call it where they read values anyway (records, status lines) and before every training
    state is written, so no state is ever written after a bad step and the error still names the first one.
    """

    def __init__(self, stage: str, defer: bool = False):
        self.stage, self.defer, self.iteration = stage, bool(defer), 0
        self._pending: list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]] = []

    @classmethod
    def for_device(cls, stage: str, device) -> Guard:
        """Deferred on CUDA (no per-step synchronisation), immediate elsewhere."""
        return cls(stage, defer=torch.device(device).type == "cuda")

    def at(self, iteration: int) -> Guard:
        self.iteration = int(iteration)
        return self

    def observe(self, loss: torch.Tensor, norm: torch.Tensor, grads: list[torch.Tensor]) -> None:
        ok = torch.isfinite(loss) & torch.isfinite(norm)
        if not self.defer:
            if not bool(ok):
                self._raise(self.iteration, loss, norm)
            return
        self._pending.append((self.iteration, ok, loss, norm))
        for g in grads:  # on the device: a bad step's update is zero (Adam's moments still decay)
            g.nan_to_num_(0.0, 0.0, 0.0).mul_(ok)

    def check(self) -> None:
        """Read the pending flags (one host synchronisation); raise for the first bad step."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        oks = torch.stack([ok for _, ok, _, _ in pending]).cpu()
        if bool(oks.all()):
            return
        iteration, _, loss, norm = pending[int((~oks).nonzero()[0])]
        self._raise(iteration, loss, norm)

    def _raise(self, iteration: int, loss: torch.Tensor, norm: torch.Tensor):
        bad_loss = not bool(torch.isfinite(loss))
        raise DivergenceError(self.stage, iteration, "loss" if bad_loss else "gradient norm",
                              float(loss if bad_loss else norm))
