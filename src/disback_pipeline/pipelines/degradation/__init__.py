"""``degradation``: record the path from the teacher towards the initial generator (stage 1)."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
