"""Nodes of the ``compare`` pipeline."""

from __future__ import annotations

import logging
import math

import pandas as pd

from ...evaluation.convergence import speedup_report
from ...evaluation.quality import headline_metric
from ...parameters import Data, as_data
from ...reporting import plot_curves, two_panel_figure
from ...tracking import log_metrics

log = logging.getLogger(__name__)


def convergence_report(baseline_history: pd.DataFrame, disback_history: pd.DataFrame, data: Data):
    """Speed-up to the baseline's final quality, curves vs iteration and wall-clock, and a table."""
    metric = f"proxy_{headline_metric(as_data(data).source)}"
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


