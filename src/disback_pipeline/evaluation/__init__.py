"""Evaluation beside the core: how good a generator is, and how fast it got there.

- :mod:`.quality`: samples of teacher and student, their throughput, FID against reference
  statistics (images) and the exact metrics (2-D mixtures).
- :mod:`.metrics`: exact metrics of 2-D Gaussian mixtures (NLL, modes, off-mode mass, k-NN KL).
- :mod:`.features`: feature extractors (the offline domain classifier, a local Inception file).
- :mod:`.convergence`: iterations and wall-clock to reach a quality level; speed-ups.

Like :mod:`disback_pipeline.diffusion` it imports neither Kedro nor MLflow.
"""
