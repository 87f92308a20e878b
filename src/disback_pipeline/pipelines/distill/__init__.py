"""``distill``: the main job, teacher -> degradation -> backtracking (-> evaluation)."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
