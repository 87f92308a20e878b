"""Kedro datasets for the project's own checkpoint files."""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

from kedro.io import AbstractDataset

from .diffusion.checkpoint import Checkpoint, load_checkpoint, save_checkpoint


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
