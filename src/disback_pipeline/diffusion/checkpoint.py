"""Checkpoint files of our own: weights + architecture config + metadata.

Files are written atomically (temporary file in the same folder, then
rename) and read with ``weights_only=True`` and strict key matching.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .adapters import ADAPTER_KEY, has_adapters, trained_state
from .backbones import build_network

FORMAT = "disback-checkpoint"
VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, malformed or does not match its network."""


@dataclass
class Checkpoint:
    """A network with the config needed to rebuild it and free-form metadata."""

    net: torch.nn.Module
    config: dict[str, Any]
    metadata: dict[str, Any] = field(default_factory=dict)


def load_state_strict(net: torch.nn.Module, state_dict: dict, source: str) -> None:
    """Load ``state_dict`` into ``net``; fail naming ``source`` on any key mismatch. A network with LoRA adapters
    takes its adapters' tensors only (:func:`.adapters.trained_state`): the rest is the teacher's."""
    adapted = has_adapters(net)
    expected = set(trained_state(net))
    given = set(state_dict)
    missing, unexpected = sorted(expected - given), sorted(given - expected)
    if missing or unexpected:
        lora = sum(ADAPTER_KEY in k for k in given)
        hint = ("Its tensors are LoRA adapters and the network trains every weight, or the reverse: record the "
                "path and train with the same shared.trained_nets.lora_rank." if adapted != (lora > 0) else
                "Was it saved from a different architecture? Check the network config.")
        raise CheckpointError(
            f"{source}: state_dict does not match the network "
            f"(missing keys: {missing[:10]}{' ...' if len(missing) > 10 else ''}; "
            f"unexpected keys: {unexpected[:10]}{' ...' if len(unexpected) > 10 else ''}). {hint}"
        )
    try:
        net.load_state_dict(state_dict, strict=not adapted)
    except RuntimeError as exc:  # shape mismatches
        lines = [ln.strip() for ln in str(exc).splitlines() if "size mismatch" in ln]
        raise CheckpointError(
            f"{source}: the weights do not fit the network its config describes ({len(lines)} size mismatches, "
            f"first: {lines[0] if lines else exc}). Was it saved from a different architecture or for other data? "
            "Re-create it, or point the parameter at a file that matches."
        ) from exc


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """torch.save to a temporary file beside ``path``, then rename over it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def checkpoint_payload(state_dict: dict, config: dict[str, Any], metadata: dict[str, Any]) -> dict:
    """What a checkpoint file holds: header, architecture config, weights, metadata."""
    return {"format": FORMAT, "version": VERSION, "network": dict(config),
            "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()}, "metadata": dict(metadata)}


def save_checkpoint(ckpt: Checkpoint, path: str | Path) -> None:
    atomic_torch_save(checkpoint_payload(ckpt.net.state_dict(), ckpt.config, ckpt.metadata), path)


def read_payload(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint file {path} does not exist; train it first (e.g. `kedro run "
            "--pipelines=teacher`) or point the parameter at an existing file"
        )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors of many kinds
        raise CheckpointError(f"{path}: not a readable checkpoint, truncated or corrupt ({exc}); restore it "
                              "(`dvc checkout`, or copy it again) or re-create it by re-running the pipeline "
                              "that writes it") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(
            f"{path}: not a disback-pipeline checkpoint (no '{FORMAT}' header). EDM snapshot "
            "pickles must be converted first."
        )
    for key in ("network", "state_dict", "metadata"):
        if key not in payload:
            raise CheckpointError(f"{path}: checkpoint lacks its '{key}' entry")
    return payload


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> Checkpoint:
    """Rebuild the network from its stored config and load its weights strictly."""
    payload = read_payload(path)
    try:
        net = build_network(payload["network"])
    except ValueError as exc:
        raise CheckpointError(f"{path}: {exc}") from exc
    load_state_strict(net, payload["state_dict"], str(path))
    return Checkpoint(net.to(device).eval(), dict(payload["network"]), dict(payload["metadata"]))
