"""The main job as one pipeline (a folder of its own so Kedro's lazy
pipeline discovery finds it by name)."""

from kedro.pipeline import Pipeline

from ..backtracking import create_pipeline as backtracking
from ..degradation import create_pipeline as degradation
from ..teacher import create_pipeline as teacher


def create_pipeline(**kwargs) -> Pipeline:
    return teacher() + degradation() + backtracking()
