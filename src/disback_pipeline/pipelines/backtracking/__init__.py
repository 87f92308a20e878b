"""``backtracking``: distil the one-step generator, walking the path back to the teacher (stage 2)."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
