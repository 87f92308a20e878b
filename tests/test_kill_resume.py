"""Kill `kedro run` for real (SIGKILL) during teacher pre-training, stage 1 and stage 2, run the same command
again, and compare with an uninterrupted run: weights equal under torch.equal, history rows equal in every
column but wall-clock, one MLflow run with no metric step logged twice. SIGTERM ends the MLflow runs KILLED."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from disback_pipeline.diffusion.checkpoint import read_payload
from disback_pipeline.diffusion.config import soft_merge

from .conftest import copy_project

ROOT = Path(__file__).resolve().parents[1]
KEDRO = Path(sys.executable).parent / "kedro"
ENV = "toy2d"
OUT = Path("data") / ENV
STATES = OUT / "09_training_state"
SMALL = {  # toy2d with every stage small, and a training state every 10 iterations
    "parameters_teacher": {"teacher": {"network": {"mlp": {"width": 64, "num_blocks": 2, "emb_dim": 32}},
                                       "training": {"steps": 200, "batch_size": 128, "warmup_steps": 20,
                                                    "log_every": 0, "checkpoint_every": 10},
                                       "report": {"num_samples": 500}}},
    "parameters_shared": {"shared": {"sampler": {"nfe": 9}}},
    "parameters_degradation": {"degradation": {"k1": 120, "candidates": 12, "probe_size": 128, "batch_size": 64,
                                               "checkpoint_every": 10}},
    "parameters_backtracking": {"backtracking": {"budget": 120, "k2": 10, "batch_size": 64, "eval_every": 40,
                                                 "log_every": 0, "checkpoint_every": 10, "proxy_samples": 200}},
    "parameters_evaluation": {"evaluation": {"reference_samples": 1000, "n_samples": 1000, "batch_size": 1000,
                                             "grid_samples": 200}},
}
pytestmark = pytest.mark.slow


def _copy(dest: Path) -> dict[str, str]:
    """A project copy with the small toy2d settings; returns the environment its commands run with."""
    uri = copy_project(dest, with_src=True)
    for name, override in SMALL.items():
        file = dest / "conf" / ENV / f"{name}.yml"
        file.write_text(yaml.safe_dump(soft_merge(yaml.safe_load(file.read_text()), override)))
    # one thread: results are bit-identical between processes only at equal thread counts
    return {**os.environ, "MLFLOW_TRACKING_URI": uri, "OMP_NUM_THREADS": "1", "KEDRO_DISABLE_TELEMETRY": "1",
            "DO_NOT_TRACK": "true", "MLFLOW_DISABLE_TELEMETRY": "true"}


def _run(repo: Path, env: dict, pipeline: str = "distill", conf_env: str = ENV) -> None:
    out = subprocess.run([str(KEDRO), "run", f"--pipelines={pipeline}", f"--env={conf_env}"], cwd=repo, env=env,
                         capture_output=True, text=True, timeout=600, check=False)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]


def _iteration(file: Path) -> int:
    return int(file.stem.split("-")[1])


def _run_and_stop(repo: Path, env: dict, folder: str, after: int, sig=signal.SIGKILL, pipeline="distill",
                  conf_env: str = ENV):
    """Start the pipeline and send ``sig`` once ``folder`` holds a state past iteration ``after``."""
    proc = subprocess.Popen([str(KEDRO), "run", f"--pipelines={pipeline}", f"--env={conf_env}"], cwd=repo, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    states = repo / "data" / conf_env / "09_training_state" / folder
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        files = sorted(states.glob("state-*.pt"))
        if files and _iteration(files[-1]) >= after:
            proc.send_signal(sig)
            break
        time.sleep(0.005)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode != 0, f"the run ended before it was stopped in {folder}: {err[-2000:]}"
    newest = torch.load(sorted(states.glob("state-*.pt"))[-1], weights_only=True)
    assert not newest["complete"], f"{folder} had finished when the signal came: stop earlier"
    return proc.returncode, err, newest["iteration"]


TOTALS = {"teacher": 200, "degradation": 120, "backtracking": 120}


def _trained(repo: Path) -> dict[str, tuple[int, int]]:
    """Per stage, from its newest (finished) state: (the iteration its process resumed after, the iterations
    that process trained)."""
    out = {}
    for stage, total in TOTALS.items():
        newest = torch.load(sorted((repo / STATES / stage).glob("state-*.pt"))[-1], weights_only=True)
        assert newest["complete"] and newest["iteration"] == total, stage
        out[stage] = (newest["resumed_from"], newest["trained"])
    return out


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("uninterrupted") / "project"
    _run(repo, _copy(repo))
    assert _trained(repo) == {stage: (0, total) for stage, total in TOTALS.items()}
    return repo


def _weights(file: Path) -> dict[str, torch.Tensor]:
    return read_payload(file)["state_dict"]


def _same_weights(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), f"{a.name}: {k} differs"


def _same_rows(a: Path, b: Path) -> None:
    ta, tb = (pd.read_csv(f).drop(columns=["wall_clock_s"]) for f in (a, b))
    pd.testing.assert_frame_equal(ta, tb, check_exact=True)


def _compare(repo: Path, ref: Path) -> None:
    for name in ("teacher.pt", "generator.pt", "generator_ema.pt"):
        _same_weights(ref / OUT / "06_models" / name, repo / OUT / "06_models" / name)
    nodes = sorted((ref / OUT / "06_models/degradation_path").glob("step_*.pt"))
    assert [n.name for n in nodes] == sorted(n.name for n in (repo / OUT / "06_models/degradation_path").glob("*.pt"))
    for node in nodes:
        _same_weights(node, repo / OUT / "06_models/degradation_path" / node.name)
    for table in ("07_model_output/teacher_history.csv", "07_model_output/degradation_history.csv",
                  "08_reporting/backtracking_history.csv"):
        _same_rows(ref / OUT / table, repo / OUT / table)


def _runs(repo: Path, env: dict):
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name("disback_pipeline")
    return client, client.search_runs([exp.experiment_id])


def test_sigkill_in_each_stage_then_the_same_command_ends_as_the_uninterrupted_run(tmp_path, uninterrupted):
    """One project killed three times: in the teacher, then (the same command again) in stage 1, then in stage 2;
    the same command once more finishes the run."""
    repo = tmp_path / "project"
    env = _copy(repo)
    restored = {}
    for folder, after in (("teacher", 60), ("degradation", 40), ("backtracking", 40)):
        code, _, restored[folder] = _run_and_stop(repo, env, folder, after)
        assert code == -signal.SIGKILL and restored[folder] >= after
        # the stages before the killed one finished, each resumed once after its own kill
        for done in list(TOTALS)[:list(TOTALS).index(folder)]:
            newest = torch.load(sorted((repo / STATES / done).glob("state-*.pt"))[-1], weights_only=True)
            assert newest["complete"] and (newest["resumed_from"], newest["trained"]) == \
                (restored[done], TOTALS[done] - restored[done]), done
    _run(repo, env)
    _compare(repo, uninterrupted)
    # each killed stage trained, after its kill, only the iterations its newest state lacked
    assert _trained(repo) == {s: (restored[s], TOTALS[s] - restored[s]) for s in TOTALS}
    client, runs = _runs(repo, env)
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"  # the killed run was continued, not replaced
    run_id = runs[0].info.run_id
    for metric, stage in (("teacher/loss", "teacher"), ("degradation/dsm_loss", "degradation"),
                          ("backtracking/loss_generator", "backtracking")):
        n = TOTALS[stage]
        steps = [m.step for m in client.get_metric_history(run_id, metric)]
        assert sorted(steps) == list(range(1, n + 1)), metric  # every step once
    assert not (repo / STATES / "mlflow_run.json").exists()


def test_sigterm_ends_compare_runs_killed_and_the_same_command_continues_them(tmp_path):
    repo = tmp_path / "project"
    env = _copy(repo)
    code, err, _ = _run_and_stop(repo, env, "compare/disback/backtracking", 30, sig=signal.SIGTERM,
                                 pipeline="compare")
    assert code == 1 and "Aborted" in err  # click reports the KeyboardInterrupt that SIGTERM became
    client, runs = _runs(repo, env)
    status = {r.info.run_name: r.info.status for r in runs}
    parent = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parent) == 1 and parent[0].info.status == "KILLED", status
    assert status[[n for n in status if n.startswith("disback-")][0]] == "KILLED", status
    assert status[[n for n in status if n.startswith("baseline-")][0]] == "FINISHED", status
    _run(repo, env, "compare")
    client, runs = _runs(repo, env)
    assert len(runs) == 3 and {r.info.status for r in runs} == {"FINISHED"}  # same parent, same two arms
    assert [r.info.run_id for r in runs if "mlflow.parentRunId" not in r.data.tags] == [parent[0].info.run_id]
    arm = [r for r in runs if r.info.run_name.startswith("disback-")][0]
    steps = [m.step for m in client.get_metric_history(arm.info.run_id, "backtracking/loss_generator")]
    assert sorted(steps) == list(range(1, TOTALS["backtracking"] + 1))


def test_ctrl_c_ends_the_run_killed(tmp_path):
    repo = tmp_path / "project"
    env = _copy(repo)
    code, err, _ = _run_and_stop(repo, env, "teacher", 30, sig=signal.SIGINT, pipeline="teacher")
    assert code == 1 and "Aborted" in err
    _, runs = _runs(repo, env)
    assert [r.info.status for r in runs] == ["KILLED"]
    assert (repo / STATES / "mlflow_run.json").is_file()  # the same command will continue this run


def _tiny_t2i(repo: Path) -> dict[str, str]:
    """A project copy with the tiny_t2i model written and a longer stage 2 (40 iterations, a state every 2)."""
    from disback_pipeline.tiny_t2i import main as write_tiny

    env = _copy(repo)
    assert write_tiny([str(repo / "data/01_raw/tiny_t2i")]) == 0
    file = repo / "conf/tiny_t2i/parameters_backtracking.yml"
    file.write_text(yaml.safe_dump(soft_merge(yaml.safe_load(file.read_text()), {"backtracking": {
        "budget": 40, "eval_every": 20}})))
    return env


def test_sigkill_in_stage_2_of_a_text_to_image_run_with_lora_then_it_ends_as_the_uninterrupted_run(tmp_path):
    """tiny_t2i (latents, prompts, guidance, LoRA adapters, gradient checkpointing): killed in stage 2, the same
    command continues from the newest state (adapters, optimisers, the prompt stream's RNG) and ends with the
    uninterrupted run's weights and history."""
    ref, repo = tmp_path / "ref", tmp_path / "project"
    _run(ref, _tiny_t2i(ref), conf_env="tiny_t2i")
    env = _tiny_t2i(repo)
    code, _, restored = _run_and_stop(repo, env, "backtracking", 10, conf_env="tiny_t2i")
    assert code == -signal.SIGKILL and 10 <= restored < 40
    state = torch.load(sorted((repo / "data/tiny_t2i/09_training_state/backtracking").glob("state-*.pt"))[-1],
                       weights_only=True)
    assert all(".lora_" in k for k in state["modules"]["generator"])  # the state holds the adapters only
    _run(repo, env, conf_env="tiny_t2i")
    out = Path("data/tiny_t2i")
    for name in ("generator.pt", "generator_ema.pt"):
        _same_weights(ref / out / "06_models" / name, repo / out / "06_models" / name)
    history = out / "08_reporting/backtracking_history.csv"
    _same_rows(ref / history, repo / history)
    newest = torch.load(sorted((repo / "data/tiny_t2i/09_training_state/backtracking").glob("state-*.pt"))[-1],
                        weights_only=True)
    assert newest["complete"] and (newest["resumed_from"], newest["trained"]) == (restored, 40 - restored)
