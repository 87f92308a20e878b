"""Nodes of the ``compare`` pipeline."""

from __future__ import annotations

import contextlib
import logging
import math
from typing import Any

import pandas as pd

from ...diffusion.checkpoint import Checkpoint
from ...diffusion.data import make_data_source
from ...evaluation.convergence import speedup_report
from ...evaluation.quality import FeatureSpec, headline_metric
from ...reporting import plot_curves, two_panel_figure
from ...tracking import active, log_metrics
from ..backtracking.nodes import join_history, run_distillation
from ..degradation.nodes import record_degradation_path

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _nested_run(name: str, params: dict[str, Any]):
    """A child MLflow run (so the UI's compare view lists both methods) when tracking is on."""
    if not active():
        yield
        return
    import mlflow

    with mlflow.start_run(run_name=name, nested=True):
        mlflow.log_params({k: v for k, v in params.items() if not isinstance(v, dict)})
        yield


def run_method(teacher_model: Checkpoint, feature_extractor: FeatureSpec, reference_stats: dict,
               data: dict[str, Any], degradation: dict[str, Any], backtracking: dict[str, Any],
               evaluation: dict[str, Any], method: dict[str, Any]):
    """One arm of the comparison: the shared settings with ``method.enabled`` on or off."""
    settings = {**backtracking, "enabled": bool(method["enabled"])}
    arm = "disback" if settings["enabled"] else "baseline"
    name = f"{arm}-{settings['loss']}-{data['source']}-seed{settings['seed']}"
    with _nested_run(name, {**settings, "data": data.get("source")}):
        path, deg_history = record_degradation_path(teacher_model, data, degradation, settings)
        result, rows, fig = run_distillation(teacher_model, path, feature_extractor, reference_stats, data,
                                             settings, evaluation, metric_prefix="compare/")
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


