"""Wiring of the ``reference`` pipeline."""

from kedro.pipeline import Node, Pipeline

from .nodes import build_feature_extractor, build_reference_stats


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline([
        Node(build_feature_extractor, ["params:data", "params:evaluation"], "feature_extractor",
             name="build_feature_extractor"),
        Node(build_reference_stats, ["feature_extractor", "params:data", "params:evaluation"], "reference_stats",
             name="build_reference_stats"),
    ], namespace="reference", prefix_datasets_with_namespace=False, tags="reference")
