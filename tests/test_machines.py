"""Several machines: the primary's ranks and a worker's (`python -m disback_pipeline.worker`) joined over the
loopback address, each "machine" a process of its own (the worker in a folder of its own, as another machine
would be). The tolerances are test_distributed.py's: one process with the global batch against the ranks,
1e-5 absolute on the weights."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from disback_pipeline.diffusion import distributed
from disback_pipeline.diffusion.config import ConfigError, DistributedConfig
from disback_pipeline.diffusion.data import SourceOnEachMachine, make_data_source

from .conftest import ROOT, ProjectCopy, copy_project
from .test_distributed import TOL, max_diff, teacher_job


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Worker:
    """`python -m disback_pipeline.worker` in its own folder and process group; stopped by the test."""

    def __init__(self, endpoint: str, folder: Path, nproc: int = 1):
        folder.mkdir(parents=True, exist_ok=True)
        self.log = folder / f"worker-{time.monotonic_ns()}.log"
        env = {**os.environ, "PYTHONPATH": str(ROOT)}  # the tests' jobs travel by name, as the package's do
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "disback_pipeline.worker", "--endpoint", endpoint,
                                          "--nproc-per-node", str(nproc), "--wait", "60"], cwd=folder, env=env,
                                         stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def kill(self) -> None:
        """SIGKILL to the worker alone: its ranks stop with it (as a machine's would)."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> int | None:
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            return None

    def text(self) -> str:
        return self.log.read_text()


@pytest.fixture
def endpoint():
    yield f"127.0.0.1:{free_port()}"
    distributed.close_machines("FAILED")  # a test that failed before its run ended leaves no store behind


def test_two_machines_equal_one_process(tmp_path, endpoint):
    one, loss_one = distributed.launch(teacher_job, "ring", 16, 6, nproc=1)
    worker = Worker(endpoint, tmp_path / "machine2")
    try:
        two, loss_two = distributed.launch(teacher_job, "ring", 8, 6, nproc=1, backend="gloo",
                                           machines=distributed.Machines(2, endpoint, 60, 10))
        distributed.close_machines("FINISHED")
        assert worker.stop() == 0, worker.text()
    finally:
        worker.stop()
    assert max_diff(one, two) < TOL
    assert np.allclose(loss_one, loss_two, atol=1e-6)
    assert "stage " in worker.text() and "the run ended: FINISHED" in worker.text()
    assert [p.name for p in (tmp_path / "machine2").iterdir()] == [worker.log.name]  # the worker wrote nothing


def test_a_machine_that_never_joins_is_named(endpoint):
    start = time.monotonic()
    with pytest.raises(distributed.MachinesError, match=r"1 of 3 machines joined .* distributed.join_timeout_s = 3 s"):
        distributed.launch(teacher_job, "ring", 8, 6, nproc=1, backend="gloo",
                           machines=distributed.Machines(3, endpoint, 3, 10))
    assert time.monotonic() - start < 30


def _folder(root: Path, shade: int) -> None:
    for label in ("a", "b"):
        (root / "imgs" / label).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((8, 8), shade + i, np.uint8)).save(root / "imgs" / label / f"{i}.png")


def test_a_machine_with_other_data_is_refused_at_the_start(tmp_path, endpoint, monkeypatch):
    """The same relative data.path holds other images on the worker's machine: no rank trains, and the error
    names the machine and the path."""
    _folder(tmp_path / "primary", 10)
    _folder(tmp_path / "machine2", 10)
    (tmp_path / "machine2" / "imgs" / "b" / "2.png").unlink()  # one file fewer there
    monkeypatch.chdir(tmp_path / "primary")
    cfg = {"source": "image_folder", "path": "imgs", "resolution": 8, "channels": 1, "workers": 0}
    source = SourceOnEachMachine(cfg, make_data_source(cfg).content_sha256())
    worker = Worker(endpoint, tmp_path / "machine2")
    try:
        with pytest.raises(distributed.MachinesError) as info:
            distributed.launch(len, source, nproc=1, backend="gloo", machines=distributed.Machines(2, endpoint, 60, 10))
        distributed.close_machines("FAILED")
        assert worker.stop() == 1
    finally:
        worker.stop()
    message = str(info.value)
    assert "rank 1 on machine 2 of 2" in message and "data.path 'imgs'" in message
    assert str(tmp_path / "machine2" / "imgs") in message  # where it is on that machine
    assert "rank 0" not in message  # the primary's own data are what the others are held to

    worker = Worker(endpoint, tmp_path / "primary")  # the same files: the stage runs
    try:
        assert distributed.launch(len, source, nproc=1, backend="gloo",
                                  machines=distributed.Machines(2, endpoint, 60, 10)) == 6
        distributed.close_machines("FINISHED")
        assert worker.stop() == 0
    finally:
        worker.stop()


def test_settings_for_several_machines():
    assert DistributedConfig().machines is None and DistributedConfig(nproc=2).one_process is False
    m = DistributedConfig(nnodes=2, endpoint="node001:29400", join_timeout_s=30).machines
    assert m == distributed.Machines(2, "node001:29400", 30.0, 60.0)
    for bad in (None, "node001", "node001:port", ":29400", "node001:70000"):
        with pytest.raises(ConfigError, match="endpoint must be HOST:PORT"):
            DistributedConfig(nnodes=2, endpoint=bad)
    with pytest.raises(ConfigError, match="heartbeat_timeout_s must be > 0"):
        DistributedConfig(heartbeat_timeout_s=0)
    assert distributed.split_endpoint("[::1]:29400") == ("::1", 29400)


@pytest.mark.slow
def test_kedro_run_on_two_machines(project, tmp_path):  # noqa: PLR0915 - one scenario: its runs share a reference
    """`kedro run --pipelines=distill --env toy2d` on the primary and the worker on a second "machine":
    2 + 1 ranks equal one process with the global batch; then 1 + 1 ranks, the worker killed in stage 2: the
    run fails naming the lost rank within the heartbeat timeout, MLflow marks it FAILED, and the same two
    commands again end equal to the one process, stage 2 training only the iterations left."""
    import mlflow

    port = free_port()
    endpoint = f"127.0.0.1:{port}"
    project.edit("toy2d", "parameters_teacher", teacher__training__steps=20, teacher__report__num_samples=200,
                 teacher__network__mlp__width=32)
    project.edit("toy2d", "parameters_degradation", degradation__k1=8, degradation__candidates=4,
                 degradation__probe_size=64)
    project.edit("toy2d", "parameters_backtracking", backtracking__budget=40, backtracking__k2=10,
                 backtracking__eval_every=20, backtracking__checkpoint_every=4)
    project.edit("toy2d", "parameters_evaluation", evaluation__reference_samples=500, evaluation__n_samples=500,
                 evaluation__batch_size=500, backtracking__proxy_samples=100, evaluation__grid_samples=100)
    models, states = project.path / "data/toy2d/06_models", project.path / "data/toy2d/09_training_state"

    def batches(per_rank: int) -> None:  # teacher, stage 1, stage 2: global batches 96, 48, 48
        project.edit("toy2d", "parameters_teacher", teacher__training__batch_size=96 // per_rank)
        project.edit("toy2d", "parameters_degradation", degradation__batch_size=48 // per_rank)
        project.edit("toy2d", "parameters_backtracking", backtracking__batch_size=48 // per_rank)

    def weights():
        return {name: torch.load(models / name, weights_only=True)["state_dict"]
                for name in ("teacher.pt", "generator.pt", "generator_ema.pt")}

    def newest(stage):
        return torch.load(sorted((states / stage).glob("state-*.pt"))[-1], weights_only=True)

    def runs():
        return mlflow.search_runs(search_all_experiments=True, output_format="list", order_by=["start_time ASC"])

    batches(1)
    project.run("distill", env="toy2d")  # one process
    one = weights()

    machine2 = tmp_path / "machine2"
    copy_project(machine2)  # the worker's machine: a project folder of its own
    before = sorted(p.relative_to(machine2) for p in machine2.rglob("*"))
    project.edit("toy2d", "parameters_distributed", distributed__nproc=2, distributed__nnodes=2,
                 distributed__endpoint=endpoint, distributed__heartbeat_timeout_s=5, distributed__join_timeout_s=60)
    batches(3)
    worker = Worker(endpoint, machine2)
    try:
        project.run("distill", env="toy2d")
        assert worker.stop() == 0, worker.text()
    finally:
        worker.stop()
    assert worker.text().count("stage ") >= 6  # joined teacher, stage 1 and stage 2: "joining" and "done" each
    for name, w in weights().items():
        assert max_diff(one[name], w) < TOL, name
    assert len(runs()) == 2  # one MLflow run a `kedro run`: the worker logs nothing
    assert sorted(p.relative_to(machine2) for p in machine2.rglob("*") if p != worker.log) == before

    # 1 + 1 ranks; the worker killed once stage 2 has saved a state
    project.edit("toy2d", "parameters_distributed", distributed__nproc=1)
    batches(2)
    worker = Worker(endpoint, machine2)
    killed = []

    def kill_in_stage2():
        start, deadline = time.time(), time.monotonic() + 300  # the 2 + 1 run's states are older
        while time.monotonic() < deadline and not [f for f in (states / "backtracking").glob("state-*.pt")
                                                   if f.stat().st_mtime > start]:
            time.sleep(0.02)
        worker.kill()
        killed.append(time.monotonic())

    import threading

    killer = threading.Thread(target=kill_in_stage2, daemon=True)
    killer.start()
    try:
        with pytest.raises(distributed.MachinesError, match=r"lost rank 1 on machine 2 of 2 .*heartbeat_timeout_s = 5"):
            project.run("distill", env="toy2d")
        failed_at = time.monotonic()
    finally:
        killer.join(timeout=60)
        worker.stop()
    assert failed_at - killed[0] < 5 + 15  # the heartbeat timeout, then the ranks' shutdown
    assert runs()[-1].info.status == "FAILED"
    stopped_at = newest("backtracking")
    assert not stopped_at["complete"] and 0 < stopped_at["iteration"] < 40

    worker = Worker(endpoint, machine2)
    try:
        project.run("distill", env="toy2d")  # the same two commands again
        assert worker.stop() == 0, worker.text()
    finally:
        worker.stop()
    resumed = newest("backtracking")
    assert resumed["complete"] and resumed["resumed_from"] == stopped_at["iteration"]
    assert resumed["trained"] == 40 - stopped_at["iteration"]  # only the iterations left
    assert len(runs()) == 3 and runs()[-1].info.status == "FINISHED"  # the interrupted MLflow run, continued
    for name, w in weights().items():
        assert max_diff(one[name], w) < TOL, name


@pytest.mark.slow
def test_the_slurm_script_runs_the_primary_and_a_worker(tmp_path, monkeypatch):
    """scripts/slurm_distill.sh under stand-ins for `scontrol` and `srun` that start its task once per "node" on
    this machine (SLURM itself is not here): node 0 runs the `kedro run`, node 1 the worker, and the run ends
    with every stage trained on 2 ranks."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text("#!/bin/bash\necho 127.0.0.1\n")
    (bin_dir / "srun").write_text(
        "#!/bin/bash\n"
        "n=1; for a in \"$@\"; do case $a in --ntasks=*) n=${a#--ntasks=};; esac; done\n"
        "pids=(); for ((i=0; i<n; i++)); do SLURM_NODEID=$i \"${@: -3}\" & pids+=($!); done\n"
        "rc=0; for p in \"${pids[@]}\"; do wait $p || rc=$?; done; exit $rc\n")
    for stub in bin_dir.iterdir():
        stub.chmod(0o755)
    project = ProjectCopy(tmp_path / "project")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", copy_project(project.path, with_src=True))  # `kedro` needs src/
    project.edit("toy2d", "parameters_teacher", teacher__training__steps=6, teacher__report__num_samples=100,
                 teacher__network__mlp__width=16)
    project.edit("toy2d", "parameters_degradation", degradation__k1=4, degradation__candidates=2,
                 degradation__probe_size=32)
    project.edit("toy2d", "parameters_backtracking", backtracking__budget=6, backtracking__k2=3,
                 backtracking__eval_every=6)
    project.edit("toy2d", "parameters_evaluation", evaluation__reference_samples=200, evaluation__n_samples=200,
                 evaluation__batch_size=200, backtracking__proxy_samples=100, evaluation__grid_samples=100)
    env = {**os.environ, "PATH": f"{bin_dir}:{Path(sys.executable).parent}:{os.environ['PATH']}",
           "SLURM_JOB_NODELIST": "node[001-002]", "SLURM_NNODES": "2", "ENV": "toy2d", "NPROC": "1",
           "PORT": str(free_port())}
    done = subprocess.run(["bash", str(ROOT / "scripts/slurm_distill.sh")], check=False, cwd=project.path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "the run ended: FINISHED" in done.stderr + done.stdout  # the worker's last word
    states = project.path / "data/toy2d/09_training_state"
    for stage, total in (("teacher", 6), ("degradation", 4), ("backtracking", 6)):
        state = torch.load(sorted((states / stage).glob("state-*.pt"))[-1], weights_only=True)
        assert state["complete"] and state["trained"] == total, stage
