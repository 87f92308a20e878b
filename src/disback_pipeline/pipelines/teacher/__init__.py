"""``teacher``: pre-train (EDM loss) or load the teacher diffusion model."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
