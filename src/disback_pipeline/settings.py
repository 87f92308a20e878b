"""Kedro project settings.

kedro-mlflow registers its hooks through its plugin entry point; its
configuration lives in conf/base/mlflow.yml (a sqlite store).
"""

from kedro.config import OmegaConfigLoader

CONFIG_LOADER_CLASS = OmegaConfigLoader
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
}
