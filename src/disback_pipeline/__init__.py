"""disback-pipeline: one-step diffusion distillation with DisBack, as a Kedro project."""

__version__ = "0.1.0"
