"""Convergence comparison of two training histories (baseline vs DisBack)."""

from __future__ import annotations

import math

import pandas as pd


def first_reaching(history: pd.DataFrame, metric: str, level: float, x: str) -> float:
    """First ``x`` (iteration or wall_clock_s) at which ``metric`` <= ``level``; NaN if never."""
    rows = history.dropna(subset=[metric])
    hit = rows[rows[metric] <= level]
    return float(hit[x].iloc[0]) if len(hit) else math.nan


def final_value(history: pd.DataFrame, metric: str) -> float:
    rows = history.dropna(subset=[metric]) if metric in history else history.iloc[0:0]
    if rows.empty:
        raise ValueError(f"the history has no {metric!r} values; set backtracking.eval_every > 0")
    return float(rows[metric].iloc[-1])


def speedup_report(baseline: pd.DataFrame, disback: pd.DataFrame, metric: str) -> dict:
    """Iterations and wall-clock each method needs to reach the baseline's final quality.

    Lower ``metric`` is better. speedup = baseline's cost / DisBack's cost (NaN
    when DisBack never reaches it). DisBack's wall-clock includes stage 1
    because its history's clock starts with the degradation recording.
    """
    target = final_value(baseline, metric)
    out = {"metric": metric, "target_quality": target,
           "final_quality": {"baseline": target, "disback": final_value(disback, metric)}}
    for x, name in (("iteration", "iterations"), ("wall_clock_s", "wallclock")):
        stage2 = disback[disback["stage"] == "backtracking"] if "stage" in disback else disback
        b = first_reaching(baseline, metric, target, x)
        d = first_reaching(stage2, metric, target, x)
        out[f"baseline_{name}_to_target"] = b
        out[f"disback_{name}_to_target"] = d
        out[f"speedup_{name}"] = b / d if d and not math.isnan(d) else math.nan
    return out
