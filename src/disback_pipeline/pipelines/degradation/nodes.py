"""Nodes of the ``degradation`` pipeline."""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd

from ...diffusion.checkpoint import Checkpoint
from ...diffusion.config import DegradationConfig, DistillConfig, DistributedConfig, from_dict
from ...diffusion.data import make_data_source
from ...diffusion.degradation import record_degradation
from ...diffusion.distributed import run as ranks_run
from ...diffusion.path import DegradationPath
from ...diffusion.state import weights_sha256
from ...diffusion.training import HISTORY_COLUMNS
from ...resume import state_store
from ...tracking import MetricBuffer, log_metrics

log = logging.getLogger(__name__)


def record_degradation_path(teacher_model: Checkpoint, data: dict[str, Any], degradation: dict[str, Any],
                            backtracking: dict[str, Any], checkpointing: dict[str, Any] | None = None,
                            distributed: dict[str, Any] | None = None,
                            state_folder: str = "degradation") -> tuple[DegradationPath, pd.DataFrame]:
    """Fine-tune a teacher copy on the initial generator's samples and keep N+1 checkpoints.

    With ``backtracking.enabled: false`` (the baseline) stage 1 is skipped and
    the path is empty. The fine-tuning state is saved every
    ``degradation.checkpoint_every`` steps under ``checkpointing.dir``/``state_folder``.
    """
    stage2 = from_dict(DistillConfig, backtracking, "backtracking")
    if not stage2.enabled:
        log.info("backtracking disabled: stage 1 (degradation recording) skipped")
        return DegradationPath(dict(teacher_model.config), [], {"stage1_iterations": 0, "stage1_seconds": 0.0}), \
            pd.DataFrame(columns=HISTORY_COLUMNS)
    metrics = MetricBuffer(prefix="degradation/")
    cfg = from_dict(DegradationConfig, degradation, "degradation")
    source = make_data_source(data)
    store = state_store(checkpointing, state_folder, "stage 1 (degradation recording)", cfg.checkpoint_every,
                        data=data, data_sha256=source.content_sha256(), degradation=degradation,
                        s_init=stage2.s_init, teacher_sha256=weights_sha256(teacher_model.net))
    ranks = from_dict(DistributedConfig, distributed or {}, "distributed")
    def on_record(rec):
        metrics.log(rec["iteration"], {"dsm_loss": rec["loss_fake_score"]})

    path, history = ranks_run(record_degradation, teacher_model, source, cfg, stage2.s_init,
                              on_record=on_record if ranks.nproc == 1 else None, store=store,
                              nproc=ranks.nproc, backend=ranks.backend, device=cfg.device)
    for rec in history if ranks.nproc > 1 else ():  # rank 0's history, logged here
        on_record(rec)
    metrics.flush()
    log_metrics({"stage1_seconds": path.metadata["stage1_seconds"],
                 "stage1_iterations": path.metadata["stage1_iterations"]}, prefix="degradation/")
    return path, pd.DataFrame(history, columns=HISTORY_COLUMNS)
