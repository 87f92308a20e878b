"""Shared fixtures: telemetry off, a throwaway copy of the project for Kedro runs."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import yaml

for _k, _v in {"KEDRO_DISABLE_TELEMETRY": "1", "DO_NOT_TRACK": "true",
               "MLFLOW_DISABLE_TELEMETRY": "true", "DVC_NO_ANALYTICS": "1"}.items():
    os.environ.setdefault(_k, _v)

ROOT = Path(__file__).resolve().parents[1]


class ProjectCopy:
    """A copy of conf/ and pyproject.toml in a temporary folder, run from there."""

    def __init__(self, path: Path):
        self.path = path

    def edit(self, env: str, name: str, **updates) -> None:
        """Set dotted keys (``teacher__training__steps=5``) in conf/<env>/<name>.yml."""
        file = self.path / "conf" / env / f"{name}.yml"
        cfg = yaml.safe_load(file.read_text()) if file.exists() else {}
        for dotted, value in updates.items():
            keys = dotted.split("__")
            node = cfg
            for k in keys[:-1]:
                node = node.setdefault(k, {})
            node[keys[-1]] = value
        file.write_text(yaml.safe_dump(cfg))

    def run(self, pipeline: str, env: str = "base"):
        from kedro.framework.project import configure_project
        from kedro.framework.session import KedroSession

        configure_project("disback_pipeline")
        import mlflow

        try:
            with KedroSession.create(project_path=self.path, env=env) as session:
                return session.run(pipeline_names=[pipeline])
        finally:
            # in one process MLflow's fluent API keeps the finished (or failed) run on its stack; a `kedro run`
            # from the shell is a process of its own, so end it here to make the next run a fresh one
            while mlflow.active_run():
                mlflow.end_run(mlflow.get_run(mlflow.active_run().info.run_id).info.status)


@pytest.fixture
def project(tmp_path, monkeypatch) -> ProjectCopy:
    dest = tmp_path / "project"
    dest.mkdir()
    shutil.copytree(ROOT / "conf", dest / "conf", ignore=shutil.ignore_patterns("local"))
    (dest / "conf" / "local").mkdir()
    shutil.copy(ROOT / "pyproject.toml", dest / "pyproject.toml")
    uri = f"sqlite:///{dest / 'mlflow.db'}"
    mlflow_yml = dest / "conf" / "base" / "mlflow.yml"
    mlflow_yml.write_text(mlflow_yml.read_text().replace("sqlite:///mlflow.db", uri))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(dest)
    yield ProjectCopy(dest)
    import mlflow

    while mlflow.active_run():
        mlflow.end_run()


TINY_UNET = {"backbone": "unet", "sigma_data": 0.5, "model_channels": 8, "channel_mult": [1, 2],
             "num_blocks": 1, "attn_resolutions": [4], "dropout": 0.0}
