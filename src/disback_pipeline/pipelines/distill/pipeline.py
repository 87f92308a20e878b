"""The main job as one pipeline (a folder of its own so Kedro's lazy
pipeline discovery finds it by name)."""

from kedro.pipeline import Pipeline

from ..backtracking import create_pipeline as backtracking
from ..degradation import create_pipeline as degradation
from ..evaluation import create_pipeline as evaluation
from ..reference import create_pipeline as reference
from ..teacher import create_pipeline as teacher


def create_pipeline(**kwargs) -> Pipeline:
    return teacher() + reference() + degradation() + backtracking() + evaluation()
