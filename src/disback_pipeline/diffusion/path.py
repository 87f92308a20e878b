"""The degradation path: checkpoints P_0 (teacher) ... P_N kept on disk or in memory.

On disk the path is a folder of our checkpoint files ``step_<zero-padded>.pt``
plus ``manifest.json`` (order, steps, sha256 hashes, distances, stage-1 cost).
Nodes are loaded one at a time and strictly into an existing network.
Choosing which stage-1 snapshots become nodes (:func:`candidate_steps`,
:func:`pick_by_distance`, measured on a :class:`Probe`) lives here too.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .checkpoint import CheckpointError, atomic_torch_save, checkpoint_payload, load_state_strict, read_payload

MANIFEST = "manifest.json"


@dataclass
class Probe:
    """A fixed noised batch on which denoisers are compared."""

    x: torch.Tensor
    sigma: torch.Tensor
    labels: torch.Tensor | None

    @torch.no_grad()
    def distance(self, a: torch.nn.Module, b: torch.nn.Module) -> float:
        """Mean squared difference of the two denoisers' outputs (per element)."""
        return float(((a(self.x, self.sigma, self.labels) - b(self.x, self.sigma, self.labels)) ** 2).mean())


def candidate_steps(k1: int, n_nodes: int, spacing: str, candidates: int) -> list[int]:
    """Stage-1 steps whose weights are kept: the N+1 node steps (``iterations``),
    or ``candidates`` + 1 evenly spaced snapshots to choose from (``distance``)."""
    if spacing == "iterations":
        return sorted({round(i * k1 / n_nodes) for i in range(n_nodes + 1)})
    return sorted({round(i * k1 / candidates) for i in range(candidates + 1)})


def pick_by_distance(steps: list[int], dist_final: dict[int, float], n_nodes: int) -> list[int]:
    """P_0, P_N and N-1 nodes where the distance to P_N has dropped by equal shares.

    ``dist_final[s]`` is the denoiser distance of snapshot ``s`` to the last
    one. Node i aims at the level (1 - i/N) x the distance of P_0; each node
    comes after the previous one, and enough snapshots stay free for the rest.
    """
    total = dist_final[steps[0]]
    chosen = [steps[0]]
    for i in range(1, n_nodes):
        level = total * (1 - i / n_nodes)
        pool = [s for s in steps if chosen[-1] < s < steps[-1]]
        remaining = n_nodes - i  # nodes still to place after this one, P_N included
        pool = pool[: max(1, len(pool) - (remaining - 1))]  # leave snapshots for the later nodes
        if not pool:
            break
        chosen.append(min(pool, key=lambda s: abs(dist_final[s] - level)))
    chosen.append(steps[-1])
    return chosen


def step_key(step: int, width: int = 6) -> str:
    return f"{int(step):0{width}d}"


@dataclass
class PathNode:
    key: str
    step: int
    distance_to_teacher: float = float("nan")
    distance_to_final: float = float("nan")
    state_dict: dict[str, torch.Tensor] | None = None  # in memory, or
    file: Path | None = None                            # on disk
    sha256: str | None = None


@dataclass
class DegradationPath:
    """Ordered path nodes with the network config they share."""

    config: dict[str, Any]
    nodes: list[PathNode] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def keys(self) -> list[str]:
        return [n.key for n in self.nodes]

    def node(self, key: str) -> PathNode:
        for n in self.nodes:
            if n.key == key:
                return n
        raise KeyError(f"no node {key!r} in the degradation path (keys: {self.keys})")

    def load_into(self, net: torch.nn.Module, key: str) -> None:
        """Load node ``key`` strictly into ``net`` (fails on any key mismatch)."""
        node = self.node(key)
        if node.state_dict is not None:
            load_state_strict(net, node.state_dict, f"degradation path node {key}")
            return
        load_state_strict(net, _read_node(node), str(node.file))

    def in_memory(self) -> DegradationPath:
        """The same path with every node's weights read (each file checked against its sha256 first): what
        travels to other machines, which do not see this machine's files."""
        nodes = [n if n.state_dict is not None else dataclasses.replace(n, state_dict=_read_node(n), file=None)
                 for n in self.nodes]
        return DegradationPath(self.config, nodes, dict(self.metadata))


def _read_node(node: PathNode) -> dict[str, torch.Tensor]:
    """A node's weights from its file, after checking the file against the manifest's sha256."""
    if node.file is None:
        raise CheckpointError(f"degradation path node {node.key} has neither weights nor a file")
    if node.sha256 and _sha256(node.file) != node.sha256:
        raise CheckpointError(
            f"{node.file}: sha256 differs from the manifest; the path folder was modified. "
            "Re-run the degradation pipeline (or `dvc checkout`) to restore it."
        )
    return read_payload(node.file)["state_dict"]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_path(path: DegradationPath, folder: str | Path) -> None:
    """Write the path to ``folder`` atomically: a sibling temp folder, then a swap."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        entries = []
        for node in path.nodes:
            state = node.state_dict
            if state is None:
                state = read_payload(node.file)["state_dict"]
            fname = f"step_{node.key}.pt"
            meta = {"role": "degradation_path", "key": node.key, "step": node.step}
            atomic_torch_save(checkpoint_payload(state, path.config, meta), tmp / fname)
            entries.append({"key": node.key, "step": node.step, "file": fname, "sha256": _sha256(tmp / fname),
                            "distance_to_teacher": node.distance_to_teacher,
                            "distance_to_final": node.distance_to_final})
        manifest = {"order": [e["key"] for e in entries], "nodes": entries, "network": path.config,
                    "metadata": path.metadata}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        old = None
        if folder.exists():
            old = folder.with_name(f".{folder.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(folder, old)
        os.replace(tmp, folder)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _inside(folder: Path, name: str, manifest_file: Path) -> Path:
    """The file a manifest entry names, refused unless it lies inside ``folder`` (no absolute path, no ``..``, no
    symlink that leads out): a path folder from elsewhere must not make the run read other files."""
    file = folder / name
    outside = Path(name).is_absolute() or ".." in Path(name).parts
    if not outside:
        try:
            file.resolve().relative_to(folder.resolve())
        except ValueError:
            outside = True
    if outside:
        raise CheckpointError(f"{manifest_file}: entry {name!r} points outside {folder}; a path's manifest may only "
                              "name files in its own folder. Re-run the degradation pipeline (or `dvc checkout`) "
                              "to restore the path")
    return file


def load_path(folder: str | Path) -> DegradationPath:
    """Read the manifest; node weights stay on disk until :meth:`load_into`."""
    folder = Path(folder)
    manifest_file = folder / MANIFEST
    if not manifest_file.is_file():
        raise CheckpointError(
            f"{folder}: no {MANIFEST}; run the degradation pipeline first "
            "(`kedro run --pipelines=degradation`) or `dvc pull` the path"
        )
    manifest = json.loads(manifest_file.read_text())
    nodes = []
    for e in manifest["nodes"]:
        file = _inside(folder, e["file"], manifest_file)
        if not file.is_file():
            raise CheckpointError(f"{folder}: manifest lists {e['file']} but the file is missing; re-run the "
                                  "degradation pipeline (or `dvc checkout`) to restore the path")
        if not e.get("sha256"):
            raise CheckpointError(f"{manifest_file}: node {e['key']} has no sha256, so its file cannot be checked; "
                                  "re-run the degradation pipeline to write a complete manifest")
        nodes.append(PathNode(e["key"], int(e["step"]), e["distance_to_teacher"], e["distance_to_final"],
                              file=file, sha256=e["sha256"]))
    if [n.key for n in nodes] != manifest["order"]:
        raise CheckpointError(f"{manifest_file}: node order does not match its entries")
    return DegradationPath(manifest["network"], nodes, manifest.get("metadata", {}))
