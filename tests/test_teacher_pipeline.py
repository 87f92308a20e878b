import json

import mlflow
import pandas as pd
import pytest
import torch

from disback_pipeline.diffusion.checkpoint import CheckpointError, load_checkpoint
from disback_pipeline.pipelines.teacher.nodes import train_or_load_teacher

from .conftest import TINY_UNET


def test_teacher_kedro_run_logs_to_mlflow(project):
    project.edit("base", "parameters_teacher", teacher__network=TINY_UNET, teacher__training__steps=6,
                 teacher__training__batch_size=8, teacher__training__log_every=3,
                 teacher__report__num_samples=4, shared__sampler__nfe=3)
    project.run("teacher")
    ckpt = load_checkpoint(project.path / "data/base/06_models/teacher.pt")
    assert ckpt.metadata["step"] == 6 and ckpt.config["img_resolution"] == 8
    hist = pd.read_csv(project.path / "data/base/07_model_output/teacher_history.csv")
    assert hist["step"].tolist() == list(range(1, 7))
    assert (project.path / "data/base/08_reporting/teacher_samples.png").stat().st_size > 1000
    metrics = json.loads((project.path / "data/base/08_reporting/teacher_metrics.json").read_text())
    assert metrics["nfe"] == 3 and metrics["samples_per_s"] > 0

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{project.path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("disback_pipeline")
    (run,) = client.search_runs([exp.experiment_id])
    losses = client.get_metric_history(run.info.run_id, "teacher/loss")
    assert sorted(m.step for m in losses) == list(range(1, 7))
    assert losses[0].value == pytest.approx(hist["loss"][0])
    assert run.data.params["teacher.training.steps"] == "6"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"teacher_samples.png", "teacher_metrics.json"} <= artifacts


def test_teacher_load_mode(tmp_path):
    from disback_pipeline.diffusion.backbones import build_network
    from disback_pipeline.diffusion.checkpoint import Checkpoint, save_checkpoint

    cfg = {"backbone": "mlp", "dim": 2, "width": 8, "num_blocks": 1, "emb_dim": 8}
    net = build_network(cfg)
    save_checkpoint(Checkpoint(net, cfg, {"step": 1}), tmp_path / "t.pt")
    ckpt, hist = train_or_load_teacher({}, {"mode": "load", "checkpoint_path": str(tmp_path / "t.pt")})
    assert torch.equal(ckpt.net.backbone.out.weight, net.backbone.out.weight) and hist.empty
    with pytest.raises(CheckpointError, match="does not exist"):
        train_or_load_teacher({}, {"mode": "load", "checkpoint_path": str(tmp_path / "missing.pt")})
    with pytest.raises(ValueError, match="teacher.checkpoint_path must be set when mode is 'load'"):
        train_or_load_teacher({}, {"mode": "load"})
    with pytest.raises(ValueError, match="teacher.mode must be one of pretrain | load, got 'finetune'"):
        train_or_load_teacher({}, {"mode": "finetune"})


def test_nan_in_a_run_stops_it_failed_and_keeps_outputs_and_the_last_good_state(project, monkeypatch):
    """The divergence guard inside `kedro run`: a NaN batch after step 7 of a retrain."""
    from disback_pipeline.diffusion.data import TensorImages

    tiny = dict(teacher__network=TINY_UNET, teacher__training__batch_size=8, teacher__training__log_every=0,
                teacher__training__checkpoint_every=3, teacher__report__num_samples=4, shared__sampler__nfe=3)
    project.edit("base", "parameters_teacher", teacher__training__steps=6, **tiny)
    project.run("teacher")
    teacher_file = project.path / "data/base/06_models/teacher.pt"
    before = teacher_file.read_bytes()

    project.edit("base", "parameters_teacher", teacher__training__steps=12)  # new settings: trains afresh
    real, calls = TensorImages.raw, {"n": 0}

    def poisoned(self, idx):  # the training stream draws one batch a step through raw()
        calls["n"] += 1
        x, labels = real(self, idx)
        return (x * float("nan"), labels) if calls["n"] == 8 else (x, labels)

    monkeypatch.setattr(TensorImages, "raw", poisoned)
    with pytest.raises(Exception, match=r"teacher pre-training diverged at iteration 8: the loss is nan"):
        project.run("teacher")
    assert teacher_file.read_bytes() == before  # the earlier output is untouched
    states = sorted((project.path / "data/base/09_training_state/teacher").glob("state-*.pt"))
    assert [s.name for s in states] == ["state-000000003.pt", "state-000000006.pt"]  # the last good ones
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{project.path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("disback_pipeline")
    runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"])
    assert runs[0].info.status == "FAILED"

    monkeypatch.setattr(TensorImages, "raw", real)  # the cause removed, the same command continues from 6
    project.run("teacher")
    hist = pd.read_csv(project.path / "data/base/07_model_output/teacher_history.csv")
    assert hist["step"].tolist() == list(range(1, 13)) and hist["loss"].notna().all()


def test_a_second_run_in_the_same_environment_stops_at_once(project):
    import fcntl

    project.edit("base", "parameters_teacher", teacher__network=TINY_UNET, teacher__training__steps=2,
                 teacher__training__batch_size=8, teacher__report__num_samples=4, shared__sampler__nfe=3)
    lock = project.path / "data/base/09_training_state/.lock"
    lock.parent.mkdir(parents=True)
    with open(lock, "w") as held:  # another run holds the environment
        fcntl.flock(held, fcntl.LOCK_EX)
        held.write("pid 12345")
        held.flush()
        with pytest.raises(RuntimeError, match=r"another `kedro run` \(pid 12345\) is using .*base/09_training_state"):
            project.run("teacher")
        assert not (project.path / "data/base/06_models/teacher.pt").exists()
    project.run("teacher")  # unlocked: the run goes ahead
    assert (project.path / "data/base/06_models/teacher.pt").is_file()
