"""Plain-PyTorch core of disback-pipeline.

Everything the method needs lives here and imports neither Kedro nor MLflow:
preconditioning (:mod:`.precond`), backbones (:mod:`.backbones`), losses
(:mod:`.losses`), samplers (:mod:`.sampling`), data sources (:mod:`.data`),
checkpoint I/O (:mod:`.checkpoint`) and training helpers (:mod:`.training`).
Kedro nodes in ``disback_pipeline.pipelines`` are thin adapters over it.
"""
