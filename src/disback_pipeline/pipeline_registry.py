"""Project pipelines: every folder under pipelines/ plus the composed main job.

``distill`` (the main job, also ``__default__``) chains
teacher -> degradation -> backtracking.
"""

from __future__ import annotations

from kedro.framework.project import find_pipelines
from kedro.pipeline import Pipeline

MAIN_CHAIN = ("teacher", "degradation", "backtracking")


def register_pipelines() -> dict[str, Pipeline]:
    pipelines = find_pipelines(raise_errors=True)
    pipelines["distill"] = sum((pipelines[name] for name in MAIN_CHAIN), Pipeline([]))
    pipelines["__default__"] = pipelines["distill"]
    return pipelines
