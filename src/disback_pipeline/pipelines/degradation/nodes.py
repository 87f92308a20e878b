"""Nodes of the ``degradation`` pipeline."""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd

from ...diffusion.checkpoint import Checkpoint
from ...diffusion.config import DegradationConfig, DistillConfig, from_dict
from ...diffusion.data import make_data_source
from ...diffusion.degradation import record_degradation
from ...diffusion.path import DegradationPath
from ...diffusion.training import HISTORY_COLUMNS
from ...tracking import MetricBuffer, log_metrics

log = logging.getLogger(__name__)


def record_degradation_path(teacher_model: Checkpoint, data: dict[str, Any], degradation: dict[str, Any],
                            backtracking: dict[str, Any]) -> tuple[DegradationPath, pd.DataFrame]:
    """Fine-tune a teacher copy on the initial generator's samples and keep N+1 checkpoints.

    With ``backtracking.enabled: false`` (the baseline) stage 1 is skipped and
    the path is empty.
    """
    stage2 = from_dict(DistillConfig, backtracking, "backtracking")
    if not stage2.enabled:
        log.info("backtracking disabled: stage 1 (degradation recording) skipped")
        return DegradationPath(dict(teacher_model.config), [], {"stage1_iterations": 0, "stage1_seconds": 0.0}), \
            pd.DataFrame(columns=HISTORY_COLUMNS)
    metrics = MetricBuffer(prefix="degradation/")
    path, history = record_degradation(
        teacher_model, make_data_source(data), from_dict(DegradationConfig, degradation, "degradation"),
        stage2.s_init, on_record=lambda rec: metrics.log(rec["iteration"], {"dsm_loss": rec["loss_fake_score"]}))
    metrics.flush()
    log_metrics({"stage1_seconds": path.metadata["stage1_seconds"],
                 "stage1_iterations": path.metadata["stage1_iterations"]}, prefix="degradation/")
    return path, pd.DataFrame(history, columns=HISTORY_COLUMNS)
