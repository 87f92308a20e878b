"""Stage 1 of DisBack: degradation recording.

A copy of the teacher is fine-tuned with the teacher's own DSM loss on samples
of the frozen, untrained one-step generator; its snapshots form the path
P_0 (teacher) ... P_N, chosen by :mod:`.path`'s node selection.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import torch

from . import distributed
from .adapters import frozen_copy, load_trained_state, trainable_copy, trained_parameters, trained_state
from .checkpoint import Checkpoint
from .config import DegradationConfig
from .data import DataSource
from .divergence import Guard
from .history import history_row
from .losses import EDMLoss, lognormal_sigma
from .path import DegradationPath, PathNode, Probe, candidate_steps, pick_by_distance, step_key
from .sampling import draw_generator_batch
from .state import StateStore
from .teacher import check_teacher_fits
from .training import (
    StatusLine,
    autocast,
    make_adam,
    mean_loss,
    progress,
    seed_everything,
    select_device,
    train_step,
)

log = logging.getLogger(__name__)

RecordCallback = Callable[[dict], None]


def make_probe(generator, source: DataSource, s_init: float, n: int, seed: int, device,
               P_mean: float = -1.2, P_std: float = 1.2) -> Probe:
    """A noised batch of the generator's samples, drawn from its own seed (the global RNG is restored)."""
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    with distributed.whole():  # every rank measures the path on the same whole probe
        x0, labels = draw_generator_batch(generator, source, n, s_init, device)
        sigma = lognormal_sigma(n, P_mean, P_std, device)
    x = x0 + sigma.reshape((-1,) + (1,) * (x0.ndim - 1)) * torch.randn_like(x0)
    torch.random.set_rng_state(state)
    return Probe(x, sigma, labels)


def record_degradation(teacher: Checkpoint, source: DataSource, cfg: DegradationConfig, s_init: float,
                       on_record: RecordCallback | None = None,
                       store: StateStore | None = None) -> tuple[DegradationPath, list[dict]]:
    """Stage 1: fine-tune a teacher copy on samples of the frozen initial generator.

    Returns the path P_0 (unmodified teacher) ... P_N (end of fine-tuning) and a
    history of DSM losses. ``cfg.spacing`` = ``iterations`` places the nodes
    evenly in steps; ``distance`` places them where the denoiser distance to
    P_N has dropped by equal shares (among ``cfg.candidates`` snapshots).
    With a ``store`` the fine-tuning state (weights, optimiser, snapshots so
    far, RNGs, history, clock) is saved every ``cfg.checkpoint_every`` steps
    and a run continues from the newest one.
    """
    check_teacher_fits(teacher.config, source)
    dev = select_device(cfg.device)
    seed_everything(cfg.seed)
    generator = frozen_copy(teacher.net, cfg.trained_nets, dev, adapters=False)  # G_0: the teacher at s_init
    snapshots, history, start = _fine_tune(teacher, generator, source, cfg, s_init, dev, on_record, store)
    nodes = _choose_nodes(teacher, generator, source, cfg, s_init, dev, snapshots)
    stage1_seconds = time.perf_counter() - start  # fine-tuning and node selection: all of stage 1's cost
    meta = {"s_init": float(s_init), "k1": cfg.k1, "n_nodes": len(nodes) - 1, "spacing": cfg.spacing,
            "seed": cfg.seed, "lora_rank": cfg.trained_nets.lora_rank, "stage1_iterations": cfg.k1,
            "stage1_seconds": stage1_seconds, "dataset": source.name}
    log.info("degradation path: %s", ", ".join(f"{n.key} (to teacher {n.distance_to_teacher:.4g}, "
                                                f"to end {n.distance_to_final:.4g})" for n in nodes))
    return DegradationPath(dict(teacher.config), nodes, meta), history


def _fine_tune(teacher, generator, source, cfg: DegradationConfig, s_init, dev, on_record, store):
    """Stage 1's DSM steps on the generator's samples; returns the kept snapshots, the history and the
    stage's start time (moved back by the time of the run that was resumed)."""
    on_record = on_record if distributed.ranks().writer else None  # rank 0 reports
    start = time.perf_counter()
    degraded = trainable_copy(teacher.net, cfg.trained_nets, dev)  # every weight, or LoRA adapters only
    loss_fn = EDMLoss(cfg.P_mean, cfg.P_std, degraded.sigma_data)
    opt = make_adam(trained_parameters(degraded), cfg.lr, cfg.betas)
    snap_steps = candidate_steps(cfg.k1, cfg.n_nodes, cfg.spacing, max(cfg.candidates, cfg.n_nodes))
    snapshots = {0: _cpu_state(degraded)}
    history: list[dict] = []
    first = 1
    state = store.begin() if store is not None else None
    if state is not None:
        load_trained_state(degraded, state["modules"]["degraded"])
        opt.load_state_dict(state["optimizer"])
        snapshots.update({step: store.get_blob(f"snapshot-{step:09d}") for step in state["snapshot_steps"]})
        history = list(state["history"])
        first, start = state["iteration"] + 1, time.perf_counter() - float(state["clock"])
        for rec in history if on_record is not None else ():
            on_record(rec)
    status = StatusLine("degradation", cfg.k1, cfg.log_every)
    guard = Guard.for_device("stage 1 (degradation recording)", dev)
    with progress(cfg.k1, "degradation") as bar:
        bar.update(first - 1)
        for step in range(first, cfg.k1 + 1):
            with autocast(dev, cfg.bf16):  # the frozen generator's forward in the step's precision
                x0, labels = draw_generator_batch(generator, source, cfg.batch_size, s_init, dev)
            loss = train_step(opt, mean_loss, loss_fn, degraded, x0, labels, device=dev, bf16=cfg.bf16,
                              where=guard.at(step))
            if step in snap_steps:
                guard.check()  # nothing is kept from after a bad step
                snapshots[step] = _cpu_state(degraded)
                if store is not None:
                    store.put_blob(f"snapshot-{step:09d}", snapshots[step])
            save = store is not None and store.tick(step, cfg.k1)
            record = step % cfg.record_every == 0 or step == cfg.k1
            if save or record or status.due(step):
                guard.check()  # where values are read anyway, and before every state
            if record:
                rec = history_row(step, time.perf_counter() - start, "degradation", loss_fake_score=loss.item())
                history.append(rec)
                if on_record is not None:
                    on_record(rec)
            bar.update(1)
            if status.due(step):
                status(step, dsm_loss=loss.item())
            if save:
                store.save(step, {"modules": {"degraded": trained_state(degraded)}, "optimizer": opt.state_dict(),
                                  "snapshot_steps": sorted(s for s in snapshots if s > 0), "history": history,
                                  "clock": time.perf_counter() - start}, complete=step == cfg.k1, modules=(degraded,))
    return snapshots, history, start


def _cpu_state(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in trained_state(net).items()}


def _choose_nodes(teacher, generator, source, cfg: DegradationConfig, s_init, dev, snapshots) -> list[PathNode]:
    """Distances of every snapshot to the teacher and to P_N on a fixed probe, then the nodes."""
    probe = make_probe(generator, source, s_init, cfg.probe_size, cfg.seed + 1, dev, cfg.P_mean, cfg.P_std)
    scratch, final = (frozen_copy(teacher.net, cfg.trained_nets, dev) for _ in range(2))
    teacher_net = frozen_copy(teacher.net, cfg.trained_nets, dev, adapters=False)
    load_trained_state(final, snapshots[cfg.k1])
    dist_teacher, dist_final = {}, {}
    for step, state in snapshots.items():
        load_trained_state(scratch, state)
        dist_teacher[step] = probe.distance(scratch, teacher_net)
        dist_final[step] = probe.distance(scratch, final)
    steps = sorted(snapshots)
    chosen = steps if cfg.spacing == "iterations" else pick_by_distance(steps, dist_final, cfg.n_nodes)
    width = max(6, len(str(cfg.k1)))
    return [PathNode(step_key(s, width), s, dist_teacher[s], dist_final[s], state_dict=snapshots[s]) for s in chosen]
