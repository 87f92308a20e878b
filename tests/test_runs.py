import shutil
from pathlib import Path

import mlflow
import pytest

from disback_pipeline.runs import comparison_note, latest_comparison, list_runs, metric_curves, plot_comparison

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "disback_vs_baseline.ipynb"


def _store(folder: Path, disback_status: str = "FINISHED") -> tuple[str, dict[str, str]]:
    """A store with one comparison as `kedro run --pipelines=compare` leaves it (the disback arm ending
    ``disback_status``, the parent run with it)."""
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp_id = client.create_experiment("disback_pipeline")
    parent = client.create_run(exp_id, run_name="compare")
    ids = {}
    for arm, values in (("baseline", [3.0, 2.0, 1.5]), ("disback", [2.0, 1.0, 0.8])):
        run = client.create_run(exp_id, run_name=f"{arm}-di-gmm2d-seed0",
                                tags={"mlflow.parentRunId": parent.info.run_id})
        for step, v in zip((100, 200, 300), values if arm == "baseline" or disback_status == "FINISHED" else [2.0]):
            client.log_metric(run.info.run_id, "backtracking/proxy_reverse_kl", v, step=step)
        client.set_terminated(run.info.run_id, "FINISHED" if arm == "baseline" else disback_status)
        ids[arm] = run.info.run_id
    client.set_terminated(parent.info.run_id, disback_status)
    return uri, ids


def test_notebook_helpers_read_a_real_store(tmp_path):
    uri, ids = _store(tmp_path)

    runs = list_runs(uri)
    assert len(runs) == 3 and set(runs["run_name"]) >= {"baseline-di-gmm2d-seed0", "disback-di-gmm2d-seed0"}
    assert latest_comparison(uri) == ids
    curves = metric_curves(uri, ids, "backtracking/proxy_reverse_kl")
    assert curves[curves["label"] == "disback"]["value"].tolist() == [2.0, 1.0, 0.8]
    assert curves[curves["label"] == "baseline"]["step"].tolist() == [100, 200, 300]
    fig = plot_comparison(curves, "backtracking/proxy_reverse_kl")
    assert len(fig.axes[0].lines) == 2


def test_missing_experiment_is_explained(tmp_path):
    with pytest.raises(ValueError, match="run a pipeline first"):
        list_runs(f"sqlite:///{tmp_path / 'empty.db'}")


def test_a_killed_comparison_is_named_not_plotted_silently(tmp_path):
    uri, ids = _store(tmp_path, "KILLED")
    assert latest_comparison(uri) == ids
    note = comparison_note(uri)
    assert note.startswith("The newest comparison (") and "the run ended KILLED; its disback arm is KILLED" in note
    assert "run the same `kedro run --pipelines=compare` command again" in note
    (tmp_path / "finished").mkdir()
    assert comparison_note(_store(tmp_path / "finished")[0]) is None


def _execute(folder: Path):
    """The notebook run as a user runs it, from notebooks/ beside the store, by a real kernel."""
    import nbclient
    import nbformat

    (folder / "notebooks").mkdir()
    shutil.copy(NOTEBOOK, folder / "notebooks" / NOTEBOOK.name)
    nb = nbformat.read(folder / "notebooks" / NOTEBOOK.name, as_version=4)
    nbclient.NotebookClient(nb, timeout=120, kernel_name="python3",
                            resources={"metadata": {"path": str(folder / "notebooks")}}).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    images = [o for o in outputs if o.output_type in ("display_data", "execute_result") and "image/png" in o.data]
    tables = [o for o in outputs if o.output_type == "execute_result" and "text/html" in o.data]
    return text, images, tables


def test_the_notebook_runs_against_a_store_and_names_a_killed_comparison(tmp_path):
    """One kernel run (the slow part): a killed comparison, the case where silence would mislead; the finished
    case's wording is :func:`comparison_note`'s, tested above."""
    _store(tmp_path, "KILLED")
    text, images, tables = _execute(tmp_path)
    assert len(images) == 1 and len(tables) == 1  # the runs table and the comparison's curves
    assert "is not complete: the run ended KILLED; its disback arm is KILLED" in text
