"""Wiring of the ``degradation`` pipeline."""

from kedro.pipeline import Node, Pipeline

from .nodes import record_degradation_path


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline([
        Node(record_degradation_path,
             ["teacher_model", "params:data", "params:degradation", "params:shared", "params:checkpointing",
              "params:distributed"],
             ["degradation_path", "degradation_history"], name="record_degradation_path"),
    ], namespace="degradation", prefix_datasets_with_namespace=False, tags="degradation")
