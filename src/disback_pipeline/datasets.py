"""Kedro datasets for the project's own checkpoint files."""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

from kedro.io import AbstractDataset

from .diffusion.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from .diffusion.path import DegradationPath, load_path, save_path


class CheckpointDataset(AbstractDataset[Checkpoint, Checkpoint]):
    """One checkpoint file (weights + architecture config + metadata).

    Saved atomically; loaded with ``weights_only=True`` and strict keys.
    """

    def __init__(self, filepath: str, metadata: dict[str, Any] | None = None):
        self._filepath = PurePosixPath(filepath)
        self.metadata = metadata

    def load(self) -> Checkpoint:
        return load_checkpoint(self._filepath)

    def save(self, data: Checkpoint) -> None:
        save_checkpoint(data, self._filepath)

    def _exists(self) -> bool:
        return Path(self._filepath).is_file()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath)}


class DegradationPathDataset(AbstractDataset[DegradationPath, DegradationPath]):
    """The degradation path folder: ``step_<key>.pt`` files plus ``manifest.json``.

    Loading reads the manifest only; each node's weights are read (and their
    hash checked) when the backtracking loop switches to it.
    """

    def __init__(self, path: str, metadata: dict[str, Any] | None = None):
        self._path = PurePosixPath(path)
        self.metadata = metadata

    def load(self) -> DegradationPath:
        return load_path(self._path)

    def save(self, data: DegradationPath) -> None:
        save_path(data, self._path)

    def _exists(self) -> bool:
        return (Path(self._path) / "manifest.json").is_file()

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path)}
