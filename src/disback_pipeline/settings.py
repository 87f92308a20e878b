"""Kedro project settings.

kedro-mlflow registers its hooks through its plugin entry point; its
configuration lives in conf/base/mlflow.yml (a sqlite store). Our own hooks
build every stage's settings once when a run starts and hand them to the
nodes, give each compare arm an MLflow child run, and let an interrupted
run continue its MLflow run. Environments only
override: parameters are soft-merged over conf/base, so conf/<env>/ holds
just what differs.
"""

from kedro.config import OmegaConfigLoader

from disback_pipeline.hooks import ArmRuns, MarkExperiment, OtherMachines, ResumeRun, Settings

_SETTINGS = Settings()
HOOKS = (_SETTINGS, ArmRuns(_SETTINGS), MarkExperiment(), ResumeRun(_SETTINGS), OtherMachines())

CONFIG_LOADER_CLASS = OmegaConfigLoader
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    "merge_strategy": {"parameters": "soft"},
}
