"""Wiring of the ``compare`` pipeline: the degradation and backtracking pipelines once per arm, each arm in a
namespace of its own, then the report.

An arm reads ``params:compare.<arm>`` in place of ``params:shared`` (the arms differ in ``enabled`` only). The
project hooks give an arm's nodes their own training-state folder (``<checkpointing.dir>/compare/<arm>``)
and an MLflow child run (:mod:`disback_pipeline.hooks`).
"""

from kedro.pipeline import Node, Pipeline, pipeline

from ..backtracking import create_pipeline as backtracking
from ..degradation import create_pipeline as degradation
from ..reference import create_pipeline as reference
from ..teacher import create_pipeline as teacher
from .nodes import convergence_report

ARMS = ("baseline", "disback")
SHARED_INPUTS = {"teacher_model", "feature_extractor", "reference_stats"}
RUN_PARAMS = ("params:data", "params:degradation", "params:backtracking", "params:checkpointing",
              "params:distributed")


def arm(name: str) -> Pipeline:
    """Stages 1 and 2 of one arm; its history leaves the namespace as ``<arm>_history``."""
    return pipeline(degradation() + backtracking(), namespace=name, inputs=SHARED_INPUTS,
                    outputs={"backtracking_history": f"{name}_history"},
                    parameters={**{p: p for p in RUN_PARAMS}, "params:shared": f"params:compare.{name}"})


def create_pipeline(**kwargs) -> Pipeline:
    report = Pipeline([
        # the arms' histories leave their namespaces under plain names: a node outside a namespace reads no
        # dotted dataset
        Node(convergence_report, ["baseline_history", "disback_history", "params:data"],
             ["convergence", "convergence_plot", "convergence_table"], name="convergence_report"),
    ])
    return teacher() + reference() + sum((arm(a) for a in ARMS), Pipeline([])) + report
