"""Teacher pre-training: network config from the data, then EDM DSM training."""

from __future__ import annotations

from typing import Any

from .backbones import build_network
from .checkpoint import Checkpoint, load_checkpoint
from .config import TrainingConfig, from_dict
from .data import BatchStream, DataSource
from .state import StateStore
from .training import StepCallback, seed_everything, select_device, train_dsm

BACKBONES = ("mlp", "unet", "songunet", "dhariwalunet")


def flatten_network(network: dict[str, Any]) -> dict[str, Any]:
    """The flat architecture config of the selected backbone.

    In the YAML each backbone's arguments sit under its own name
    (``{backbone: mlp, sigma_data: 0.5, mlp: {...}, unet: {...}}``) so that an
    environment can switch backbone by overriding, without inheriting the other
    backbone's arguments; only the selected set is used. A flat dict (as stored
    in checkpoints) is returned as it is.
    """
    backbone = network.get("backbone")
    flat = {k: v for k, v in network.items() if k not in BACKBONES}
    flat.update(network.get(backbone) or {})
    return flat


def network_config_for(source: DataSource, network: dict[str, Any]) -> dict[str, Any]:
    """Complete a network config with the shape and label count of the data."""
    cfg = flatten_network(network)
    cfg["label_dim"] = source.label_dim
    if cfg.get("backbone") == "mlp":
        if len(source.shape) != 1:
            raise ValueError(
                f"backbone 'mlp' needs vector data, but {source.name} has shape {source.shape}; "
                "use backbone 'unet' for images"
            )
        cfg["dim"] = source.shape[0]
    elif cfg.get("backbone") in ("unet", "songunet", "dhariwalunet"):
        if len(source.shape) != 3:
            raise ValueError(f"backbone {cfg['backbone']!r} needs images, but {source.name} has shape {source.shape}")
        cfg["in_channels"], cfg["img_resolution"] = source.shape[0], source.shape[1]
        if cfg["backbone"] != "unet":
            cfg["out_channels"] = source.shape[0]
    return cfg


def pretrain_teacher(source: DataSource, network: dict[str, Any], training: TrainingConfig | dict[str, Any],
                     seed: int, device: str = "auto", bf16: bool = False, on_step: StepCallback | None = None,
                     store: StateStore | None = None) -> tuple[Checkpoint, list[dict]]:
    """Train a teacher from scratch (or continue from ``store``'s newest state); returns its EMA checkpoint
    and the loss history. Batches come from one seeded stream (a streamed image folder is decoded by its
    ``workers`` processes)."""
    cfg = training if isinstance(training, TrainingConfig) else from_dict(TrainingConfig, training, "teacher.training")
    dev = select_device(device)
    seed_everything(seed)
    config = network_config_for(source, network)
    net = build_network(config)
    batches = BatchStream(source, cfg.batch_size, seed)
    ema_net, history = train_dsm(net, batches, cfg, device=dev, bf16=bf16, desc="teacher pre-training",
                                 on_step=on_step, store=store)
    meta = {"role": "teacher", "step": cfg.steps, "dataset": source.name, "seed": int(seed)}
    return Checkpoint(ema_net.cpu(), config, meta), history


def load_teacher(path: str) -> Checkpoint:
    """A teacher from a file: one of our checkpoints (.pt), or an EDM snapshot (.pkl) read without executing
    its code."""
    if str(path).endswith(".pkl"):
        from .edm_import import load_edm_snapshot

        return load_edm_snapshot(path)
    return load_checkpoint(path)


def check_teacher_fits(config: dict[str, Any], source: DataSource, where: str = "teacher") -> None:
    """Fail clearly when a network was built for other data than ``source`` (a loaded teacher, or a
    checkpoint copied from another environment's tree); the shapes tell them apart."""
    shape = (config["dim"],) if "dim" in config else (config.get("in_channels"), config.get("img_resolution"),
                                                     config.get("img_resolution"))
    if tuple(shape) != tuple(source.shape) or int(config.get("label_dim", 0)) != source.label_dim:
        raise ValueError(
            f"the {where} was built for data of shape {tuple(shape)} with label_dim {config.get('label_dim', 0)}, "
            f"but the data ({source.name}) has shape {tuple(source.shape)} and label_dim {source.label_dim}. "
            "Point teacher.checkpoint_path at a teacher for these data, or train one: `kedro run --pipelines=distill "
            "--env ENV` (each environment keeps its own teacher under data/<env>/)."
        )
