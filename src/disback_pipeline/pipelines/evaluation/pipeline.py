"""Wiring of the ``evaluation`` pipeline."""

from kedro.pipeline import Node, Pipeline

from .nodes import evaluate_models, package_student, register_student


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline([
        Node(evaluate_models,
             ["teacher_model", "generator_ema_model", "feature_extractor", "reference_stats", "backtracking_history",
              "params:data", "params:evaluation", "params:shared"],
             ["metrics", "teacher_grid_plot", "initial_generator_grid_plot", "student_grid_plot", "quality_curve_plot"],
             name="evaluate_models"),
        Node(package_student, "generator_ema_model", "student_model", name="package_student"),
        Node(register_student, ["student_model", "metrics", "teacher_model", "params:data"],
             "registered_model", name="register_student"),
    ], namespace="evaluation", prefix_datasets_with_namespace=False, tags="evaluation")
