import mlflow
import pytest

from disback_pipeline.runs import latest_comparison, list_runs, metric_curves, plot_comparison


def test_notebook_helpers_read_a_real_store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp_id = client.create_experiment("disback_pipeline")
    parent = client.create_run(exp_id, run_name="compare")
    ids = {}
    for arm, values in (("baseline", [3.0, 2.0, 1.5]), ("disback", [2.0, 1.0, 0.8])):
        run = client.create_run(exp_id, run_name=f"{arm}-di-gmm2d-seed0",
                                tags={"mlflow.parentRunId": parent.info.run_id})
        for step, v in zip((100, 200, 300), values):
            client.log_metric(run.info.run_id, "compare/proxy_reverse_kl", v, step=step)
        client.set_terminated(run.info.run_id)
        ids[arm] = run.info.run_id
    client.set_terminated(parent.info.run_id)

    runs = list_runs(uri)
    assert len(runs) == 3 and set(runs["run_name"]) >= {"baseline-di-gmm2d-seed0", "disback-di-gmm2d-seed0"}
    assert latest_comparison(uri) == ids
    curves = metric_curves(uri, ids, "compare/proxy_reverse_kl")
    assert curves[curves["label"] == "disback"]["value"].tolist() == [2.0, 1.0, 0.8]
    assert curves[curves["label"] == "baseline"]["step"].tolist() == [100, 200, 300]
    fig = plot_comparison(curves, "compare/proxy_reverse_kl")
    assert len(fig.axes[0].lines) == 2


def test_missing_experiment_is_explained(tmp_path):
    with pytest.raises(ValueError, match="run a pipeline first"):
        list_runs(f"sqlite:///{tmp_path / 'empty.db'}")
