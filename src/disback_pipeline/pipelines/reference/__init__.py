"""``reference``: the FID feature extractor and the real data's reference statistics."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
