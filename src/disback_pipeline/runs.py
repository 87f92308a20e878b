"""Read the MLflow store back: runs, their metric histories, and a DisBack-vs-baseline plot.

The notebook in notebooks/ calls these functions; the tests run them on a throwaway store.
"""

from __future__ import annotations

import pandas as pd


def _client(tracking_uri: str):
    import mlflow

    return mlflow.MlflowClient(tracking_uri=tracking_uri)


def list_runs(tracking_uri: str = "sqlite:///mlflow.db", experiment: str = "disback_pipeline") -> pd.DataFrame:
    """One row per run: id, name, parent (for compare arms), status, start time and final metrics."""
    client = _client(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise ValueError(f"no MLflow experiment {experiment!r} in {tracking_uri}; run a pipeline first")
    rows = []
    for run in client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"]):
        rows.append({"run_id": run.info.run_id, "run_name": run.info.run_name,
                     "parent_run_id": run.data.tags.get("mlflow.parentRunId"), "status": run.info.status,
                     "start_time": pd.to_datetime(run.info.start_time, unit="ms"), **run.data.metrics})
    return pd.DataFrame(rows)


def metric_curves(tracking_uri: str, run_ids: dict[str, str], metric: str) -> pd.DataFrame:
    """Long table (label, step, value) of one metric's history for each labelled run."""
    client = _client(tracking_uri)
    frames = []
    for label, run_id in run_ids.items():
        hist = client.get_metric_history(run_id, metric)
        frames.append(pd.DataFrame({"label": label, "step": [m.step for m in hist],
                                    "value": [m.value for m in hist]}).sort_values("step"))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["label", "step", "value"])


def latest_comparison(tracking_uri: str = "sqlite:///mlflow.db", experiment: str = "disback_pipeline") -> dict:
    """Run ids of the newest compare run's arms, keyed 'baseline' and 'disback' (an arm that never started is
    absent; :func:`comparison_note` says what is missing or unfinished)."""
    latest = _latest_arms(list_runs(tracking_uri, experiment))
    return {name.split("-")[0]: rid for name, rid in zip(latest["run_name"], latest["run_id"])}


def _latest_arms(runs: pd.DataFrame) -> pd.DataFrame:
    arms = runs[runs["parent_run_id"].notna()] if "parent_run_id" in runs else runs.iloc[:0]
    if arms.empty:
        raise ValueError("no compare runs in the store; run `kedro run --pipelines=compare` first")
    return arms[arms["parent_run_id"] == arms.iloc[-1]["parent_run_id"]]


def comparison_note(tracking_uri: str = "sqlite:///mlflow.db", experiment: str = "disback_pipeline") -> str | None:
    """None when the newest comparison finished with both arms; otherwise what is unfinished or missing, and
    how to finish it (the same command continues a killed comparison)."""
    runs = list_runs(tracking_uri, experiment)
    latest = _latest_arms(runs)
    parent = runs[runs["run_id"] == latest.iloc[0]["parent_run_id"]]
    status = {name.split("-")[0]: st for name, st in zip(latest["run_name"], latest["status"])}
    problems = [f"its {arm} arm is {status[arm]}" for arm in ("baseline", "disback")
                if arm in status and status[arm] != "FINISHED"]
    problems += [f"its {arm} arm never started" for arm in ("baseline", "disback") if arm not in status]
    if not parent.empty and parent.iloc[0]["status"] != "FINISHED":
        problems.insert(0, f"the run ended {parent.iloc[0]['status']}")
    if not problems:
        return None
    return (f"The newest comparison ({latest.iloc[0]['parent_run_id']}) is not complete: {'; '.join(problems)}. "
            "The curves below stop where its arms stopped; run the same `kedro run --pipelines=compare` command "
            "again to continue it.")


def plot_comparison(curves: pd.DataFrame, metric: str):
    """Lines of ``metric`` vs step, one per label (a matplotlib Figure of its own: no pyplot state, any
    backend, shown inline by a notebook)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for label, frame in curves.groupby("label"):
        ax.plot(frame["step"], frame["value"], marker="o", ms=3, label=f"{label} ({len(frame)} evaluations)")
    ax.set_xlabel("generator iteration")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} of the newest comparison's arms")
    ax.set_yscale("symlog", linthresh=0.1)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig
