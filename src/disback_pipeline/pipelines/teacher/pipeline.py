"""Wiring of the ``teacher`` pipeline."""

from kedro.pipeline import Node, Pipeline

from .nodes import report_teacher, train_or_load_teacher


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline([
        Node(train_or_load_teacher, ["params:data", "params:teacher", "params:checkpointing", "params:distributed"],
             ["teacher_model", "teacher_history"], name="train_or_load_teacher"),
        Node(report_teacher, ["teacher_model", "params:data", "params:teacher", "params:shared"],
             ["teacher_samples_plot", "teacher_metrics"], name="report_teacher"),
    ], namespace="teacher", prefix_datasets_with_namespace=False, tags="teacher")
