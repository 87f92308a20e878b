"""Nodes of the ``degradation`` pipeline."""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd

from ...diffusion.checkpoint import Checkpoint
from ...diffusion.data import make_data_source
from ...diffusion.disback import record_degradation
from ...diffusion.path import DegradationPath
from ...tracking import MetricBuffer, log_metrics

log = logging.getLogger(__name__)

HISTORY_COLUMNS = ["iteration", "wall_clock_s", "stage", "target", "loss_generator", "loss_fake_score",
                   "score_mismatch"]


def record_degradation_path(teacher_model: Checkpoint, data: dict[str, Any], degradation: dict[str, Any],
                            backtracking: dict[str, Any]) -> tuple[DegradationPath, pd.DataFrame]:
    """Fine-tune a teacher copy on the initial generator's samples and keep N+1 checkpoints.

    With ``backtracking.enabled: false`` (the baseline) stage 1 is skipped and
    the path is empty.
    """
    if not backtracking.get("enabled", True):
        log.info("backtracking disabled: stage 1 (degradation recording) skipped")
        return DegradationPath(dict(teacher_model.config), [], {"stage1_iterations": 0, "stage1_seconds": 0.0}), \
            pd.DataFrame(columns=HISTORY_COLUMNS)
    metrics = MetricBuffer(prefix="degradation/")
    path, history = record_degradation(
        teacher_model, make_data_source(data), s_init=float(backtracking["s_init"]),
        k1=int(degradation["k1"]), n_nodes=int(degradation["n_nodes"]), lr=float(degradation["lr"]),
        batch_size=int(degradation["batch_size"]), seed=int(degradation["seed"]),
        spacing=degradation.get("spacing", "iterations"), betas=degradation.get("betas", (0.9, 0.999)),
        candidates=int(degradation.get("candidates", 64)), probe_size=int(degradation.get("probe_size", 512)),
        device=degradation.get("device", "auto"), bf16=bool(degradation.get("bf16", False)),
        log_every=int(degradation.get("log_every", 100)), record_every=int(degradation.get("record_every", 1)),
        on_record=lambda rec: metrics.log(rec["iteration"], {"dsm_loss": rec["loss_fake_score"]}),
    )
    metrics.flush()
    log_metrics({"stage1_seconds": path.metadata["stage1_seconds"],
                 "stage1_iterations": path.metadata["stage1_iterations"]}, prefix="degradation/")
    return path, pd.DataFrame(history, columns=HISTORY_COLUMNS)
