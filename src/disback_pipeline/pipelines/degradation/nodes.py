"""Nodes of the ``degradation`` pipeline."""

from __future__ import annotations

import logging

import pandas as pd

from ...diffusion.checkpoint import Checkpoint
from ...diffusion.config import DistributedConfig, SharedConfig
from ...diffusion.degradation import record_degradation
from ...diffusion.distributed import run as ranks_run
from ...diffusion.history import HISTORY_COLUMNS
from ...diffusion.path import DegradationPath
from ...diffusion.state import weights_sha256
from ...parameters import Data, as_data, degradation_config, typed
from ...resume import state_store
from ...tracking import MetricBuffer, log_metrics

log = logging.getLogger(__name__)


def record_degradation_path(teacher_model: Checkpoint, data: Data, degradation,  # noqa: PLR0913 - one argument per catalog input
                            shared, checkpointing=None,
                            distributed=None) -> tuple[DegradationPath, pd.DataFrame]:
    """Fine-tune a teacher copy on the initial generator's samples and keep N+1 checkpoints.

    With ``shared.enabled: false`` (the baseline) stage 1 is skipped and the path is empty. The fine-tuning
    state is saved every ``degradation.checkpoint_every`` steps under ``checkpointing.dir``/degradation.
    """
    shared = typed(shared, SharedConfig, "shared")
    if not shared.enabled:
        log.info("backtracking disabled: stage 1 (degradation recording) skipped")
        return DegradationPath(dict(teacher_model.config), [], {"stage1_iterations": 0, "stage1_seconds": 0.0}), \
            pd.DataFrame(columns=HISTORY_COLUMNS)
    metrics = MetricBuffer(prefix="degradation/")
    cfg, data = degradation_config(degradation, shared), as_data(data)
    store = state_store(checkpointing, "degradation", "stage 1 (degradation recording)", cfg.checkpoint_every,
                        data=data.config, data_sha256=data.sha256, degradation=cfg,
                        s_init=shared.s_init, teacher_sha256=weights_sha256(teacher_model.net))
    ranks = typed(distributed or {}, DistributedConfig, "distributed")

    def on_record(rec):
        metrics.log(rec["iteration"], {"dsm_loss": rec["loss_fake_score"]})

    path, history = ranks_run(record_degradation, teacher_model, data.for_ranks(ranks), cfg, shared.s_init,
                              on_record=on_record if ranks.one_process else None, store=store,
                              nproc=ranks.nproc, backend=ranks.backend, device=cfg.device, machines=ranks.machines)
    for rec in () if ranks.one_process else history:  # rank 0's history, logged here
        on_record(rec)
    metrics.flush()
    log_metrics({"stage1_seconds": path.metadata["stage1_seconds"],
                 "stage1_iterations": path.metadata["stage1_iterations"]}, prefix="degradation/")
    return path, pd.DataFrame(history, columns=HISTORY_COLUMNS)
