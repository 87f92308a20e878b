"""Resuming runs: each stage's training-state store, and the MLflow run a resumed `kedro run` continues.

The nodes build a :class:`~disback_pipeline.diffusion.state.StateStore` per
loop with :func:`state_store`. The project hook (:mod:`.hooks`) keeps a
marker, ``<checkpointing.dir>/mlflow_run.json``, while a run is in progress;
when the same command starts again with the same parameters after a kill, it
asks MLflow to continue that run instead of opening a new one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from .diffusion.config import CheckpointingConfig
from .diffusion.state import StateStore, fingerprint
from .parameters import typed

log = logging.getLogger(__name__)

MARKER = "mlflow_run.json"


def _run_id() -> str | None:
    try:
        import mlflow
    except ImportError:  # pragma: no cover - mlflow is a dependency
        return None
    run = mlflow.active_run()
    return None if run is None else run.info.run_id


def state_store(checkpointing: CheckpointingConfig | dict[str, Any] | None, folder: str, stage: str, every: int,
                **inputs: Any) -> StateStore:
    """The store of one loop's states under ``checkpointing.dir``/``folder``; ``inputs`` (settings, weight
    hashes) make its fingerprint."""
    cfg = typed(checkpointing or {}, CheckpointingConfig, "checkpointing")
    return StateStore(Path(cfg.dir) / folder, stage, every, fingerprint(**inputs), cfg.keep, cfg.resume,
                      run_id=_run_id())


def params_digest(params: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()


class RunLock:
    """``<dir>/.lock``, held (flock) for the whole `kedro run`: a second run in the same environment stops at once
    instead of writing the same training states and outputs; other environments have their own folder."""

    def __init__(self, folder: str | Path):
        self.file = Path(folder) / ".lock"
        self._fh = None

    def acquire(self) -> None:
        import fcntl

        self.unlock()  # a lock left by a run of this process that Ctrl-C stopped before its hooks ended it
        self.file.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.file, "a+")  # noqa: SIM115 - held until unlock()
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            fh.close()
            raise RuntimeError(
                f"another `kedro run` ({holder}) is using {self.file.parent}: wait for it to finish, or run this one "
                "in another environment (--env), which writes its own data/<env>/ tree"
            ) from exc
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()}")
        fh.flush()
        self._fh = fh

    def unlock(self) -> None:
        if self._fh is not None:
            import fcntl

            fcntl.flock(self._fh, fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None


class RunMarker:
    """``<dir>/mlflow_run.json``: the MLflow run of an unfinished `kedro run` and what it ran (or, in a compare
    arm's folder, the arm's child run and its parent)."""

    def __init__(self, folder: str | Path):
        self.file = Path(folder) / MARKER

    def read(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.file.read_text())
        except (OSError, ValueError):
            return None

    def write(self, run_id: str, **info: Any) -> None:
        """Name the run (and what identifies it: pipelines and parameter digest, or a child run's parent)."""
        self.file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"run_id": run_id, **info}, indent=2))
        os.replace(tmp, self.file)

    def clear(self) -> None:
        self.file.unlink(missing_ok=True)

    def resumable_run(self, pipelines: list[str], digest: str) -> str | None:
        """The run id to continue: the marker's, when it names the same pipelines and parameters and the run
        still exists (not deleted) in the store."""
        marker = self.read()
        if not marker or marker.get("pipelines") != pipelines or marker.get("params") != digest:
            return None
        import mlflow

        try:
            run = mlflow.MlflowClient().get_run(marker["run_id"])
        except Exception:  # deleted for good, or another store
            return None
        return None if run.info.lifecycle_stage == "deleted" else run.info.run_id
