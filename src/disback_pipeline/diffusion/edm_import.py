"""Bring EDM teachers in: constructor arguments -> our network config, and a safe
reader for EDM snapshot pickles that executes nothing outside an allow-list.

An EDM snapshot (``network-snapshot-*.pkl``) stores each network as a call of
``torch_utils.persistence._reconstruct_persistent_obj`` whose argument holds
the class's Python source (EDM's own unpickling executes it), the class name
and the object's ``__dict__``. We never run that source: a restricted
unpickler maps the persistence call and the torch/numpy rebuild helpers to
inert stand-ins, refuses every other global, and the state_dict and
constructor arguments are read from the recorded ``__dict__``s.
:func:`load_edm_snapshot` turns a snapshot into our checkpoint (used by the
teacher stage); ``python -m disback_pipeline.import_edm`` is the command.
"""

from __future__ import annotations

import collections
import hashlib
import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .backbones import build_network
from .checkpoint import Checkpoint, load_state_strict

PRECOND_KEYS = {"img_resolution", "img_channels", "label_dim", "use_fp16", "sigma_min", "sigma_max",
                "sigma_data", "model_type"}
MODEL_TYPES = {"SongUNet": "songunet", "DhariwalUNet": "dhariwalunet"}


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle asks for something outside the allow-list."""


def config_from_edm_kwargs(init_kwargs: dict[str, Any]) -> dict[str, Any]:
    """Our network config for EDM's ``EDMPrecond(**init_kwargs)``."""
    model_type = init_kwargs.get("model_type", "DhariwalUNet")
    if model_type not in MODEL_TYPES:
        raise ValueError(f"unsupported EDM model_type {model_type!r}; supported: {sorted(MODEL_TYPES)}")
    cfg = {"backbone": MODEL_TYPES[model_type], "sigma_data": float(init_kwargs.get("sigma_data", 0.5)),
           "label_dim": int(init_kwargs.get("label_dim", 0)), "img_resolution": int(init_kwargs["img_resolution"]),
           "in_channels": int(init_kwargs["img_channels"]), "out_channels": int(init_kwargs["img_channels"])}
    for key, value in init_kwargs.items():
        if key not in PRECOND_KEYS:
            cfg[key] = list(value) if isinstance(value, tuple) else value
    return cfg


# --- restricted unpickling -------------------------------------------------------------------

class _PersistentRecord:
    """What EDM's persistence call would rebuild, kept as data: class name and __dict__."""

    def __init__(self, meta: dict):
        if not isinstance(meta, dict) or meta.get("type") != "class":
            raise UnsafePickleError("persistent object record is not a class record")
        self.class_name = meta.get("class_name")
        self.module_src_len = len(meta.get("module_src") or "")
        self.state = meta.get("state") or {}

    def __reduce__(self):  # pragma: no cover - never re-pickled
        raise TypeError("records are read-only")


class _ModuleRecord:
    """Stand-in for ``torch.nn.ModuleDict`` (the only torch.nn class an EDM snapshot names):
    created empty, its pickled ``__dict__`` is kept as data."""

    def __setstate__(self, state):
        self.state = state if isinstance(state, dict) else {}


def _load_storage_bytes(data: bytes):
    """A storage saved as a nested torch.save blob, read with weights_only=True."""
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def _rebuild_parameter(data, requires_grad, backward_hooks, *args):
    return data


def _numpy_scalar(dtype, raw=None):
    return np.frombuffer(raw, dtype=dtype)[0].item() if raw is not None else dtype.type(0).item()


#: (module, name) -> what it is bound to while unpickling. Anything else is refused.
ALLOWED: dict[tuple[str, str], Any] = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _PersistentRecord,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _load_storage_bytes,
    ("torch.nn.modules.container", "ModuleDict"): _ModuleRecord,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        try:
            return ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"refusing to load global {module}.{name}: it is not on the allow-list of an EDM snapshot "
                "(tensors, storages, OrderedDict, numpy scalars, EDM persistence records). The file may be "
                "malicious or of another kind; nothing from it was executed."
            ) from None

    def persistent_load(self, pid):
        raise UnsafePickleError(f"refusing persistent id {pid!r}: EDM snapshots do not use them")


def read_snapshot(path: str | Path, key: str = "ema") -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """EDM constructor kwargs and the EDM-named state_dict of network ``key`` in a snapshot pickle."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"EDM snapshot {path} does not exist. Download the network-snapshot .pkl on a machine with network "
            "access (EDM's published checkpoints), copy it to this path or point teacher.checkpoint_path at it; "
            "nothing is downloaded at run time."
        )
    with open(path, "rb") as fh:
        try:
            data = _RestrictedUnpickler(fh).load()
        except UnsafePickleError:
            raise
        except (pickle.UnpicklingError, EOFError, ValueError, IndexError) as exc:
            raise ValueError(f"{path}: not a pickle, or a truncated one ({exc}); copy the EDM network-snapshot "
                             ".pkl again, or point teacher.checkpoint_path at one of our .pt checkpoints") from exc
    if not isinstance(data, dict) or key not in data:
        raise ValueError(f"{path}: expected an EDM snapshot dict with key {key!r}, "
                         f"found {sorted(data) if isinstance(data, dict) else type(data).__name__}; "
                         "teacher.checkpoint_path must name an EDM network-snapshot-*.pkl or one of our .pt "
                         "checkpoints")
    record = data[key]
    if not isinstance(record, _PersistentRecord):
        raise ValueError(f"{path}: {key!r} is not an EDM persistent network record")
    if record.class_name != "EDMPrecond":
        raise ValueError(f"{path}: {key!r} is a {record.class_name}, only EDMPrecond snapshots are supported")
    kwargs = dict(record.state.get("_init_kwargs") or {})
    if record.state.get("_init_args"):
        raise ValueError(f"{path}: positional constructor arguments are not supported")
    state: dict[str, torch.Tensor] = collections.OrderedDict()
    _collect(record.state, "", state)
    return kwargs, state


def _collect(obj_state: dict, prefix: str, out: dict) -> None:
    for name, tensor in (obj_state.get("_parameters") or {}).items():
        if tensor is not None:
            out[prefix + name] = tensor
    non_persistent = obj_state.get("_non_persistent_buffers_set") or set()
    for name, tensor in (obj_state.get("_buffers") or {}).items():
        if tensor is not None and name not in non_persistent:
            out[prefix + name] = tensor
    for name, child in (obj_state.get("_modules") or {}).items():
        if child is None:
            continue
        child_state = child.state if isinstance(child, (_PersistentRecord, _ModuleRecord)) else None
        if child_state is None:
            raise UnsafePickleError(f"unexpected module object {type(child).__name__} at {prefix + name}")
        _collect(child_state, f"{prefix}{name}.", out)


def load_edm_snapshot(path: str | Path, network: str = "ema") -> Checkpoint:
    """Our network, built from the snapshot's constructor arguments, with its weights loaded strictly."""
    kwargs, state = read_snapshot(path, network)
    config = config_from_edm_kwargs(kwargs)
    net = build_network(config)
    load_state_strict(net, state, f"{path} ({network})")
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    meta = {"role": "teacher", "source": "edm-snapshot", "source_file": Path(path).name, "source_sha256": digest,
            "network": network, "edm_init_kwargs": {k: v for k, v in kwargs.items()
                                                    if isinstance(v, (int, float, str, bool, list))}}
    return Checkpoint(net.eval(), config, meta)


@torch.no_grad()
def parity_error(net: torch.nn.Module, io_file: str | Path) -> float:
    io = torch.load(io_file, map_location="cpu", weights_only=True)
    out = net.eval()(io["x"], io["sigma"], io.get("class_labels"))
    return float((out - io["denoised"]).abs().max())
