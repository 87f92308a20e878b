"""``distill``: the main job, teacher -> reference -> degradation -> backtracking -> evaluation."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
