"""Nodes of the ``backtracking`` pipeline."""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd

from ...diffusion.checkpoint import Checkpoint
from ...diffusion.data import make_data_source
from ...diffusion.disback import distill
from ...diffusion.path import DegradationPath
from ...tracking import MetricBuffer, log_metrics
from ..degradation.nodes import HISTORY_COLUMNS

log = logging.getLogger(__name__)


def distill_generator(teacher_model: Checkpoint, degradation_path: DegradationPath,
                      degradation_history: pd.DataFrame, data: dict[str, Any],
                      backtracking: dict[str, Any]) -> tuple[Checkpoint, Checkpoint, pd.DataFrame]:
    """Score distillation of the one-step generator (DisBack, or the baseline when disabled).

    Returns the raw and EMA generator checkpoints and the full training history
    (stage-1 rows first; stage-2 wall-clock continues after stage 1's).
    """
    enabled = bool(backtracking.get("enabled", True))
    path = degradation_path if enabled else None
    if enabled and len(degradation_path.nodes) < 2:
        raise ValueError("backtracking.enabled is true but the degradation path is empty; "
                         "re-run the degradation pipeline with backtracking enabled")
    stage1 = float(degradation_path.metadata.get("stage1_seconds", 0.0)) if enabled else 0.0
    metrics = MetricBuffer(prefix="backtracking/")
    result = distill(
        teacher_model, make_data_source(data), path, backtracking, time_offset=stage1,
        on_record=lambda rec: metrics.log(rec["iteration"], {
            k: rec[k] for k in ("loss_generator", "loss_fake_score", "score_mismatch")}),
    )
    metrics.flush()
    log_metrics({"stage1_seconds": stage1, "total_seconds": result.history[-1]["wall_clock_s"]},
                prefix="backtracking/")
    stage1_rows = degradation_history if enabled else degradation_history.iloc[0:0]
    history = pd.concat([stage1_rows, pd.DataFrame(result.history)], ignore_index=True)
    ordered = HISTORY_COLUMNS + [c for c in history.columns if c not in HISTORY_COLUMNS]
    return result.generator, result.generator_ema, history[ordered]
