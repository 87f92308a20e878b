"""Nodes of the ``backtracking`` pipeline."""

from __future__ import annotations

import logging

import pandas as pd
import torch

from ...diffusion.checkpoint import Checkpoint
from ...diffusion.config import DistillConfig, DistributedConfig, SharedConfig
from ...diffusion.disback import Callbacks, distill
from ...diffusion.distributed import run as ranks_run
from ...diffusion.history import run_history
from ...diffusion.path import DegradationPath
from ...diffusion.state import state_dict_sha256, weights_sha256
from ...evaluation.features import FeatureSpec
from ...evaluation.quality import headline_metric, quality, sample_generator
from ...parameters import Data, as_data, distill_config, typed
from ...reporting import switch_grid_figure
from ...resume import state_store
from ...tracking import MetricBuffer, log_dict, log_metrics, name_run

log = logging.getLogger(__name__)

LOGGED = ("loss_generator", "loss_fake_score", "score_mismatch")


class ProxyEvaluator:
    """Quality of the EMA generator on a small fixed sample set, labelled proxy_* (a class, not a closure, so it
    travels to data-parallel ranks, where rank 0 calls it). Its latents (``backtracking.proxy_seed``) are held
    out from the final evaluation's (``evaluation.seed``; the settings refuse the two equal), so a generator
    picked by the proxy (``keep: best``) is scored on samples the choice never saw."""

    def __init__(self, source, feature_extractor: FeatureSpec, reference_stats: dict, cfg: DistillConfig):
        self.source, self.features, self.reference = source, feature_extractor, reference_stats
        self.n, self.seed, self.s_init = cfg.proxy_samples, cfg.proxy_seed, cfg.s_init

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


class Recorder:
    """Stage 2's history rows as MLflow metrics (losses, proxy quality, the index of the current target) and
    the changes of target, with their reasons."""

    def __init__(self):
        self.metrics, self.switches = MetricBuffer(prefix="backtracking/"), []

    def __call__(self, rec: dict) -> None:
        self.metrics.log(rec["iteration"], {k: v for k, v in rec.items() if k in LOGGED or k.startswith("proxy_")})
        if rec["switch_reason"]:  # every change of target, with why (start, k2, converged, plateau, cap)
            self.switches.append({k: rec[k] for k in ("iteration", "target", "switch_reason", "score_mismatch")})
            self.metrics.log(rec["iteration"], {"target_index": len(self.switches) - 1})


def distill_generator(teacher_model: Checkpoint, degradation_path: DegradationPath, feature_extractor: FeatureSpec,  # noqa: PLR0913 - one argument per catalog input
                      reference_stats: dict, data: Data, backtracking, shared,
                      checkpointing=None, distributed=None):
    """Score distillation of the one-step generator (DisBack, or the baseline when ``shared.enabled`` is false).

    Returns the raw and EMA generator checkpoints, stage 2's history rows and a figure of the generator's
    samples at every change of target. The training state is saved every ``backtracking.checkpoint_every``
    iterations under ``checkpointing.dir``/backtracking.
    """
    cfg, data = distill_config(backtracking, shared), as_data(data)
    name_run(f"{cfg.method}-{cfg.loss}-{data.name}-seed{cfg.seed}")
    if cfg.enabled and len(degradation_path.nodes) < 2:
        raise ValueError("shared.enabled is true but the degradation path is empty; "
                         "re-run the degradation pipeline with backtracking enabled")
    source = data.source
    stage1 = float(degradation_path.metadata.get("stage1_seconds", 0.0)) if cfg.enabled else 0.0
    path = degradation_path if cfg.enabled else None
    store = state_store(checkpointing, "backtracking", f"stage 2 ({cfg.method})", cfg.checkpoint_every,
                        data=data.config, data_sha256=data.sha256, backtracking=cfg,
                        teacher_sha256=weights_sha256(teacher_model.net), path=path_digest(path),
                        reference=str(reference_stats.get("hash")))
    ranks = typed(distributed or {}, DistributedConfig, "distributed")
    record = Recorder()
    # with several ranks, rank 0 evaluates and samples; its history comes back and is logged here
    callbacks = Callbacks(record if ranks.one_process else None,
                          ProxyEvaluator(source, feature_extractor, reference_stats, cfg),
                          SwitchSampler(source, cfg.grid_samples if len(source.shape) > 1 else 2000, cfg.proxy_seed,
                                        cfg.s_init),
                          select_by=f"proxy_{headline_metric(source)}")
    if ranks.machines is not None and path is not None:
        path = path.in_memory()  # the other machines do not see this one's path folder
    result = ranks_run(distill, teacher_model, data.for_ranks(ranks), path, cfg, time_offset=stage1,
                       callbacks=callbacks, store=store, nproc=ranks.nproc, backend=ranks.backend,
                       device=cfg.device, machines=ranks.machines)
    for rec in () if ranks.one_process else result.history:
        record(rec)
    record.metrics.flush()
    log_dict(record.switches, "backtracking/switches.json")
    kept = {k: result.generator_ema.metadata[k] for k in ("selected_iteration", "selected_value")
            if k in result.generator_ema.metadata}  # keep = best: which EMA generator was handed on
    log_metrics({"stage1_seconds": stage1, "total_seconds": result.history[-1]["wall_clock_s"], **kept},
                prefix="backtracking/")
    figure = switch_grid_figure(result.switch_samples,
                                f"{'DisBack' if cfg.enabled else 'baseline'}: EMA generator at each change of target")
    return result.generator, result.generator_ema, pd.DataFrame(result.history), figure


def combine_history(degradation_history: pd.DataFrame, stage2_history: pd.DataFrame, shared) -> pd.DataFrame:
    """The run's training history: stage-1 rows first (DisBack only; stage-2 wall-clock continues after
    stage 1's), then stage 2's."""
    return run_history(degradation_history, stage2_history, typed(shared, SharedConfig, "shared").enabled)
