"""Training states: what a training loop needs to continue after a kill, bit for bit.

A state holds the loop's networks, optimisers, EMA and learning-rate
schedule, every RNG (Python, NumPy, torch CPU and CUDA), the iteration, the
history rows so far, the training clock and whatever else the loop names
(stage 2's place in the switch schedule, stage 1's snapshots). Files are
written atomically (temporary file, then rename) as ``state-<iteration>.pt``
in the stage's folder; the last ``keep`` are kept.

Each state carries a *fingerprint*: the settings and inputs that decide the
loop's result. A state written under another fingerprint is never resumed
silently: an unfinished one is refused, naming the changed keys; a finished
one is superseded (the stage trains afresh under the new settings).

Training states are scratch: the versioned artifacts stay the path and the
final checkpoints.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import random
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import distributed
from .checkpoint import atomic_torch_save
from .divergence import check_finite

log = logging.getLogger(__name__)

FORMAT = "disback-training-state"
VERSION = 2  # 2: stage 1 names its snapshot blobs instead of carrying them
# Settings that change neither the numbers nor the order of a loop's work (data.workers: the processes that
# decode a streamed folder, tested to give the same batches): a state written under other values of these is
# resumed. The device is among them on purpose (a run may move to a bigger machine); results then
# agree only up to the devices' rounding.
NOT_FINGERPRINTED = ("log_every", "checkpoint_every", "device", "workers")


class StateError(RuntimeError):
    """A training state cannot be resumed: its settings differ, or no state file is readable."""


def rng_state() -> dict[str, Any]:
    """Every RNG's state, in types ``torch.load(weights_only=True)`` reads back."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos,
                                                     has_gauss, gauss],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
        # data-parallel ranks each draw on their own device from the same stream: rank 0's device state is
        # what every rank continues from
        state["cuda_current"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, gauss_np = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss_np))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        if distributed.ranks().world > 1 and "cuda_current" in state:
            torch.cuda.set_rng_state(state["cuda_current"])
        else:
            torch.cuda.set_rng_state_all(state["cuda"])


def _flat(value: Any, prefix: str, out: dict[str, Any]) -> None:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):  # a built configuration
        value = dataclasses.asdict(value)
    if isinstance(value, dict):
        for k, v in value.items():
            _flat(v, f"{prefix}.{k}" if prefix else str(k), out)
    else:
        out[prefix] = json.loads(json.dumps(value, default=str))  # tuples -> lists, numbers as JSON has them


def fingerprint(**parts: Any) -> dict[str, Any]:
    """Dotted keys -> plain values of the settings and inputs that decide a loop's result."""
    out: dict[str, Any] = {}
    _flat(parts, "", out)
    return {k: v for k, v in out.items() if k.rsplit(".", 1)[-1] not in NOT_FINGERPRINTED}


def state_dict_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    """A hash of a state dict's names and tensor bytes."""
    h = hashlib.sha256()
    for name, tensor in sorted(state_dict.items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def weights_sha256(net: torch.nn.Module) -> str:
    """A hash of a network's weights (an input of stages 1 and 2: the teacher they start from)."""
    return state_dict_sha256(net.state_dict())


def changed_keys(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``key: old -> new`` for every key whose value differs (or that one side lacks)."""
    missing = object()
    lines = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, missing), new.get(key, missing)
        if a != b:
            lines.append(f"{key}: {'(absent)' if a is missing else a!r} -> {'(absent)' if b is missing else b!r}")
    return lines


@dataclass
class StateStore:
    """The training states of one stage: ``folder``/state-<iteration>.pt.

    ``every`` is the save interval in iterations (0 = only at the end); the
    last iteration is always saved, marked complete, so that a re-run reuses a
    finished stage instead of training it again. ``resume`` = ``never`` starts
    afresh (and removes the folder's states).
    """

    folder: Path
    stage: str
    every: int
    fingerprint: dict[str, Any]
    keep: int = 2
    resume: str = "auto"
    run_id: str | None = None  # the MLflow run the states belong to (kept with each state)

    def __post_init__(self):
        self.folder = Path(self.folder)
        # what this process did: the iteration it resumed after (0 = afresh) and how many it trained since;
        # every state carries both, so a resume that retrained restored iterations shows in the files
        self.resumed_from, self.trained = 0, 0
        if self.resume not in ("auto", "never"):
            raise ValueError(f"checkpointing.resume must be auto or never, got {self.resume!r}")
        if self.keep < 1:
            raise ValueError(f"checkpointing.keep must be >= 1, got {self.keep!r}")

    def files(self) -> list[Path]:
        """State files, newest iteration first."""
        return sorted(self.folder.glob("state-*.pt"), reverse=True)

    def tick(self, iteration: int, total: int) -> bool:
        """Called once per iteration the loop has trained: counts it, and says whether a state is due after it
        (every ``every`` iterations and at the last)."""
        self.trained += 1
        return iteration == total or (self.every > 0 and iteration % self.every == 0)

    def begin(self) -> dict[str, Any] | None:
        """The state to continue from, or None (and an emptied folder) when the stage starts afresh.

        With several ranks, rank 0 decides (and clears or sets aside what it must) and hands the state to the
        others, which need not see its files (other machines), so every rank starts from the same state."""
        state = distributed.from_writer(self._begin)
        if state is not None and not distributed.ranks().writer:
            set_rng_state(state["rng"])  # as rank 0 did when it read the state
        self.resumed_from, self.trained = (int(state["iteration"]) if state is not None else 0), 0
        return state

    def _begin(self) -> dict[str, Any] | None:
        if self.resume == "never":
            self._clear("checkpointing.resume is never")
            return None
        state = self._newest_readable()
        if state is None:
            return None
        if state.get("version") != VERSION:
            self._clear(f"{state['file']} was written by format version {state.get('version')}, this is {VERSION}")
            return None
        changes = changed_keys(state["fingerprint"], self.fingerprint)
        if not changes:
            log.info("%s: resuming from %s (iteration %d%s)", self.stage, state["file"], state["iteration"],
                     ", complete: nothing left to train" if state["complete"] else "")
            set_rng_state(state["rng"])
            return state
        if state["complete"]:
            self._clear(f"the finished state was written with other settings ({'; '.join(changes[:5])})")
            return None
        raise StateError(
            f"{self.stage}: an unfinished training state ({state['file']}, iteration {state['iteration']}) was "
            f"written with other settings, so it is not resumed: {'; '.join(changes)}. To continue that run, "
            "restore those settings; to start this stage afresh, run with `--params checkpointing.resume=never` "
            f"or delete {self.folder}."
        )

    def _newest_readable(self) -> dict[str, Any] | None:
        files = self.files()
        for i, file in enumerate(files):
            try:
                state = torch.load(file, map_location="cpu", weights_only=True)
                if not isinstance(state, dict) or state.get("format") != FORMAT:
                    raise ValueError(f"no '{FORMAT}' header")
            except Exception as exc:  # a state damaged after it was written (the write itself is atomic)
                older = "; trying the previous one" if i + 1 < len(files) else ""
                log.warning("%s: training state %s is unreadable (%s)%s", self.stage, file, exc, older)
                continue
            state["file"] = str(file)
            return state
        if files:
            raise StateError(f"{self.stage}: no training state in {self.folder} is readable; delete the folder "
                             "(or run with `--params checkpointing.resume=never`) to start this stage afresh")
        return None

    def _clear(self, why: str) -> None:
        if not distributed.ranks().writer:
            return
        old = self.files()
        if old:
            log.info("%s: starting afresh (%s); removing %d old training state(s) in %s", self.stage, why,
                     len(old), self.folder)
            for file in old:
                file.unlink()
        shutil.rmtree(self.folder / "blobs", ignore_errors=True)

    def put_blob(self, name: str, obj: Any) -> None:
        """Write a large piece of state once (stage 1's snapshots), outside the state files: a state then
        names its blobs instead of carrying them, so states stay small however many snapshots there are."""
        if distributed.ranks().writer:
            atomic_torch_save(obj, self.folder / "blobs" / f"{name}.pt")

    def get_blob(self, name: str) -> Any:
        """A piece written by :meth:`put_blob`, read by rank 0 and handed to every rank."""
        return distributed.from_writer(lambda: self._read_blob(name))

    def _read_blob(self, name: str) -> Any:
        file = self.folder / "blobs" / f"{name}.pt"
        try:
            return torch.load(file, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise StateError(f"{self.stage}: {file}, named by the training state, is missing or unreadable "
                             f"({exc}); delete {self.folder} (or run with `--params checkpointing.resume=never`) "
                             "to start this stage afresh") from exc

    def save(self, iteration: int, payload: dict[str, Any], complete: bool,
             modules: Iterable[torch.nn.Module] = ()) -> Path:
        """Write the state after ``iteration`` atomically, then drop all but the newest ``keep``.

        ``modules`` are checked for non-finite weights first: a state is only written when it is good.
        """
        check_finite(self.stage, iteration, modules)  # on every rank: they hold the same weights
        file = self.folder / f"state-{iteration:09d}.pt"
        if not distributed.ranks().writer:
            return file
        atomic_torch_save({"format": FORMAT, "version": VERSION, "stage": self.stage, "iteration": int(iteration),
                           "complete": bool(complete), "fingerprint": self.fingerprint, "run_id": self.run_id,
                           "rng": rng_state(), "resumed_from": self.resumed_from, "trained": self.trained,
                           **payload}, file)
        if complete:
            log.info("%s: finished at iteration %d; this process trained %d iteration(s) after iteration %d",
                     self.stage, iteration, self.trained, self.resumed_from)
        for old in self.files()[self.keep:]:
            old.unlink(missing_ok=True)
        return file
