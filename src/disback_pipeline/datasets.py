"""Kedro datasets for the project's own files: checkpoints, the degradation path,
the FID feature extractor and reference statistics."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch
from kedro.io import AbstractDataset

from .diffusion.checkpoint import (
    Checkpoint,
    CheckpointError,
    atomic_torch_save,
    load_checkpoint,
    load_state_strict,
    save_checkpoint,
)
from .diffusion.path import DegradationPath, load_path, save_path
from .evaluation.features import DomainClassifier, FeatureSpec


class _LocalFileDataset(AbstractDataset):
    """Common part of the project's single-file datasets."""

    def __init__(self, filepath: str, metadata: dict[str, Any] | None = None):
        self._filepath = PurePosixPath(filepath)
        self.metadata = metadata

    def _exists(self) -> bool:
        return Path(self._filepath).is_file()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath)}


class CheckpointDataset(_LocalFileDataset):
    """One checkpoint file (weights + architecture config + metadata).

    Saved atomically; loaded with ``weights_only=True`` and strict keys.
    """

    def load(self) -> Checkpoint:
        return load_checkpoint(self._filepath)

    def save(self, data: Checkpoint) -> None:
        save_checkpoint(data, self._filepath)



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


class FeatureExtractorDataset(_LocalFileDataset):
    """The FID feature extractor: kind, settings and (for ``domain``) its weights."""

    def load(self) -> FeatureSpec:
        path = Path(self._filepath)
        if not path.is_file():
            raise CheckpointError(f"{path} does not exist; run `kedro run --pipelines=reference` first")
        payload = torch.load(path, map_location="cpu", weights_only=True)
        spec = FeatureSpec(payload["kind"], config=payload.get("config"), test_accuracy=payload.get("test_accuracy"),
                           inception_path=payload.get("inception_path"), mode=payload.get("mode", "clean"))
        if spec.kind == "domain":
            spec.net = DomainClassifier(**spec.config)
            load_state_strict(spec.net, payload["state_dict"], str(path))
            spec.net.eval()
        return spec

    def save(self, data: FeatureSpec) -> None:
        payload = {"kind": data.kind, "config": data.config, "test_accuracy": data.test_accuracy,
                   "inception_path": data.inception_path, "mode": data.mode}
        if data.net is not None:
            payload["state_dict"] = {k: v.detach().cpu() for k, v in data.net.state_dict().items()}
        atomic_torch_save(payload, self._filepath)



class NpzDataset(_LocalFileDataset):
    """A dict of numpy arrays in one .npz file (written atomically)."""

    def load(self) -> dict:
        with np.load(Path(self._filepath), allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}

    def save(self, data: dict) -> None:
        path = Path(self._filepath)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".npz", dir=path.parent)
        os.close(fd)
        try:
            np.savez(tmp, **{k: np.asarray(v) for k, v in data.items()})
            os.replace(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)

