"""Project pipelines: every folder under pipelines/; ``__default__`` is the main job ``distill``."""

from __future__ import annotations

from kedro.framework.project import find_pipelines
from kedro.pipeline import Pipeline


def register_pipelines() -> dict[str, Pipeline]:
    pipelines = find_pipelines(raise_errors=True)
    if "distill" in pipelines:
        pipelines["__default__"] = pipelines["distill"]
    return pipelines
