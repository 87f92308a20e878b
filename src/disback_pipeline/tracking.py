"""MLflow helpers for nodes: log only when kedro-mlflow has a run open."""

from __future__ import annotations

import time


def active() -> bool:
    try:
        import mlflow
    except ImportError:  # pragma: no cover - mlflow is a dependency
        return False
    return mlflow.active_run() is not None


class MetricBuffer:
    """Collect per-step metrics and send them to MLflow in batches.

    One ``log_batch`` call per ``flush_every`` records keeps the sqlite store
    from dominating the run time while every step keeps its own value.
    """

    def __init__(self, prefix: str = "", flush_every: int = 200):
        self.prefix = prefix
        self.flush_every = flush_every
        self._pending: list = []
        self._enabled = active()

    def log(self, step: int, values: dict[str, float]) -> None:
        if not self._enabled:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        for key, value in values.items():
            self._pending.append(Metric(f"{self.prefix}{key}", float(value), now, int(step)))
        if len(self._pending) >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        if not self._enabled or not self._pending:
            return
        import mlflow

        run_id = mlflow.active_run().info.run_id
        client = mlflow.MlflowClient()
        for i in range(0, len(self._pending), 1000):
            client.log_batch(run_id, metrics=self._pending[i:i + 1000])
        self._pending = []


def log_metrics(values: dict[str, float], step: int | None = None, prefix: str = "") -> None:
    if active():
        import mlflow

        mlflow.log_metrics({f"{prefix}{k}": float(v) for k, v in values.items()}, step=step)


def name_run(name: str) -> None:
    """Give the active run a name that says what it is (method, data, seed)."""
    if active():
        import mlflow

        mlflow.set_tag("mlflow.runName", name)


def log_dict(values, artifact_file: str) -> None:
    """A JSON artifact of the active run (e.g. the backtracking switches and their reasons)."""
    if active():
        import mlflow

        mlflow.log_dict(values, artifact_file)
