"""MLflow helpers for nodes: log only when kedro-mlflow has a run open."""

from __future__ import annotations

import time


def active() -> bool:
    try:
        import mlflow
    except ImportError:  # pragma: no cover - mlflow is a dependency
        return False
    return mlflow.active_run() is not None


def logged_through(key: str) -> int | None:
    """The highest step at which the active run already holds metric ``key`` (None: no value yet)."""
    import mlflow

    history = mlflow.MlflowClient().get_metric_history(mlflow.active_run().info.run_id, key)
    return max((m.step for m in history), default=None)


class MetricBuffer:
    """Collect per-step metrics and send them to MLflow in batches.

    One ``log_batch`` call per ``flush_every`` records keeps the sqlite store
    from dominating the run time while every step keeps its own value. Steps
    the run already holds are skipped, so that a resumed run (which replays
    its restored history) never logs a step twice.
    """

    def __init__(self, prefix: str = "", flush_every: int = 200):
        self.prefix = prefix
        self.flush_every = flush_every
        self._pending: list = []
        self._enabled = active()
        self._through: dict[str, int | None] = {}

    def log(self, step: int, values: dict[str, float]) -> None:
        if not self._enabled:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        for key, value in values.items():
            name = f"{self.prefix}{key}"
            if name not in self._through:
                self._through[name] = logged_through(name)
            if self._through[name] is not None and step <= self._through[name]:
                continue
            self._pending.append(Metric(name, float(value), now, int(step)))
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
    """Log values at ``step`` (0 when None); a key the run already holds at that step or a later one is
    left as it is (a resumed run does not log it twice)."""
    if active():
        import mlflow

        at = 0 if step is None else int(step)
        fresh = {}
        for key, value in values.items():
            through = logged_through(f"{prefix}{key}")
            if through is None or through < at:
                fresh[f"{prefix}{key}"] = float(value)
        if fresh:
            mlflow.log_metrics(fresh, step=at)


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
