"""Wiring of the ``evaluation`` pipeline."""

from kedro.pipeline import Node, Pipeline

from .nodes import evaluate_models


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline([
        Node(evaluate_models,
             ["teacher_model", "generator_ema_model", "feature_extractor", "reference_stats", "backtracking_history",
              "params:data", "params:teacher", "params:evaluation"],
             ["metrics", "teacher_grid_plot", "initial_generator_grid_plot", "student_grid_plot", "quality_curve_plot"],
             name="evaluate_models"),
    ], namespace="evaluation", prefix_datasets_with_namespace=False, tags="evaluation")
