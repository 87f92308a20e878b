"""Nodes of the ``backtracking`` pipeline."""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd
import torch

from ...diffusion.checkpoint import Checkpoint
from ...diffusion.config import DistillConfig, DistributedConfig, EvaluationConfig, from_dict
from ...diffusion.data import make_data_source
from ...diffusion.disback import Callbacks, distill
from ...diffusion.distributed import run as ranks_run
from ...diffusion.path import DegradationPath
from ...diffusion.state import state_dict_sha256, weights_sha256
from ...diffusion.training import HISTORY_COLUMNS
from ...evaluation.quality import FeatureSpec, headline_metric, quality, sample_generator
from ...reporting import switch_grid_figure
from ...resume import state_store
from ...tracking import MetricBuffer, log_dict, log_metrics, name_run

log = logging.getLogger(__name__)

LOGGED = ("loss_generator", "loss_fake_score", "score_mismatch")


PROXY_SEED_OFFSET = 1  # proxy latents come from evaluation.seed + 1: never the final evaluation's own


class ProxyEvaluator:
    """Quality of the EMA generator on a small fixed sample set, labelled proxy_* (a class, not a closure, so it
    travels to data-parallel ranks, where rank 0 calls it). Its latents are held out from the final evaluation's,
    so a generator picked by the proxy (``keep: best``) is scored on samples the choice never saw."""

    def __init__(self, source, feature_extractor: FeatureSpec, reference_stats: dict, evaluation: EvaluationConfig,
                 s_init: float):
        self.source, self.features, self.reference = source, feature_extractor, reference_stats
        self.n, self.seed, self.s_init = evaluation.proxy_samples, evaluation.seed + PROXY_SEED_OFFSET, s_init

    def __call__(self, generator: torch.nn.Module) -> dict:
        x, _ = sample_generator(generator, self.source, self.n, self.seed, self.s_init)
        return {f"proxy_{k}": v for k, v in quality(x, self.source, self.features, self.reference, self.seed).items()
                if isinstance(v, float)}


class SwitchSampler:
    """The EMA generator's samples at each change of target (for the switch figure)."""

    def __init__(self, source, n: int, seed: int, s_init: float):
        self.source, self.n, self.seed, self.s_init = source, n, seed, s_init

    def __call__(self, iteration, target, generator):
        return sample_generator(generator, self.source, self.n, self.seed, self.s_init)[0]


def path_digest(path: DegradationPath | None) -> list[str]:
    """Node keys and weight hashes of a path (part of stage 2's training-state fingerprint)."""
    if path is None:
        return []
    return [f"{n.key}:{n.sha256 or state_dict_sha256(n.state_dict)}" for n in path.nodes]


def run_distillation(teacher_model: Checkpoint, degradation_path: DegradationPath,  # noqa: PLR0913 - the node's inputs and where
                     reference: tuple[FeatureSpec, dict], data: dict[str, Any], backtracking: dict[str, Any],
                     evaluation: dict[str, Any], checkpointing: dict[str, Any] | None = None,
                     where: str = "backtracking", distributed: dict[str, Any] | None = None):
    """Shared by ``backtracking`` and ``compare``: returns (result, stage-2 history rows, switch figure).

    ``reference`` is the feature extractor and the reference statistics of the proxy quality. ``where`` names
    the run: ``backtracking``, or ``compare/<arm>`` (metrics under ``compare/``). The training state is saved
    every ``backtracking.checkpoint_every`` iterations under ``checkpointing.dir``/``where``[/backtracking]."""
    feature_extractor, reference_stats = reference
    metric_prefix = f"{where.split('/', maxsplit=1)[0]}/"
    state_folder = where if where == "backtracking" else f"{where}/backtracking"
    cfg = from_dict(DistillConfig, backtracking, "backtracking")
    enabled = cfg.enabled
    if enabled and len(degradation_path.nodes) < 2:
        raise ValueError("backtracking.enabled is true but the degradation path is empty; "
                         "re-run the degradation pipeline with backtracking enabled")
    source = make_data_source(data)
    s_init = cfg.s_init
    stage1 = float(degradation_path.metadata.get("stage1_seconds", 0.0)) if enabled else 0.0
    metrics = MetricBuffer(prefix=metric_prefix)
    ev = from_dict(EvaluationConfig, evaluation, "evaluation")
    on_switch = SwitchSampler(source, ev.grid_samples if len(source.shape) > 1 else 2000, ev.seed, s_init)
    switches: list[dict] = []

    def on_record(rec):
        metrics.log(rec["iteration"], {k: v for k, v in rec.items() if k in LOGGED or k.startswith("proxy_")})
        if rec["switch_reason"]:  # every change of target, with why (start, k2, converged, plateau, cap)
            switches.append({k: rec[k] for k in ("iteration", "target", "switch_reason", "score_mismatch")})
            metrics.log(rec["iteration"], {"target_index": len(switches) - 1})

    path = degradation_path if enabled else None
    store = state_store(checkpointing, state_folder, f"stage 2 ({cfg.method})", cfg.checkpoint_every, data=data,
                        data_sha256=source.content_sha256(), backtracking=backtracking,
                        evaluation={k: evaluation.get(k) for k in ("proxy_samples", "grid_samples", "seed")},
                        teacher_sha256=weights_sha256(teacher_model.net), path=path_digest(path),
                        reference=str(reference_stats.get("hash")))
    ranks = from_dict(DistributedConfig, distributed or {}, "distributed")
    # with several ranks, rank 0 evaluates and samples; its history comes back and is logged here
    callbacks = Callbacks(on_record if ranks.nproc == 1 else None,
                          ProxyEvaluator(source, feature_extractor, reference_stats, ev, s_init), on_switch,
                          select_by=f"proxy_{headline_metric(source)}")
    result = ranks_run(distill, teacher_model, source, path, cfg, time_offset=stage1, callbacks=callbacks,
                       store=store, nproc=ranks.nproc, backend=ranks.backend, device=cfg.device)
    for rec in result.history if ranks.nproc > 1 else ():
        on_record(rec)
    metrics.flush()
    log_dict(switches, f"{metric_prefix}switches.json")
    kept = {k: result.generator_ema.metadata[k] for k in ("selected_iteration", "selected_value")
            if k in result.generator_ema.metadata}  # keep = best: which EMA generator was handed on
    log_metrics({"stage1_seconds": stage1, "total_seconds": result.history[-1]["wall_clock_s"], **kept},
                prefix=metric_prefix)
    title = f"{'DisBack' if enabled else 'baseline'}: EMA generator at each change of target"
    return result, result.history, switch_grid_figure(result.switch_samples, title)


def join_history(degradation_history: pd.DataFrame, stage2_rows: list[dict], enabled: bool) -> pd.DataFrame:
    """One table for the run: stage-1 rows first (DisBack only), then stage 2's, in HISTORY_COLUMNS order."""
    stage1_rows = degradation_history if enabled else degradation_history.iloc[0:0]
    history = pd.concat([stage1_rows, pd.DataFrame(stage2_rows)], ignore_index=True)
    return history[HISTORY_COLUMNS + [c for c in history.columns if c not in HISTORY_COLUMNS]]


def distill_generator(teacher_model: Checkpoint, degradation_path: DegradationPath, feature_extractor: FeatureSpec,  # noqa: PLR0913 - one argument per catalog input
                      reference_stats: dict, data: dict[str, Any], backtracking: dict[str, Any],
                      evaluation: dict[str, Any], checkpointing: dict[str, Any] | None = None,
                      distributed: dict[str, Any] | None = None):
    """Score distillation of the one-step generator (DisBack, or the baseline when disabled).

    Returns the raw and EMA generator checkpoints, stage 2's history rows and a
    figure of the generator's samples at every change of target.
    """
    cfg = from_dict(DistillConfig, backtracking, "backtracking")
    name_run(f"{cfg.method}-{cfg.loss}-{data.get('source')}-seed{cfg.seed}")
    result, rows, figure = run_distillation(teacher_model, degradation_path, (feature_extractor, reference_stats),
                                            data, backtracking, evaluation, checkpointing, distributed=distributed)
    return result.generator, result.generator_ema, pd.DataFrame(rows), figure


def combine_history(degradation_history: pd.DataFrame, stage2_history: pd.DataFrame,
                    backtracking: dict[str, Any]) -> pd.DataFrame:
    """The run's training history: stage-1 rows first (DisBack only; stage-2 wall-clock continues after
    stage 1's), then stage 2's."""
    enabled = from_dict(DistillConfig, backtracking, "backtracking").enabled
    return join_history(degradation_history, stage2_history.to_dict("records"), enabled)
