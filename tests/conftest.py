"""Shared fixtures: telemetry off, a throwaway copy of the project for Kedro runs, the CPU for every test not
marked ``gpu``, and every process-wide setting a test may change restored after it."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

for _k, _v in {"KEDRO_DISABLE_TELEMETRY": "1", "DO_NOT_TRACK": "true",
               "MLFLOW_DISABLE_TELEMETRY": "true", "DVC_NO_ANALYTICS": "1"}.items():
    os.environ.setdefault(_k, _v)

ROOT = Path(__file__).resolve().parents[1]

# the longest files (a minute or more each on a 2-core machine): in parallel runs they start first, so that no
# worker is left with one of them after the others have finished
LONGEST_FIRST = ("test_tooling.py", "test_kill_resume.py", "test_machines.py", "test_distributed.py",
                 "test_streaming.py", "test_toy2d_methods.py", "test_diffusers_teacher.py", "test_resume.py")

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs the files in parallel worker processes (pytest-xdist), one per core: each worker and the
    # processes its tests start compute on one thread, so the workers do not contend for the cores
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    """In a parallel run, the longest files first (the scheduler hands out files in collection order); a run in
    one process keeps the order it was given (`pytest $(ls tests/test_*.py | sort -r)` runs in reverse)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
        items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


class ProjectCopy:
    """A copy of conf/ and pyproject.toml in a temporary folder, run from there."""

    def __init__(self, path: Path):
        self.path = path

    def edit(self, env: str, name: str, **updates) -> None:
        """Set dotted keys (``teacher__training__steps=5``) in conf/<env>/<name>.yml; a parameters key goes to the
        file of its block (``shared__s_init`` to parameters_shared.yml: a block lives in one file an environment)."""
        for dotted, value in updates.items():
            keys = dotted.split("__")
            file = self.path / "conf" / env / (f"parameters_{keys[0]}.yml" if name.startswith("parameters_")
                                              else f"{name}.yml")
            cfg = (yaml.safe_load(file.read_text()) if file.exists() else None) or {}
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


def copy_project(dest: Path, with_src: bool = False) -> str:
    """conf/ (without local/) and pyproject.toml (and src/) copied to ``dest``, every stage pinned to the CPU
    and gloo, the MLflow store a sqlite file inside ``dest``; returns the store's URI."""
    dest.mkdir(parents=True)
    shutil.copytree(ROOT / "conf", dest / "conf", ignore=shutil.ignore_patterns("local"))
    (dest / "conf" / "local").mkdir()
    shutil.copy(ROOT / "pyproject.toml", dest / "pyproject.toml")
    if with_src:
        shutil.copytree(ROOT / "src", dest / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for file in (dest / "conf").rglob("parameters_*.yml"):  # `auto` would take a GPU where there is one
        text = re.sub(r"^(\s*)device: auto\b", r"\1device: cpu", file.read_text(), flags=re.M)
        file.write_text(re.sub(r"^(\s*)backend: auto\b", r"\1backend: gloo", text, flags=re.M))
    uri = f"sqlite:///{dest / 'mlflow.db'}"
    mlflow_yml = dest / "conf" / "base" / "mlflow.yml"
    mlflow_yml.write_text(mlflow_yml.read_text().replace("sqlite:///mlflow.db", uri))
    return uri


@pytest.fixture(autouse=True)
def _cpu_and_restored_globals(request, monkeypatch):
    """Tests not marked ``gpu`` see no CUDA device (nor do the processes they start); torch's thread count,
    NumPy's floating-point error handling and torch's default dtype are put back after every test."""
    if request.node.get_closest_marker("gpu") is None:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    threads, errors, dtype = torch.get_num_threads(), np.geterr(), torch.get_default_dtype()
    yield
    torch.set_num_threads(threads)
    np.seterr(**errors)
    torch.set_default_dtype(dtype)


@pytest.fixture
def project(tmp_path, monkeypatch) -> ProjectCopy:
    dest = tmp_path / "project"
    uri = copy_project(dest)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(dest)
    yield ProjectCopy(dest)
    import mlflow

    while mlflow.active_run():
        mlflow.end_run()


TINY_UNET = {"backbone": "unet", "sigma_data": 0.5, "model_channels": 8, "channel_mult": [1, 2],
             "num_blocks": 1, "attn_resolutions": [4], "dropout": 0.0}
