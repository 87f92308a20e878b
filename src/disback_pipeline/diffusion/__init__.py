"""Plain-PyTorch core of disback-pipeline; it imports neither Kedro nor MLflow.

Where to look:
- the losses: :mod:`.losses` (EDMLoss for DSM; DILoss, DMDLoss, SiDLoss for the generator, one call
  signature, each owning its noise-level sampling);
- the loops: :mod:`.disback` (stage 1 ``record_degradation``, stage 2 ``distill``: a fake-score step
  and a generator step per iteration) and :mod:`.teacher` (pre-training), built on the one optimiser
  step and status line in :mod:`.training`;
- the schedule: :mod:`.schedule` (which path node is the target when: fixed K2 or adaptive);
- the path: :mod:`.path` (its checkpoints on disk, and which stage-1 snapshots become nodes);
- the settings: :mod:`.config` (one frozen dataclass per stage, unknown keys refused);
- preconditioning :mod:`.precond`, backbones :mod:`.backbones` and :mod:`.edm_networks`, samplers
  :mod:`.sampling`, data sources :mod:`.data`, checkpoint I/O :mod:`.checkpoint`, EDM snapshots
  :mod:`.edm_import`.

Evaluation (quality metrics, features, convergence) sits beside it in ``disback_pipeline.evaluation``;
Kedro nodes in ``disback_pipeline.pipelines`` are thin adapters over both.
"""
