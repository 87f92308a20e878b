"""Wiring of the ``backtracking`` pipeline."""

from kedro.pipeline import Node, Pipeline

from .nodes import combine_history, distill_generator


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline([
        Node(distill_generator,
             ["teacher_model", "degradation_path", "feature_extractor", "reference_stats",
              "params:data", "params:backtracking", "params:shared", "params:checkpointing", "params:distributed"],
             ["generator_model", "generator_ema_model", "stage2_history", "switch_grids_plot"],
             name="distill_generator"),
        Node(combine_history, ["degradation_history", "stage2_history", "params:shared"],
             "backtracking_history", name="combine_history"),
    ], namespace="backtracking", prefix_datasets_with_namespace=False, tags="backtracking")
