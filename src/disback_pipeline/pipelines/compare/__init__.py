"""``compare``: baseline and DisBack from the same teacher, seeds and budget, and a convergence report."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
