"""Nodes of the ``teacher`` pipeline: thin adapters over ``disback_pipeline.diffusion``."""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd
import torch

from ...diffusion.checkpoint import Checkpoint
from ...diffusion.config import DistributedConfig, SharedConfig, TeacherConfig
from ...diffusion.data import GaussianMixture2D
from ...diffusion.distributed import run as ranks_run
from ...diffusion.teacher import load_teacher, pretrain_teacher
from ...evaluation.metrics import mean_nll, mode_stats
from ...evaluation.quality import sample_teacher, teacher_calls
from ...parameters import Data, as_data, typed
from ...reporting import samples_figure
from ...resume import state_store
from ...tracking import MetricBuffer, log_metrics

log = logging.getLogger(__name__)

def train_or_load_teacher(data: Data, teacher, checkpointing=None,
                          distributed=None) -> tuple[Checkpoint, pd.DataFrame]:
    """Pre-train a teacher on the configured data, or load one from ``teacher.checkpoint_path``
    (our checkpoint, an EDM snapshot ``.pkl`` read without executing its code, or with ``mode: diffusers`` a
    diffusers model folder). Pre-training saves its state every ``teacher.training.checkpoint_every`` steps and
    continues from it after a kill.

    Returns:
        The teacher checkpoint and its per-step training history (empty when loaded).
    """
    cfg, data = typed(teacher, TeacherConfig, "teacher"), as_data(data)
    if cfg.mode in ("load", "diffusers"):
        ckpt = load_teacher(cfg.checkpoint_path, diffusers=cfg.mode == "diffusers")
        shown = {k: v for k, v in ckpt.metadata.items() if k != "edm_init_kwargs"}
        log.info("loaded teacher from %s (%s)", cfg.checkpoint_path, shown)
        return ckpt, pd.DataFrame(columns=["step", "loss", "wall_clock_s"])
    metrics = MetricBuffer(prefix="teacher/")
    store = state_store(checkpointing, "teacher", "teacher pre-training", cfg.training.checkpoint_every,
                        data=data.config, data_sha256=data.sha256, network=cfg.network,
                        training=cfg.training, seed=cfg.seed, bf16=cfg.bf16)
    ranks = typed(distributed or {}, DistributedConfig, "distributed")
    def on_step(step, rec):
        metrics.log(step, {"loss": rec["loss"]})

    # with several ranks the history comes back with rank 0's result and is logged here (a callback that
    # writes to this process cannot travel to the ranks)
    ckpt, history = ranks_run(pretrain_teacher, data.for_ranks(ranks), cfg.network, cfg.training, cfg.seed,
                              cfg.device, cfg.bf16, on_step=on_step if ranks.one_process else None, store=store,
                              nproc=ranks.nproc, backend=ranks.backend, device=cfg.device, machines=ranks.machines)
    for rec in () if ranks.one_process else history:
        on_step(rec["step"], rec)
    metrics.flush()
    return ckpt, pd.DataFrame(history)


def report_teacher(teacher_model: Checkpoint, data: Data, teacher, shared):
    """Heun samples of the teacher (``teacher.report``, with the shared sampler): a figure and summary metrics.

    For 2-D mixtures the metrics include the mean NLL under the true density of
    the teacher's samples and of true samples drawn with the same seed.
    """
    source = as_data(data).source
    cfg, shared = typed(teacher, TeacherConfig, "teacher").report, typed(shared, SharedConfig, "shared")
    sampler = shared.sampler
    x, samples_per_s = sample_teacher(teacher_model.net, source, cfg.num_samples, cfg.seed, sampler,
                                      guidance=shared.guidance_scale)
    metrics: dict[str, Any] = {**teacher_calls(sampler, source, shared.guidance_scale), "n_samples": cfg.num_samples,
                               "samples_per_s": samples_per_s}
    reference = None
    if isinstance(source, GaussianMixture2D):
        reference, _ = source.sample(cfg.num_samples, torch.Generator().manual_seed(cfg.seed))
        metrics["nll"] = mean_nll(source, x)
        metrics["nll_data"] = mean_nll(source, reference)
        metrics["nll_gap"] = metrics["nll"] - metrics["nll_data"]
        metrics.update(mode_stats(source, x))
        log.info("teacher NLL %.4f vs data %.4f (gap %.4f nats)", metrics["nll"], metrics["nll_data"],
                 metrics["nll_gap"])
    log_metrics({k: v for k, v in metrics.items() if isinstance(v, float)}, prefix="teacher/")
    fig = samples_figure(x[:4096] if x.ndim == 2 else x[:64], f"teacher (Heun, NFE {sampler.nfe})",
                         None if reference is None else reference[:4096])
    return fig, metrics
