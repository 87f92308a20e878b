"""Data-parallel training over torch.distributed.

One seeded global stream, sliced per rank: every rank draws each random tensor of a training step at the
global batch size (the per-rank batch times the number of ranks) from the same RNG state and keeps its own
slice, so rank r holds rows r*b .. (r+1)*b-1 of what one process with the global batch would have drawn.
After backward the ranks average their gradients (and losses), so every rank applies the same update and
the result does not depend on how many ranks share the batch, up to the rounding of the average.

Why not the ``DistributedDataParallel`` wrapper: stage 2 runs the fake score and the target inside the
generator's graph with their parameters frozen, the fake score is trained and used in the same iteration
(several forwards per backward), and the adversarial head shares the fake score's encoder. DDP's reducer
expects one forward per backward on one module; averaging the gradients of the stepped optimiser's
parameters right after backward (one flat buffer, one all-reduce) is the same arithmetic without those
constraints, and it serves the three loops alike.

The ranks are started from inside a process with torch's elastic launcher (the machinery behind
``torchrun``): :func:`launch` runs ``fn(*args)`` on ``nproc`` ranks (gloo on the CPU, nccl on CUDA, one
GPU a rank) and returns rank 0's result. Rank 0 alone writes (training states, path files); the others
only read. With one rank every function here is the identity, so single-process runs are unchanged.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import signal
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Ranks:
    """This process's place among the ranks of a run."""

    rank: int = 0
    world: int = 1

    @property
    def writer(self) -> bool:
        """Only rank 0 writes files (training states, snapshots, outputs)."""
        return self.rank == 0


_RANKS = [Ranks()]  # this process's place: set by the launcher in each rank
_WHOLE = [0]  # > 0 inside whole(): draws are not sliced
_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)


def ranks() -> Ranks:
    return _RANKS[0]


def _sharding() -> bool:
    return _RANKS[0].world > 1 and not _WHOLE[0]


@contextlib.contextmanager
def whole() -> Iterator[None]:
    """Draw whole tensors inside (every rank the same): for what all ranks compute alike, such as stage 1's
    probe batch."""
    _WHOLE[0] += 1
    try:
        yield
    finally:
        _WHOLE[0] -= 1


def local(t: torch.Tensor) -> torch.Tensor:
    """This rank's slice (along the first dimension) of a tensor drawn at the global batch size."""
    if not _sharding():
        return t
    r = _RANKS[0]
    n = t.shape[0] // r.world
    return t[r.rank * n:(r.rank + 1) * n]


def global_size(n: int) -> int:
    """The global batch size behind a per-rank batch of ``n``."""
    return n * _RANKS[0].world if _sharding() else n


def randn(n: int, *shape: int, device=None, dtype=None, generator=None) -> torch.Tensor:
    """``torch.randn((n, *shape))`` for this rank: drawn globally, sliced."""
    return local(torch.randn((global_size(n), *shape), device=device, dtype=dtype, generator=generator))


def randn_like(x: torch.Tensor) -> torch.Tensor:
    """``torch.randn_like(x)`` for a per-rank batch ``x``: drawn globally, sliced."""
    return randn(x.shape[0], *x.shape[1:], device=x.device, dtype=x.dtype)


def rand(n: int, device=None) -> torch.Tensor:
    return local(torch.rand(global_size(n), device=device))


def randint(high: int, n: int, generator=None) -> torch.Tensor:
    return local(torch.randint(high, (global_size(n),), generator=generator))


def average(tensors: list[torch.Tensor]) -> None:
    """Replace each tensor by its mean over the ranks, in place (one all-reduce of one flat buffer)."""
    world = _RANKS[0].world
    if world == 1 or not tensors:
        return
    flat = torch.cat([t.reshape(-1).float() for t in tensors])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for t in tensors:
        t.copy_(flat[offset:offset + t.numel()].view_as(t))
        offset += t.numel()


def broadcast_module(module: torch.nn.Module) -> None:
    """Give every rank rank 0's parameters and buffers (the same start, whatever each rank's init did)."""
    if _RANKS[0].world == 1:
        return
    for t in [*module.parameters(), *module.buffers()]:
        dist.broadcast(t.data, src=0)


def barrier() -> None:
    if _RANKS[0].world > 1:
        dist.barrier()


def pick_backend(backend: str, device: str) -> str:
    """``auto``: nccl when the stage trains on CUDA, gloo on the CPU."""
    if backend != "auto":
        return backend
    return "nccl" if device.startswith("cuda") or (device == "auto" and torch.cuda.is_available()) else "gloo"


def run(fn: Callable, *args: Any, nproc: int, backend: str, device: str, **kwargs: Any) -> Any:
    """:func:`launch` with the backend chosen for ``device`` (``backend`` auto); ``nproc`` 1 calls ``fn``."""
    return launch(fn, *args, nproc=nproc, backend=pick_backend(backend, device), **kwargs)


def _entry(backend: str, error_file: str, fn: Callable, args: tuple, kwargs: dict) -> Any:
    """One rank: join the process group, run ``fn``, hand rank 0's result back."""
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    else:  # ranks share this machine's cores
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["LOCAL_WORLD_SIZE"])))
    dist.init_process_group(backend)
    _RANKS[0] = Ranks(rank, world)
    try:
        out = fn(*args, **kwargs)
    except Exception as exc:  # the launcher reports a failure only by exit code; keep the error for the caller
        with contextlib.suppress(Exception), open(f"{error_file}.{rank}", "wb") as f:
            pickle.dump(exc, f)
        raise  # without leaving the group: a peer may wait in a collective; the launcher stops it
    finally:
        _RANKS[0] = Ranks()
    dist.destroy_process_group()
    return out if rank == 0 else None


def launch(fn: Callable, *args: Any, nproc: int, backend: str = "gloo", **kwargs: Any) -> Any:
    """Run ``fn(*args, **kwargs)`` on ``nproc`` local ranks (torch's elastic launcher, as ``torchrun
    --standalone`` does) and return rank 0's result. ``fn`` and its arguments travel to the ranks by pickle:
    a module-level function and plain data (callbacks that write to the caller's state cannot; the caller
    replays the returned history instead). An exception in a rank is raised again here, as itself."""
    if nproc == 1:
        return fn(*args, **kwargs)
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=uuid.uuid4().hex,
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, start_method="spawn")
    # the launcher installs its own handlers for these and leaves them: the caller's come back afterwards, and a
    # SIGTERM or Ctrl-C while the ranks run (the launcher stops them) reaches the caller as an interrupt
    handlers = {sig: signal.getsignal(sig) for sig in _SIGNALS}
    with tempfile.TemporaryDirectory(prefix="disback-ranks-") as tmp:
        error_file = str(Path(tmp) / "error")
        try:
            results = elastic_launch(config, _entry)(backend, error_file, fn, args, kwargs)
        except SignalException as exc:
            raise KeyboardInterrupt(f"the ranks were stopped by {exc.sigval.name}") from None
        except ChildFailedError:
            errors = []
            for rank in range(nproc):
                with contextlib.suppress(Exception), open(f"{error_file}.{rank}", "rb") as f:
                    errors.append(pickle.load(f))
            if errors:
                raise errors[0] from None
            raise
        finally:
            for sig, handler in handlers.items():
                if handler is not None and threading.current_thread() is threading.main_thread():
                    signal.signal(sig, handler)
    return results[0]
