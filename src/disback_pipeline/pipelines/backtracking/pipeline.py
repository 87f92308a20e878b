"""Wiring of the ``backtracking`` pipeline."""

from kedro.pipeline import Node, Pipeline

from .nodes import distill_generator


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline([
        Node(distill_generator,
             ["teacher_model", "degradation_path", "degradation_history", "feature_extractor", "reference_stats",
              "params:data", "params:backtracking", "params:evaluation", "params:checkpointing"],
             ["generator_model", "generator_ema_model", "backtracking_history", "switch_grids_plot"],
             name="distill_generator"),
    ], namespace="backtracking", prefix_datasets_with_namespace=False, tags="backtracking")
