"""``evaluation``: teacher (Heun) vs one-step student, metrics, grids and curves."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
