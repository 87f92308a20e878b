"""Teacher pre-training: network config from the data, then EDM DSM training (:func:`train_dsm`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from . import distributed
from .backbones import build_network
from .checkpoint import Checkpoint, load_checkpoint
from .config import TrainingConfig, from_dict
from .data import BatchStream, DataSource
from .divergence import Guard
from .losses import EDMLoss
from .state import StateStore
from .training import (
    EMA,
    StatusLine,
    StepCallback,
    lr_lambda,
    make_adam,
    mean_loss,
    progress,
    seed_everything,
    select_device,
    train_step,
)

BACKBONES = ("mlp", "unet", "songunet", "dhariwalunet")
READ_EVERY = 1000  # steps whose losses may wait on the device before they are read (bounds the pending list)


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


def load_teacher(path: str, diffusers: bool = False) -> Checkpoint:
    """A teacher from a file: one of our checkpoints (.pt), or an EDM snapshot (.pkl) read without executing
    its code; with ``diffusers``, the UNet and scheduler of a diffusers model folder, read offline."""
    if diffusers:
        from .diffusers_teacher import load_diffusers_teacher, network_config

        net = load_diffusers_teacher(path)
        return Checkpoint(net, network_config(net), {"role": "teacher", "diffusers_folder": str(path)})
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


class _PendingLosses:
    """Per-step losses kept on the device until they are read, all at once (one host synchronisation, which also
    reads the guard's flags); then they become history records and ``on_step`` calls, in order."""

    def __init__(self, guard: Guard, history: list[dict], on_step: StepCallback | None):
        self.guard, self.history, self.on_step = guard, history, on_step
        self.rows: list[tuple[int, torch.Tensor, float]] = []

    def add(self, step: int, loss: torch.Tensor, seconds: float) -> None:
        self.rows.append((step, loss.detach(), seconds))

    def read(self) -> None:
        self.guard.check()
        values = torch.stack([loss for _, loss, _ in self.rows]).tolist() if self.rows else []
        for (step, _, seconds), value in zip(self.rows, values):
            record = {"step": step, "loss": value, "wall_clock_s": seconds}
            self.history.append(record)
            if self.on_step is not None:
                self.on_step(step, record)
        self.rows.clear()


def train_dsm(net: torch.nn.Module, batches: Callable[[int], tuple], cfg: TrainingConfig,
              device: torch.device | str = "cpu", bf16: bool = False, desc: str = "dsm",
              on_step: StepCallback | None = None, store: StateStore | None = None
              ) -> tuple[torch.nn.Module, list[dict]]:
    """Train ``net`` with the EDM DSM loss on batches from ``batches(n) -> (x0, labels)`` (a
    :class:`~.data.BatchStream`, or any such function).

    Returns the EMA network and a history of per-step records
    ``{step, loss, wall_clock_s}``. ``on_step(step, record)`` is called after
    every step (e.g. to log metrics; on resume, for the restored steps too); a
    status line is logged every ``cfg.log_every`` steps. With a ``store`` the
    full training state is saved every ``cfg.checkpoint_every`` steps and at
    the end, and a run continues from the newest state it finds.
    """
    device = torch.device(device)
    steps = cfg.steps
    loss_fn = EDMLoss(cfg.P_mean, cfg.P_std, net.sigma_data)
    net.to(device).train()
    ema = EMA(net, cfg.ema_decay, cfg.ema_rampup)
    opt = make_adam(net.parameters(), cfg.lr, cfg.betas)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg.lr_schedule, steps, cfg.warmup_steps))
    if not distributed.ranks().writer:
        on_step = None  # rank 0 reports
    history, first, clock = _restore(store, net, ema, opt, sched)
    if hasattr(batches, "start"):  # a seeded stream (BatchStream) continues at the step to run next
        batches.start(first)
        for record in history if on_step is not None else ():
            on_step(record["step"], record)
    status = StatusLine(desc, steps, cfg.log_every)
    start = time.perf_counter() - clock
    guard = Guard.for_device(desc, device)
    pending = _PendingLosses(guard, history, on_step)
    with progress(steps, desc) as bar:
        bar.update(first - 1)
        for step in range(first, steps + 1):
            x0, labels = batches(cfg.batch_size)
            x0 = x0.to(device)
            labels = None if labels is None else labels.to(device)
            loss = train_step(opt, mean_loss, loss_fn, net, x0, labels, device=device, bf16=bf16,
                              grad_clip=cfg.grad_clip, where=guard.at(step))
            sched.step()
            ema.update(net, step)
            pending.add(step, loss, time.perf_counter() - start)
            bar.update(1)
            save = store is not None and store.tick(step, steps)
            if save or status.due(step) or step == steps or len(pending.rows) >= READ_EVERY:
                pending.read()
                status(step, loss=history[-1]["loss"])
            if save:
                store.save(step, {"modules": {"net": net.state_dict(), "ema": ema.net.state_dict()},
                                  "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                                  "history": history, "clock": history[-1]["wall_clock_s"]},
                           complete=step == steps, modules=(net, ema.net))
    net.eval()
    return ema.net, history


def _restore(store: StateStore | None, net, ema: EMA, opt, sched) -> tuple[list[dict], int, float]:
    """The history, the step to run next and the clock: from ``store``'s newest state (loaded into the
    networks, optimiser and schedule), or a fresh start."""
    state = store.begin() if store is not None else None
    if state is None:
        return [], 1, 0.0
    net.load_state_dict(state["modules"]["net"])
    ema.net.load_state_dict(state["modules"]["ema"])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    return list(state["history"]), state["iteration"] + 1, float(state["clock"])
