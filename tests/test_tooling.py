"""The tools around the pipelines: MLflow UI, Kedro-Viz and DVC, run for real on loopback / tmp."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from disback_pipeline.diffusion.config import soft_merge

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ENV = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "KEDRO_DISABLE_TELEMETRY": "1",
       "DO_NOT_TRACK": "true", "MLFLOW_DISABLE_TELEMETRY": "true", "DVC_NO_ANALYTICS": "1",
       "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_mlflow_ui_answers_on_loopback(tmp_path):
    port = _free_port()
    proc = subprocess.Popen(
        [str(BIN / "mlflow"), "ui", "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        cwd=tmp_path, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline, status = time.time() + 90, None
        while time.time() < deadline and status is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as resp:
                    status = resp.status
            except OSError:
                time.sleep(1)
        assert status == 200
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _git_copy(tmp_path: Path) -> Path:
    """The tracked files of the project in a fresh git repository."""
    dest = tmp_path / "repo"
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           check=True, capture_output=True, text=True).stdout.split()
    for f in files:
        if (ROOT / f).is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, dest / f)
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    return dest


def _commit(repo: Path) -> None:
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x"], cwd=repo, check=True)


def _set(repo: Path, name: str, **updates) -> None:
    """Set dotted keys in conf/base, each in the file of its block (``shared__s_init``: parameters_shared.yml)."""
    for dotted, value in updates.items():
        keys = dotted.split("__")
        file = repo / "conf" / "base" / f"parameters_{keys[0]}.yml"
        cfg = yaml.safe_load(file.read_text())
        node = cfg
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = value
        file.write_text(yaml.safe_dump(cfg))


@pytest.mark.slow
def test_kedro_viz_build_offline(tmp_path):
    repo = _git_copy(tmp_path)
    out = subprocess.run([str(BIN / "kedro"), "viz", "build"], check=False, cwd=repo, env=ENV,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert (repo / "build" / "index.html").is_file()
    graph = json.loads((repo / "build" / "api" / "main").read_text())
    # the stages show as collapsible groups, and every persisted dataset sits in its data layer
    assert {"teacher", "reference", "degradation", "backtracking", "evaluation"} <= set(graph["modular_pipelines"])
    layers = {n["name"]: n.get("layer") for n in graph["nodes"] if n["type"] == "data"}
    assert layers["teacher_model"] == "models" and layers["reference_stats"] == "model_input"
    assert layers["backtracking_history"] == "reporting" and layers["degradation_history"] == "model_output"


def _dvc(repo: Path, *args: str) -> str:
    out = subprocess.run([str(BIN / "dvc"), *args], check=False, cwd=repo, env=ENV, capture_output=True, text=True,
                         timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout


@pytest.mark.slow
def test_dvc_repro_chain_is_reproducible_and_incremental(tmp_path):
    repo = _git_copy(tmp_path)
    _set(repo, "teacher", teacher__network__unet__model_channels=8, teacher__training__steps=4,
         teacher__training__batch_size=8,
         teacher__report__num_samples=4, shared__sampler__nfe=3)
    _set(repo, "degradation", degradation__k1=4, degradation__n_nodes=2, degradation__batch_size=4,
         degradation__candidates=4, degradation__probe_size=8)
    _set(repo, "backtracking", backtracking__k2=2, backtracking__budget=4, backtracking__batch_size=4,
         backtracking__eval_every=2)
    _set(repo, "evaluation", evaluation__domain__steps=20, evaluation__n_samples=30, backtracking__proxy_samples=20,
         evaluation__grid_samples=4, evaluation__reference_samples=200)
    _commit(repo)
    base = ("compare", "evaluation")  # with their upstream stages: the base environment's chain
    first = _dvc(repo, "repro", *base)
    for stage in ("teacher", "reference", "degradation", "backtracking", "evaluation", "compare"):
        assert f"Running stage '{stage}'" in first
    assert (repo / "data/base/06_models/degradation_path/manifest.json").is_file()
    assert (repo / "data/base/08_reporting/convergence.json").is_file()
    # a forced re-run of the teacher gives the same weights (DVC hash), so after an evaluation parameter changes
    # the evaluation alone re-runs: nothing between the teacher and it
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    forced = _dvc(repo, "repro", "--force", "--single-item", "teacher")
    assert "Running stage 'teacher'" in forced
    relock = yaml.safe_load((repo / "dvc.lock").read_text())
    model = [o for o in lock["stages"]["teacher"]["outs"] if o["path"].endswith("teacher.pt")][0]
    assert [o for o in relock["stages"]["teacher"]["outs"] if o["path"].endswith("teacher.pt")] == [model]
    _set(repo, "evaluation", evaluation__n_samples=31)
    third = _dvc(repo, "repro", *base)
    assert "Running stage 'evaluation'" in third
    for stage in ("teacher", "reference", "degradation", "backtracking", "compare"):
        assert f"Running stage '{stage}'" not in third
    metrics = _dvc(repo, "metrics", "show")
    assert "metrics.json" in metrics and "convergence.json" in metrics
    # another environment: one stage, its own output tree; base's outputs and lock entries stay as they were
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    for name, updates in {"teacher": {"training": {"steps": 30}, "report": {"num_samples": 100}},
                          "degradation": {"k1": 10, "candidates": 4, "probe_size": 32},
                          "backtracking": {"budget": 10, "k2": 3, "eval_every": 5, "proxy_samples": 100},
                          "evaluation": {"reference_samples": 300, "n_samples": 300, "batch_size": 300,
                                         "grid_samples": 100}}.items():
        file = repo / "conf" / "toy2d" / f"parameters_{name}.yml"
        file.write_text(yaml.safe_dump(soft_merge(yaml.safe_load(file.read_text()), {name: updates})))
    _commit(repo)
    toy = _dvc(repo, "repro", "distill_env@toy2d")
    assert "Running stage 'distill_env@toy2d'" in toy and "Running stage 'teacher'" not in toy
    assert (repo / "data/toy2d/06_models/generator_ema.pt").is_file()
    assert json.loads((repo / "data/toy2d/08_reporting/metrics.json").read_text())["headline_metric"] == "reverse_kl"
    relock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    assert all(relock[k] == v for k, v in lock.items())
    assert "up to date" in _dvc(repo, "repro", "distill_env@toy2d", *base)
