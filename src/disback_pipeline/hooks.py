"""Project hooks: every stage's settings are built once when a run starts, before anything trains, and handed
to the nodes; each compare arm gets its own training-state folder and MLflow child run; an interrupted run
continues its MLflow run when started again, and a run stopped by Ctrl-C or SIGTERM ends as KILLED; the workers of
other machines learn when the run ends."""

from __future__ import annotations

import atexit
import dataclasses
import logging
import os
import signal
from pathlib import Path
from typing import Any

from kedro.framework.hooks import hook_impl

from .diffusion.config import CheckpointingConfig, DistillConfig, SharedConfig
from .diffusion.distributed import close_machines
from .parameters import build, distill_config
from .resume import RunLock, RunMarker, params_digest

log = logging.getLogger(__name__)


class MarkExperiment:
    """Mark the MLflow experiment as model training, so MLflow 3's UI opens it on the runs table
    rather than on the GenAI overview (traces, judges)."""

    def __init__(self):
        self._done = False

    @hook_impl
    def before_pipeline_run(self) -> None:
        self._done = False  # one hook object serves every KedroSession of a process (and their stores)

    @hook_impl
    def before_node_run(self) -> None:
        if self._done:
            return
        import mlflow

        run = mlflow.active_run()
        if run is not None:  # kedro-mlflow has opened the run by the first node
            mlflow.MlflowClient().set_experiment_tag(run.info.experiment_id, "mlflow.experimentKind",
                                                     "custom_model_development")
            self._done = True


class Settings:
    """Build each block's typed settings from the run's parameters (``--params`` included) once, when the run
    starts, and hand them to the nodes in place of the raw ``params:<block>`` dicts (:mod:`.parameters`).

    A misspelt or out-of-range key fails here, within seconds, naming the key and the nearest valid
    one, instead of surfacing after the teacher has trained. The nodes of a compare arm (namespace
    ``<arm>``) get ``checkpointing.dir``/compare/<arm> as their training-state folder.
    """

    def __init__(self):
        self.built: dict[str, Any] = {}
        self.arms: dict[str, CheckpointingConfig] = {}

    @hook_impl(tryfirst=True)  # before the hooks that read the built settings
    def after_context_created(self, context) -> None:
        self.built = build(context.params)
        ckpt = self.built.get("params:checkpointing", CheckpointingConfig())
        self.arms = {arm: dataclasses.replace(ckpt, dir=str(Path(ckpt.dir) / "compare" / arm))
                     for arm in context.params.get("compare") or {}}
        log.info("parameters checked: %s", ", ".join(k.removeprefix("params:") for k in self.built))

    def arm_of(self, node) -> str | None:
        first = (node.namespace or "").split(".")[0]
        return first if first in self.arms else None

    @hook_impl
    def before_node_run(self, node, inputs: dict[str, Any]) -> dict[str, Any]:
        typed = {k: self.built[k] for k in inputs if k in self.built}
        arm = self.arm_of(node)
        if arm is not None and "params:checkpointing" in inputs:
            typed["params:checkpointing"] = self.arms[arm]
        return typed


class ArmRuns:
    """Each compare arm's nodes report to an MLflow child run of the run, ``<arm>-<loss>-<data>-seed<seed>``, so
    the UI's compare view lists both methods with their parameters and metrics.

    The child's id is kept in ``<checkpointing.dir>/compare/<arm>/mlflow_run.json``; every node of the arm, and a
    resumed parent run, continue it. A node that fails ends it FAILED; Ctrl-C or SIGTERM end it KILLED
    (:class:`ResumeRun`).
    """

    def __init__(self, settings: Settings):
        self.settings = settings
        self._open: str | None = None  # the child run this hook started for the running node

    def _arm(self, node) -> tuple[str, DistillConfig] | None:
        arm = self.settings.arm_of(node)
        if arm is None or "params:backtracking" not in self.settings.built:
            return None
        shared: SharedConfig = self.settings.built[f"params:compare.{arm}"]
        return arm, distill_config(self.settings.built["params:backtracking"], shared)

    @hook_impl(trylast=True)  # after kedro-mlflow has reopened the parent run
    def before_node_run(self, node) -> None:
        import mlflow

        found = self._arm(node)
        if found is None or mlflow.active_run() is None:
            return
        arm, cfg = found
        data = self.settings.built["params:data"].name
        name = f"{cfg.method}-{cfg.loss}-{data}-seed{cfg.seed}"
        marker = RunMarker(self.settings.arms[arm].dir)
        parent = mlflow.active_run().info.run_id
        known = (marker.read() or {}).get("run_id")
        resume = known if known and _child_of(known, parent) else None
        run = mlflow.start_run(run_id=resume, run_name=None if resume else name, nested=True)
        marker.write(run.info.run_id, name=name, parent=parent)
        self._open = run.info.run_id
        if resume is None:
            mlflow.log_params({**{k: v for k, v in dataclasses.asdict(cfg).items() if not isinstance(v, dict)},
                               "data": data})

    def _end(self, status: str) -> None:
        import mlflow

        run = mlflow.active_run()
        if self._open is not None and run is not None and run.info.run_id == self._open:
            mlflow.end_run(status)
        self._open = None

    @hook_impl
    def after_node_run(self) -> None:
        self._end("FINISHED")

    @hook_impl
    def on_node_error(self) -> None:
        self._end("FAILED")


def _child_of(run_id: str, parent: str) -> bool:
    import mlflow

    try:
        return mlflow.MlflowClient().get_run(run_id).data.tags.get("mlflow.parentRunId") == parent
    except Exception:  # deleted, or another store
        return False


class OtherMachines:
    """When a run that led several machines ends, tell their workers (FINISHED or FAILED) and stop listening."""

    @hook_impl
    def after_pipeline_run(self) -> None:
        close_machines("FINISHED")

    @hook_impl
    def on_pipeline_error(self) -> None:
        close_machines("FAILED")


class ResumeRun:
    """The MLflow side of resuming (the training states themselves are the loops' business).

    While a run is in progress, ``<checkpointing.dir>/mlflow_run.json`` names its MLflow run, its pipelines
    and a digest of its parameters; a successful run removes it. When the same command starts again with
    ``checkpointing.resume = auto`` (same pipelines, same parameters), the new `kedro run` continues that
    MLflow run (MLflow's ``MLFLOW_RUN_ID``, set before kedro-mlflow opens its run), so metric curves go on
    where they stopped. SIGTERM is turned into KeyboardInterrupt, and a run stopped by either ends as KILLED
    rather than staying RUNNING.
    """

    def __init__(self, settings: Settings):
        self.settings = settings
        self._marker: RunMarker | None = None
        self._lock: RunLock | None = None
        self._resume = "auto"
        self._pipelines: list[str] = []
        self._digest = ""
        self._written = False
        self._interrupted = False
        self._saved_handlers: dict[int, object] = {}
        self._at_exit = False

    @hook_impl
    def after_context_created(self, context) -> None:
        cfg = self.settings.built.get("params:checkpointing", CheckpointingConfig())
        self._marker, self._lock, self._resume = RunMarker(cfg.dir), RunLock(cfg.dir), cfg.resume
        self._digest = params_digest(context.params)

    @hook_impl(tryfirst=True)
    def before_pipeline_run(self, run_params) -> None:
        names = run_params.get("pipeline_names") or run_params.get("pipeline_name") or ["__default__"]
        self._pipelines, self._written = [names] if isinstance(names, str) else list(names), False
        if self._lock is not None:
            self._lock.acquire()  # one run at a time per environment (its training states and outputs)
        if self._marker is not None and self._resume == "auto":
            run_id = self._marker.resumable_run(self._pipelines, self._digest)
            if run_id is not None:
                log.info("continuing MLflow run %s of the interrupted `kedro run` (same pipelines and parameters)",
                         run_id)
                os.environ["MLFLOW_RUN_ID"] = run_id
        self._install_signals()
        if not self._at_exit:  # registered after MLflow's own exit handler (which would end a child FINISHED),
            import mlflow  # noqa: F401 - so that this one runs first

            atexit.register(self._end_killed)
            self._at_exit = True

    @hook_impl
    def before_node_run(self) -> None:
        if self._written or self._marker is None:
            return
        import mlflow

        run = mlflow.active_run()
        if run is not None:
            self._marker.write(run.info.run_id, pipelines=self._pipelines, params=self._digest)
            self._written = True

    @hook_impl
    def after_pipeline_run(self) -> None:
        if self._marker is not None:
            self._marker.clear()
        self._finish()

    @hook_impl
    def on_pipeline_error(self) -> None:
        self._finish()  # the marker stays: the same command continues the run

    def _finish(self) -> None:
        self._restore_signals()
        if self._lock is not None:
            self._lock.unlock()

    def _install_signals(self) -> None:
        def interrupt(signum, frame):
            self._interrupted = True
            raise KeyboardInterrupt(f"stopped by {signal.Signals(signum).name}")

        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._saved_handlers[sig] = signal.signal(sig, interrupt)
        except ValueError:  # not the main thread: leave signals alone
            self._saved_handlers = {}

    def _restore_signals(self) -> None:
        for sig, handler in self._saved_handlers.items():
            signal.signal(sig, handler)
        self._saved_handlers = {}

    def _end_killed(self) -> None:
        """At exit after Ctrl-C or SIGTERM: end the open MLflow runs as KILLED (MLflow's own exit handler
        would mark them FINISHED)."""
        if not self._interrupted:
            return
        import mlflow

        while mlflow.active_run() is not None:
            mlflow.end_run("KILLED")
