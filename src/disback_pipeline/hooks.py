"""Project hooks: every stage's settings are checked when a run starts, before anything trains; an
interrupted run continues its MLflow run when started again, and a run stopped by Ctrl-C or SIGTERM ends
as KILLED."""

from __future__ import annotations

import atexit
import logging
import os
import signal

from kedro.framework.hooks import hook_impl

from .diffusion.config import CheckpointingConfig, from_dict, validate_parameters
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


class ValidateParameters:
    """Build each stage's typed configuration from the run's parameters (``--params`` included).

    A misspelt or out-of-range key fails here, within seconds, naming the key and the nearest valid
    one, instead of surfacing after the teacher has trained.
    """

    @hook_impl
    def after_context_created(self, context) -> None:
        built = validate_parameters(context.params)
        log.info("parameters checked: %s", ", ".join(built))


class ResumeRun:
    """The MLflow side of resuming (the training states themselves are the loops' business).

    While a run is in progress, ``<checkpointing.dir>/mlflow_run.json`` names its MLflow run, its pipelines
    and a digest of its parameters; a successful run removes it. When the same command starts again with
    ``checkpointing.resume = auto`` (same pipelines, same parameters), the new `kedro run` continues that
    MLflow run (MLflow's ``MLFLOW_RUN_ID``, set before kedro-mlflow opens its run), so metric curves go on
    where they stopped. SIGTERM is turned into KeyboardInterrupt, and a run stopped by either ends as KILLED
    rather than staying RUNNING.
    """

    def __init__(self):
        self._marker: RunMarker | None = None
        self._lock: RunLock | None = None
        self._resume = "auto"
        self._pipelines: list[str] = []
        self._digest = ""
        self._written = False
        self._interrupted = False
        self._saved_handlers: dict[int, object] = {}
        atexit.register(self._end_killed)

    @hook_impl
    def after_context_created(self, context) -> None:
        cfg = from_dict(CheckpointingConfig, context.params.get("checkpointing"), "checkpointing")
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
