"""Wiring of the ``compare`` pipeline: two namespaced arms of one template, then the report."""

from kedro.pipeline import Node, Pipeline, pipeline

from ..reference import create_pipeline as reference
from ..teacher import create_pipeline as teacher
from .nodes import convergence_report, run_method

SHARED_INPUTS = ("teacher_model", "feature_extractor", "reference_stats")
SHARED_PARAMS = ("params:data", "params:degradation", "params:backtracking", "params:evaluation",
                 "params:checkpointing")


def create_pipeline(**kwargs) -> Pipeline:
    template = Pipeline([
        Node(run_method, [*SHARED_INPUTS, *SHARED_PARAMS[:-1], "params:method", SHARED_PARAMS[-1]],
             ["generator_ema_model", "history", "switch_grids_plot"], name="run_method"),
    ])
    arms = [
        pipeline(template, namespace=arm, inputs=set(SHARED_INPUTS), outputs={"history": f"{arm}_history"},
                 parameters={**{p: p for p in SHARED_PARAMS}, "params:method": f"params:compare.{arm}"})
        for arm in ("baseline", "disback")
    ]
    report = Pipeline([
        # the arms' histories leave their namespaces under plain names: a node outside a namespace reads no
        # dotted dataset
        Node(convergence_report, ["baseline_history", "disback_history", "params:data"],
             ["convergence", "convergence_plot", "convergence_table"], name="convergence_report"),
    ])
    return teacher() + reference() + sum(arms, Pipeline([])) + report
