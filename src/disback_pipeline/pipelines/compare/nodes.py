"""Nodes of the ``compare`` pipeline."""

from __future__ import annotations

import contextlib
import logging
import math
from pathlib import Path
from typing import Any

import pandas as pd

from ...diffusion.checkpoint import Checkpoint
from ...diffusion.config import CheckpointingConfig, from_dict
from ...diffusion.data import make_data_source
from ...evaluation.convergence import speedup_report
from ...evaluation.quality import FeatureSpec, headline_metric
from ...reporting import plot_curves, two_panel_figure
from ...resume import RunMarker
from ...tracking import active, log_metrics
from ..backtracking.nodes import join_history, run_distillation
from ..degradation.nodes import record_degradation_path

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _nested_run(name: str, params: dict[str, Any], marker: RunMarker):
    """A child MLflow run (so the UI's compare view lists both methods) when tracking is on.

    A resumed parent run continues its child (the child's id is kept in ``marker``); a child stopped by
    Ctrl-C or SIGTERM ends as KILLED, one stopped by an error as FAILED.
    """
    if not active():
        yield
        return
    import mlflow

    parent = mlflow.active_run().info.run_id
    known = (marker.read() or {}).get("run_id")
    resume = known if known and _child_of(known, parent) else None
    run = mlflow.start_run(run_id=resume, run_name=None if resume else name, nested=True)
    marker.write(run.info.run_id, name=name, parent=parent)
    try:
        if resume is None:
            mlflow.log_params({k: v for k, v in params.items() if not isinstance(v, dict)})
        yield
    except KeyboardInterrupt:
        mlflow.end_run("KILLED")
        raise
    except BaseException:
        mlflow.end_run("FAILED")
        raise
    mlflow.end_run()


def _child_of(run_id: str, parent: str) -> bool:
    import mlflow

    try:
        return mlflow.MlflowClient().get_run(run_id).data.tags.get("mlflow.parentRunId") == parent
    except Exception:  # deleted, or another store
        return False


def run_method(teacher_model: Checkpoint, feature_extractor: FeatureSpec, reference_stats: dict,  # noqa: PLR0913 - one argument per catalog input of an arm
               data: dict[str, Any], degradation: dict[str, Any], backtracking: dict[str, Any],
               evaluation: dict[str, Any], method: dict[str, Any], checkpointing: dict[str, Any] | None = None):
    """One arm of the comparison: the shared settings with ``method.enabled`` on or off. Its training states
    live under ``checkpointing.dir``/compare/<arm>/."""
    settings = {**backtracking, "enabled": bool(method["enabled"])}
    arm = "disback" if settings["enabled"] else "baseline"
    name = f"{arm}-{settings['loss']}-{data['source']}-seed{settings['seed']}"
    folder = f"compare/{arm}"
    marker = RunMarker(Path(from_dict(CheckpointingConfig, checkpointing or {}, "checkpointing").dir) / folder)
    with _nested_run(name, {**settings, "data": data.get("source")}, marker):
        path, deg_history = record_degradation_path(teacher_model, data, degradation, settings, checkpointing,
                                                    state_folder=f"{folder}/degradation")
        result, rows, fig = run_distillation(teacher_model, path, (feature_extractor, reference_stats), data,
                                             settings, evaluation, checkpointing, where=folder)
    return result.generator_ema, join_history(deg_history, rows, settings["enabled"]), fig


def convergence_report(baseline_history: pd.DataFrame, disback_history: pd.DataFrame, data: dict[str, Any]):
    """Speed-up to the baseline's final quality, curves vs iteration and wall-clock, and a table."""
    metric = f"proxy_{headline_metric(make_data_source(data))}"
    report = speedup_report(baseline_history, disback_history, metric)
    table = pd.DataFrame([
        {"method": m, f"final_{metric}": report["final_quality"][m],
         "iterations_to_target": report[f"{m}_iterations_to_target"],
         "wall_clock_s_to_target": report[f"{m}_wallclock_to_target"],
         "stage1_s": float(h[h["stage"] == "degradation"]["wall_clock_s"].max())
         if (h["stage"] == "degradation").any() else 0.0}
        for m, h in (("baseline", baseline_history), ("disback", disback_history))])
    log.info("convergence (%s, target %.4g): speed-up %.3gx in iterations, %.3gx in wall-clock (stage 1 counted)",
             metric, report["target_quality"], report["speedup_iterations"], report["speedup_wallclock"])
    log_metrics({k: report[k] for k in ("speedup_iterations", "speedup_wallclock") if not math.isnan(report[k])},
                prefix="headline/")
    curves = {"baseline": baseline_history, "disback": disback_history}
    fig = two_panel_figure()
    plot_curves(fig.axes[0], curves, metric, "iteration", "quality vs generator iteration")
    plot_curves(fig.axes[1], curves, metric, "wall_clock_s", "quality vs wall-clock (stage 1 counted)")
    fig.tight_layout()
    clean = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in report.items()}
    return clean, fig, table


