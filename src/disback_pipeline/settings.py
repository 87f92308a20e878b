"""Kedro project settings.

kedro-mlflow registers its hooks through its plugin entry point; its
configuration lives in conf/base/mlflow.yml (a sqlite store). Our own hook
checks every stage's parameters when a run starts; another lets an
interrupted run continue its MLflow run. Environments only
override: parameters are soft-merged over conf/base, so conf/<env>/ holds
just what differs.
"""

from kedro.config import OmegaConfigLoader

from disback_pipeline.hooks import MarkExperiment, ResumeRun, ValidateParameters

HOOKS = (ValidateParameters(), MarkExperiment(), ResumeRun())

CONFIG_LOADER_CLASS = OmegaConfigLoader
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    "merge_strategy": {"parameters": "soft"},
}
