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
import ctypes
import hashlib
import logging
import os
import pickle
import signal
import socket
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
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


def from_writer(read: Callable[[], Any]) -> Any:
    """``read()`` on rank 0, and its result (or the exception it raised) on every rank: for what only rank 0's
    machine holds, such as the training states it wrote."""
    if _RANKS[0].world == 1:
        return read()
    box: list[Any] = [None]
    if _RANKS[0].writer:
        try:
            box = [(True, read())]
        except Exception as exc:  # every rank raises it, none waits for the others
            box = [(False, exc)]
    dist.broadcast_object_list(box, src=0)
    ok, value = box[0]
    if not ok:
        raise value
    return value


def pick_backend(backend: str, device: str) -> str:
    """``auto``: nccl when the stage trains on CUDA, gloo on the CPU."""
    if backend != "auto":
        return backend
    return "nccl" if device.startswith("cuda") or (device == "auto" and torch.cuda.is_available()) else "gloo"


def run(fn: Callable, *args: Any, nproc: int, backend: str, device: str, machines: Machines | None = None,
        **kwargs: Any) -> Any:
    """:func:`launch` with the backend chosen for ``device`` (``backend`` auto); ``nproc`` 1 on one machine
    calls ``fn``."""
    return launch(fn, *args, nproc=nproc, backend=pick_backend(backend, device), machines=machines, **kwargs)


def _threads_per_rank() -> None:
    """Ranks on a CPU share its cores."""
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["LOCAL_WORLD_SIZE"])))


def _die_with_parent() -> None:
    """On Linux, have the kernel stop this rank when the process that started it dies, as a machine's ranks stop
    with the machine (else a killed launcher would leave its ranks running, holding their peers in a collective)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _keep_error(error_file: str, rank: int, exc: BaseException) -> None:
    with contextlib.suppress(Exception), open(f"{error_file}.{rank}", "wb") as f:
        pickle.dump(exc, f)


def _entry(backend: str, error_file: str, fn: Callable, args: tuple, kwargs: dict) -> Any:
    """One rank: join the process group, run ``fn``, hand rank 0's result back."""
    _die_with_parent()
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    else:
        _threads_per_rank()
    dist.init_process_group(backend)
    _RANKS[0] = Ranks(rank, world)
    try:
        out = fn(*args, **kwargs)
    except Exception as exc:  # the launcher reports a failure only by exit code; keep the error for the caller
        _keep_error(error_file, rank, exc)
        raise  # without leaving the group: a peer may wait in a collective; the launcher stops it
    finally:
        _RANKS[0] = Ranks()
    dist.destroy_process_group()
    return out if rank == 0 else None


def launch(fn: Callable, *args: Any, nproc: int, backend: str = "gloo", machines: Machines | None = None,
           **kwargs: Any) -> Any:
    """Run ``fn(*args, **kwargs)`` on ``nproc`` local ranks (torch's elastic launcher, as ``torchrun
    --standalone`` does) and return rank 0's result. ``fn`` and its arguments travel to the ranks by pickle:
    a module-level function and plain data (callbacks that write to the caller's state cannot; the caller
    replays the returned history instead). An exception in a rank is raised again here, as itself.

    With ``machines`` (more than one), the ranks of the other machines' workers join these (see
    :func:`_launch_machines`)."""
    if machines is not None and machines.nnodes > 1:
        return _launch_machines(fn, args, kwargs, nproc, backend, machines)
    if nproc == 1:
        return fn(*args, **kwargs)
    from torch.distributed.launcher.api import LaunchConfig

    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=uuid.uuid4().hex,
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, start_method="spawn")
    return _agent(config, _entry, lambda error_file: (backend, error_file, fn, args, kwargs), nproc)[0]


def _agent(config, entry: Callable, entry_args: Callable[[str], tuple], local_ranks: int) -> dict[int, Any]:
    """Run this machine's ranks with torch's elastic agent; their results by rank. A rank's exception is raised
    here as itself (ranks keep them in files: the agent reports a failure only by exit code)."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import elastic_launch

    # the launcher installs its own handlers for these and leaves them: the caller's come back afterwards, and a
    # SIGTERM or Ctrl-C while the ranks run (the launcher stops them) reaches the caller as an interrupt
    handlers = {sig: signal.getsignal(sig) for sig in _SIGNALS}
    with tempfile.TemporaryDirectory(prefix="disback-ranks-") as tmp:
        error_file = str(Path(tmp) / "error")
        try:
            return elastic_launch(config, entry)(*entry_args(error_file))
        except SignalException as exc:
            raise KeyboardInterrupt(f"the ranks were stopped by {exc.sigval.name}") from None
        except ChildFailedError:
            errors = []
            for rank in range(local_ranks):
                with contextlib.suppress(Exception), open(f"{error_file}.{rank}", "rb") as f:
                    errors.append(pickle.load(f))
            if errors:
                raise errors[0] from None
            raise
        finally:
            for sig, handler in handlers.items():
                if handler is not None and threading.current_thread() is threading.main_thread():
                    signal.signal(sig, handler)


# ---- several machines -------------------------------------------------------------------------------------------
# The primary (the machine of the Kedro run, the only one that touches the catalog, MLflow and DVC) listens at
# ``endpoint`` with a TCPStore it keeps for the whole run. Each data-parallel stage gets an id, published there;
# the other machines' workers (:mod:`disback_pipeline.worker`) poll for it and join the stage's c10d rendezvous of
# torch's elastic launcher, which starts every machine's ranks. The ranks then take from the store what only the
# primary has (the function, the teacher, the path nodes and the settings, pickled, with a sha256), rank 0 on the
# primary first, so rank 0 is the primary's own and its result comes back to the Kedro run. Each rank beats a
# heartbeat in the store; rank 0 names a rank silent for ``heartbeat_timeout_s`` and stops the stage.

STAGE_KEY = "disback/stage"  # the id of the stage being started (the workers poll it)
DONE_KEY = "disback/done"    # set when the primary's run ends: FINISHED or FAILED


@dataclass(frozen=True)
class Machines:
    """The machines of a run beyond this one: ``nnodes`` in all, the others joining at ``endpoint``."""

    nnodes: int
    endpoint: str
    join_timeout_s: float = 600.0
    heartbeat_timeout_s: float = 60.0


class MachinesError(RuntimeError):
    """A machine did not join a stage, was lost during it, or sees other data than the primary."""


@dataclass(frozen=True)
class _Job:
    stage: str
    endpoint: str
    primary: bool


@dataclass(frozen=True)
class _Rank0:
    value: Any


_STORES: dict[str, Any] = {}  # endpoint -> the store this process hosts for the workers (the primary's run)


def split_endpoint(endpoint: str) -> tuple[str, int]:
    host, _, port = endpoint.rpartition(":")
    return host.strip("[]"), int(port)


def _primary_store(endpoint: str):
    if endpoint not in _STORES:
        host, port = split_endpoint(endpoint)
        try:
            store = dist.TCPStore(host, port, is_master=True, wait_for_workers=False, timeout=timedelta(seconds=60))
        except Exception as exc:
            raise MachinesError(f"cannot listen on {endpoint} (distributed.endpoint): {exc}; use an address of this "
                                "machine that the other machines reach, and a free port") from exc
        _STORES[endpoint] = store
    return _STORES[endpoint]


def close_machines(status: str = "FINISHED") -> None:
    """End the several-machine part of this process's run: the workers read ``status`` and exit, then the store
    closes. Nothing happens when this process hosts no store."""
    for endpoint in list(_STORES):
        store = _STORES.pop(endpoint)
        with contextlib.suppress(Exception):
            store.set(DONE_KEY, status)
            time.sleep(1.5)  # three of the workers' polls
        del store


def workers_in(store, stage: str, arriving: int = 0) -> int:
    """How many workers' machines have arrived for ``stage`` (each counts itself in, ``arriving`` 1, before it
    joins the rendezvous)."""
    return store.add(f"disback/{stage}/workers", arriving)


def machine_config(stage: str, endpoint: str, nnodes: int, nproc: int, join_timeout_s: float):
    """The elastic launcher's settings for one machine of a stage (the primary's and each worker's alike)."""
    from torch.distributed.launcher.api import LaunchConfig

    return LaunchConfig(min_nodes=nnodes, max_nodes=nnodes, nproc_per_node=nproc, run_id=stage,
                        rdzv_backend="c10d", rdzv_endpoint=endpoint, max_restarts=0, start_method="spawn",
                        monitor_interval=0.5,
                        rdzv_configs={"is_host": False, "join_timeout": max(1, round(join_timeout_s))})


def _launch_machines(fn: Callable, args: tuple, kwargs: dict, nproc: int, backend: str, machines: Machines) -> Any:
    """One stage on ``machines.nnodes`` machines: publish it, start this machine's ``nproc`` ranks, wait for the
    others to join, and return rank 0's result."""
    from torch.distributed.elastic.rendezvous.api import RendezvousTimeoutError

    store = _primary_store(machines.endpoint)
    stage = uuid.uuid4().hex
    payload = pickle.dumps((fn, args, kwargs))
    shared = dist.PrefixStore(f"disback/{stage}", store)
    for key, value in {"backend": backend, "nnodes": str(machines.nnodes),
                       "join_timeout_s": str(machines.join_timeout_s),
                       "heartbeat_timeout_s": str(machines.heartbeat_timeout_s),
                       "payload_sha256": hashlib.sha256(payload).hexdigest()}.items():
        shared.set(key, value)
    shared.set("payload", payload)
    store.set(STAGE_KEY, stage)
    log.info("stage %s: waiting up to %g s for %d machine(s) at %s", stage[:8], machines.join_timeout_s,
             machines.nnodes - 1, machines.endpoint)
    config = machine_config(stage, machines.endpoint, machines.nnodes, nproc, machines.join_timeout_s)
    try:
        results = _agent(config, _machine_entry, lambda error_file: (_Job(stage, machines.endpoint, True),
                                                                      error_file), nproc)
    except RendezvousTimeoutError:
        raise MachinesError(
            f"{1 + workers_in(store, stage)} of {machines.nnodes} machines joined the stage within "
            f"distributed.join_timeout_s = {machines.join_timeout_s:g} s: start `python -m disback_pipeline.worker "
            f"--endpoint {machines.endpoint}` on each other machine (in the project's folder), or set "
            "distributed.nnodes to the number of machines taking part") from None
    finally:
        with contextlib.suppress(Exception):
            shared.delete_key("payload")
        store = shared = None  # a traceback that outlives this frame must not keep the store (and its port) open
    return next(r.value for r in results.values() if isinstance(r, _Rank0))


def join_stage(store, endpoint: str, stage: str, nproc: int) -> None:
    """A worker's machine in ``stage``: count it in, then run its ``nproc`` ranks with the elastic agent until the
    stage ends (the other half of :func:`_launch_machines`)."""
    from torch.distributed.elastic.rendezvous.api import RendezvousClosedError

    shared = dist.PrefixStore(f"disback/{stage}", store)
    nnodes, join_timeout = int(shared.get("nnodes")), float(shared.get("join_timeout_s"))
    log.info("stage %s: joining with %d rank(s) (%d machines)", stage[:8], nproc, nnodes)
    config = machine_config(stage, endpoint, nnodes, nproc, join_timeout)
    workers_in(store, stage, arriving=1)
    try:
        _agent(config, _machine_entry, lambda error_file: (_Job(stage, endpoint, False), error_file), nproc)
    except RendezvousClosedError:  # it ended before this machine arrived
        log.warning("stage %s ended before this worker joined; waiting for the next", stage[:8])
        return
    log.info("stage %s: done", stage[:8])


def _machine_entry(job: _Job, error_file: str) -> Any:
    """One rank of a several-machine stage: take the stage from the primary's store, join the process group at
    its place (the primary's ranks first), run the function, and hand rank 0's result back."""
    _die_with_parent()
    host, port = split_endpoint(job.endpoint)
    store = dist.TCPStore(host, port, is_master=False, timeout=timedelta(seconds=60))
    shared = dist.PrefixStore(f"disback/{job.stage}", store)
    world, local_rank = int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
    me = (0 if job.primary else 1, int(os.environ["GROUP_RANK"]), local_rank, socket.gethostname(), os.getpid())
    problem = None
    try:
        payload = shared.get("payload")
        if hashlib.sha256(payload).hexdigest() != shared.get("payload_sha256").decode():
            raise MachinesError("the stage's inputs arrived damaged (sha256 mismatch)")
        fn, args, kwargs = pickle.loads(payload)
    except Exception as exc:  # e.g. other code installed here than on the primary
        problem = f"{type(exc).__name__}: {exc}"
    shared.set(f"who/{os.environ['RANK']}", pickle.dumps((me, problem)))
    everyone = sorted(pickle.loads(shared.get(f"who/{r}")) for r in range(world))
    rank = [who for who, _ in everyone].index(me)
    machines = sorted({(primary, group) for (primary, group, *_), _ in everyone})
    where = [f"rank {r} on machine {machines.index((p, g)) + 1} of {len(machines)} ({h}, pid {pid})"
             for r, ((p, g, _, h, pid), _) in enumerate(everyone)]
    problems = [f"{where[r]}: {p}" for r, (_, p) in enumerate(everyone) if p]
    if problems:  # every rank stops before any waits for another
        error = MachinesError("the stage cannot start on every machine (each needs the same code installed): "
                              + "; ".join(problems))
        _keep_error(error_file, rank, error)
        raise error
    backend = shared.get("backend").decode()
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    else:
        _threads_per_rank()
    dist.init_process_group(backend, store=dist.PrefixStore("pg", shared), rank=rank, world_size=world)
    _RANKS[0] = Ranks(rank, world)
    beats = _Heartbeats(job, rank, where, float(shared.get("heartbeat_timeout_s")), error_file).start()
    try:
        args = _each_machine_builds(args, where[rank])
        out = fn(*args, **kwargs)
    except Exception as exc:
        lost = beats.verdict(exc)
        _keep_error(error_file, rank, lost or exc)
        if lost is not None:
            raise lost from exc
        raise
    finally:
        beats.stop()
        _RANKS[0] = Ranks()
    dist.destroy_process_group()
    return _Rank0(out) if rank == 0 else None


def _each_machine_builds(args: tuple, where: str) -> tuple:
    """Replace each argument that a machine builds from its own files (one with ``build_here``: the data source)
    by what it builds; when any rank fails to, or sees other content than the primary, every rank stops with
    the reasons of all."""
    problems, built = [], []
    for arg in args:
        if hasattr(arg, "build_here"):
            try:
                arg = arg.build_here()
            except Exception as exc:
                problems.append(f"{where}: {exc}")
        built.append(arg)
    everyone: list[Any] = [None] * _RANKS[0].world
    dist.all_gather_object(everyone, problems)
    problems = [p for ps in everyone for p in ps]
    if problems:
        raise MachinesError("the machines do not see the same inputs, so the stage does not start: "
                            + "; ".join(problems))
    return tuple(built)


class _Heartbeats:
    """Each rank adds to its counter in the primary's store every ``interval``; rank 0 watches every other
    counter and names a rank whose counter has not moved for ``timeout`` seconds (its own clock: machines'
    clocks need not agree). A rank stuck in a collective with the lost one cannot raise, so after a grace
    period the watcher stops the process itself, leaving the error for the launcher. A rank that loses the
    store has lost the primary, and stops the same way."""

    def __init__(self, job: _Job, rank: int, where: list[str], timeout: float, error_file: str):
        self.job, self.rank, self.where, self.timeout, self.error_file = job, rank, where, timeout, error_file
        self.interval = min(1.0, timeout / 10)
        self.lost: MachinesError | None = None
        self._found, self._stopped = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._run, name="disback-heartbeat", daemon=True)

    def start(self) -> _Heartbeats:
        host, port = split_endpoint(self.job.endpoint)  # a connection of its own: the main thread's may block
        self.store = dist.PrefixStore(f"disback/{self.job.stage}/beat",
                                      dist.TCPStore(host, port, is_master=False,
                                                    timeout=timedelta(seconds=self.timeout)))
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        with contextlib.suppress(Exception):
            self.store.set(f"done/{self.rank}", "1")  # a rank that has finished is not lost

    def verdict(self, exc: Exception) -> MachinesError | None:
        """After ``exc`` in the main thread: the lost rank behind it, when a collective failed because of one (the
        watcher decides within the timeout), else None."""
        if not (isinstance(exc, dist.DistError) or type(exc) is RuntimeError):  # the project's errors say why
            return None
        self._found.wait(self.timeout + 3 * self.interval)
        return self.lost

    def _run(self) -> None:
        others = range(1, len(self.where)) if self.rank == 0 else ()
        seen = {r: (-1, time.monotonic()) for r in others}
        while not self._stopped.wait(self.interval):
            try:
                self.store.add(str(self.rank), 1)
                now = time.monotonic()
                for r in others:
                    count = self.store.add(str(r), 0)
                    if count != seen[r][0]:
                        seen[r] = (count, now)
                silent = [(r, now - t) for r, (_, t) in seen.items()
                          if now - t > self.timeout and not self.store.check([f"done/{r}"])]
            except Exception as exc:
                if self._stopped.is_set():
                    return
                self._give_up(MachinesError(
                    f"{self.where[self.rank]} lost the primary machine ({self.job.endpoint}): {exc}; the stage "
                    "stops"))
                return
            if silent:
                self._give_up(MachinesError(
                    "lost " + "; ".join(f"{self.where[r]} (silent for {t:.1f} s)" for r, t in silent)
                    + f", beyond distributed.heartbeat_timeout_s = {self.timeout:g} s: that machine stopped or left "
                    "the network, and the stage stops. Start its worker again and run the same `kedro run`: each "
                    "stage resumes from its last training state"))
                return

    def _give_up(self, error: MachinesError) -> None:
        self.lost = error
        self._found.set()
        if self._stopped.wait(5 * self.interval + 2):  # the main thread raised it (or finished) meanwhile
            return
        _keep_error(self.error_file, self.rank, error)  # stuck in a collective: stop here
        log.error("%s", error)
        os._exit(1)
