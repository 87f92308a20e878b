"""The training history that stage 1 and stage 2 share: its columns, a row, and the run's one table."""

from __future__ import annotations

import math

import pandas as pd

# Columns of every stage's rows, in this order; stage 2 adds the proxy_* columns of its evaluations.
HISTORY_COLUMNS = ["iteration", "wall_clock_s", "stage", "target", "switch_reason", "loss_generator",
                   "loss_fake_score", "score_mismatch"]


def history_row(iteration: int, wall_clock_s: float, stage: str, target: str = "-", switch_reason: str = "",  # noqa: PLR0913 - one argument per column
                loss_generator: float = math.nan, loss_fake_score: float = math.nan,
                score_mismatch: float = math.nan) -> dict:
    """One row: what a stage's loop records at an iteration (NaN where the stage has no such quantity)."""
    return {"iteration": iteration, "wall_clock_s": wall_clock_s, "stage": stage, "target": target,
            "switch_reason": switch_reason, "loss_generator": loss_generator, "loss_fake_score": loss_fake_score,
            "score_mismatch": score_mismatch}


def run_history(stage1: pd.DataFrame, stage2: pd.DataFrame, with_stage1: bool) -> pd.DataFrame:
    """The run's table: stage 1's rows first (DisBack only; stage 2's clock continues stage 1's), then
    stage 2's, in HISTORY_COLUMNS order and then the proxy columns."""
    history = pd.concat([stage1 if with_stage1 else stage1.iloc[0:0], stage2], ignore_index=True)
    return history[HISTORY_COLUMNS + [c for c in history.columns if c not in HISTORY_COLUMNS]]
