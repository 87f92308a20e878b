"""Pipeline slices with an in-memory catalog, and one KedroSession run of ``distill``."""

import json
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner

from disback_pipeline.datasets import FeatureExtractorDataset, NpzDataset
from disback_pipeline.diffusion.backbones import build_network
from disback_pipeline.diffusion.checkpoint import Checkpoint, load_checkpoint
from disback_pipeline.diffusion.data import make_data_source
from disback_pipeline.diffusion.disback import distill
from disback_pipeline.diffusion.path import load_path
from disback_pipeline.evaluation.quality import fid_against, quality, reference_statistics, sample_generator
from disback_pipeline.evaluation.samples import draw
from disback_pipeline.pipeline_registry import register_pipelines
from disback_pipeline.pipelines.backtracking import create_pipeline as backtracking_pipeline
from disback_pipeline.pipelines.degradation import create_pipeline as degradation_pipeline
from disback_pipeline.pipelines.reference import create_pipeline as reference_pipeline

from .conftest import TINY_UNET

MLP = {"backbone": "mlp", "dim": 2, "width": 16, "num_blocks": 1, "emb_dim": 8, "label_dim": 0}
DATA = {"source": "gmm2d", "layout": "ring", "num_modes": 4, "radius": 1.0, "std": 0.1}
DEGRADATION = {"k1": 6, "n_nodes": 3, "spacing": "iterations", "lr": 1e-2, "batch_size": 8, "seed": 0, "log_every": 0}
BACKTRACKING = {"loss": "dmd", "k2": 2, "budget": 8, "fake_steps": 1, "lr_generator": 1e-3, "lr_fake": 1e-3,
                "batch_size": 8, "seed": 0, "log_every": 0, "eval_every": 4, "proxy_samples": 200, "grid_samples": 16}


def _run_slice(enabled: bool, **settings):
    catalog = DataCatalog({
        "teacher_model": MemoryDataset(Checkpoint(build_network(MLP), MLP, {})),
        "params:data": MemoryDataset(DATA),
        "params:degradation": MemoryDataset(DEGRADATION),
        "params:backtracking": MemoryDataset({**BACKTRACKING, **settings}),
        "params:shared": MemoryDataset({"enabled": enabled, "s_init": 2.5}),
        "params:evaluation": MemoryDataset({"grid_samples": 16, "seed": 0}),
        "params:checkpointing": MemoryDataset({"resume": "never", "dir": tempfile.mkdtemp()}),
        "params:distributed": MemoryDataset({"nproc": 1}),
    })
    pipe = reference_pipeline() + degradation_pipeline() + backtracking_pipeline()
    SequentialRunner().run(pipe, catalog)
    return catalog


def test_slice_with_backtracking():
    catalog = _run_slice(True)
    hist = catalog["backtracking_history"].load()
    assert list(hist.columns[:8]) == ["iteration", "wall_clock_s", "stage", "target", "switch_reason",
                                      "loss_generator", "loss_fake_score", "score_mismatch"]
    assert (hist["stage"] == "degradation").sum() == 6
    stage2 = hist[hist["stage"] == "backtracking"]
    assert stage2["target"].tolist() == ["000004", "000004", "000002", "000002"] + ["teacher"] * 4
    assert stage2["switch_reason"].fillna("").tolist() == ["start", "", "k2", "", "k2", "", "", ""]
    assert stage2["wall_clock_s"].min() >= hist[hist["stage"] == "degradation"]["wall_clock_s"].max()
    assert catalog["generator_ema_model"].load().metadata["weights"] == "ema"
    proxy = hist.dropna(subset=["proxy_reverse_kl"])
    assert proxy["iteration"].tolist() == [4, 8]
    assert {"proxy_nll", "proxy_mode_coverage", "proxy_forward_kl"} <= set(hist.columns)
    fig = catalog["switch_grids_plot"].load()
    assert len(fig.axes) == 4  # three changes of target and the final state


def test_slice_keep_best_picks_by_the_headline_proxy_on_held_out_latents():
    catalog = _run_slice(False, keep="best", budget=12)
    meta = catalog["generator_ema_model"].load().metadata
    proxy = catalog["backtracking_history"].load().dropna(subset=["proxy_reverse_kl"])
    best = proxy.loc[proxy["proxy_reverse_kl"].idxmin()]
    assert meta["selected_by"] == "proxy_reverse_kl"
    assert (meta["selected_iteration"], meta["selected_value"]) == (best["iteration"], best["proxy_reverse_kl"])
    # the proxy drew its latents from evaluation.seed + 1, not the final evaluation's seed: the choice is scored on
    # samples it never saw
    ema, source = catalog["generator_ema_model"].load(), make_data_source(DATA)

    def proxy(seed):
        x, _ = sample_generator(ema.net, source, 200, seed, 2.5)
        return quality(x, source, None, {}, seed)["reverse_kl"]

    assert proxy(1) == pytest.approx(meta["selected_value"], rel=1e-6)
    assert proxy(0) != pytest.approx(meta["selected_value"], rel=1e-6)


def test_slice_baseline_skips_stage_one_and_equals_distill_without_a_path():
    catalog = _run_slice(False)
    generator = catalog["generator_model"].load()
    assert generator.metadata["method"] == "baseline"
    hist = catalog["backtracking_history"].load()
    assert set(hist["stage"]) == {"backtracking"} and set(hist["target"]) == {"teacher"}
    # the baseline is exactly `distill` with no path: proxy evaluation, the kept EMA generator and sample grids
    # change nothing in the raw generator
    direct = distill(catalog["teacher_model"].load(), make_data_source(DATA), None,
                     {**BACKTRACKING, "enabled": False, "s_init": 2.5, "keep": "last"})
    for (k, a), b in zip(generator.net.state_dict().items(), direct.generator.net.state_dict().values()):
        assert torch.equal(a, b), k


def test_registry_chains_distill():
    from kedro.framework.project import configure_project

    configure_project("disback_pipeline")
    pipes = register_pipelines()
    names = [n.name for n in pipes["distill"].nodes]
    assert names.index("teacher.train_or_load_teacher") < names.index("degradation.record_degradation_path") \
        < names.index("backtracking.distill_generator") < names.index("evaluation.evaluate_models")
    assert "reference.build_reference_stats" in names
    assert pipes["__default__"].nodes == pipes["distill"].nodes
    # each stage is a namespace (a group in Kedro-Viz) that keeps the catalog's dataset names
    assert {n.namespace for n in pipes["distill"].nodes} == {"teacher", "reference", "degradation", "backtracking",
                                                             "evaluation"}
    assert {"teacher_model", "degradation_path", "generator_ema_model", "metrics"} <= pipes["distill"].datasets()


def test_compare_runs_the_real_stage_pipelines_once_per_arm():
    """Each arm is the degradation and backtracking pipelines in a namespace of its own (a group in Kedro-Viz),
    reading its entry of `compare` in place of `shared`, with the other inputs shared by both arms."""
    from kedro.framework.project import configure_project

    configure_project("disback_pipeline")
    pipes = register_pipelines()
    compare = pipes["compare"]
    for arm in ("baseline", "disback"):
        nodes = {n.name: n for n in compare.nodes if n.namespace and n.namespace.startswith(f"{arm}.")}
        assert set(nodes) == {f"{arm}.degradation.record_degradation_path", f"{arm}.backtracking.distill_generator",
                              f"{arm}.backtracking.combine_history"}
        stage2 = nodes[f"{arm}.backtracking.distill_generator"]
        assert f"params:compare.{arm}" in stage2.inputs and "params:shared" not in stage2.inputs
        assert {"teacher_model", "feature_extractor", "reference_stats", f"{arm}.degradation_path",
                "params:backtracking", "params:distributed"} <= set(stage2.inputs)
        assert f"{arm}.generator_ema_model" in stage2.outputs
    assert {"baseline_history", "disback_history"} <= compare.datasets()
    # the stage nodes are the very functions of the distill pipeline
    assert {n.func for n in compare.nodes if n.namespace and "." in n.namespace} == \
        {n.func for n in pipes["distill"].nodes if n.namespace in ("degradation", "backtracking")}


def _tiny_digits(project, budget: int, eval_every: int, **backtracking) -> None:
    """The default (digits) run at a size that takes seconds: a tiny UNet, a few steps per stage."""
    project.edit("base", "parameters_teacher", teacher__network=TINY_UNET, teacher__training__steps=4,
                 teacher__training__batch_size=8, teacher__report__num_samples=4, shared__sampler__nfe=3)
    project.edit("base", "parameters_degradation", degradation__k1=4, degradation__n_nodes=2,
                 degradation__batch_size=4, degradation__candidates=4, degradation__probe_size=8)
    project.edit("base", "parameters_backtracking", backtracking__k2=2, backtracking__budget=budget,
                 backtracking__batch_size=4, backtracking__eval_every=eval_every, **backtracking)
    project.edit("base", "parameters_evaluation", evaluation__domain__steps=30, evaluation__n_samples=40,
                 backtracking__proxy_samples=20, evaluation__grid_samples=4, evaluation__reference_samples=300)


def _check_registered_student(client, root, metrics, gen):
    """The student is a registered model whose predict draws the same samples as the generate command."""
    import mlflow

    from disback_pipeline.diffusion.state import weights_sha256

    registered = json.loads((root / "08_reporting/registered_model.json").read_text())
    assert registered["name"] == "digits-disback-di" and registered["version"] == 1
    version = client.get_model_version("digits-disback-di", "1")
    assert version.tags["method"] == "disback" and version.tags["loss"] == "di"
    assert float(version.tags["fid"]) == pytest.approx(metrics["student"]["fid"], rel=1e-5)
    teacher = load_checkpoint(root / "06_models/teacher.pt")
    assert version.tags["teacher_sha256"] == weights_sha256(teacher.net)  # the hash the training states carry
    model = mlflow.pyfunc.load_model("models:/digits-disback-di/1")
    drawn = model.predict([{"n": 3, "seed": 5}])
    assert drawn.shape == (3, 1, 8, 8)
    (expected,) = draw(gen, [5, 6, 7])
    np.testing.assert_array_equal(drawn, expected.numpy())
    assert model.metadata.signature is not None  # inferred from predict's type hints
    flavor = model.metadata.flavors["python_function"]
    assert flavor.get("model_code_path", "").endswith("student_model.py") and "python_model" not in flavor, flavor
    with pytest.raises(Exception, match="n"):  # checked against them: no samples for n = 0
        model.predict([{"n": 0, "seed": 5}])


@pytest.mark.slow
def test_distill_kedro_run(project):
    _tiny_digits(project, budget=5, eval_every=5, backtracking__keep="best")  # one evaluation: the last is kept
    project.run("distill")
    root = project.path / "data" / "base"
    manifest = json.loads((root / "06_models/degradation_path/manifest.json").read_text())
    order = manifest["order"]
    assert len(order) == 3 and order[0] == "000000" and order[-1] == "000004" and order[0] < order[1] < order[2]
    assert [n["step"] for n in manifest["nodes"]] == [int(k) for k in order]
    assert len(load_path(root / "06_models/degradation_path").nodes) == 3
    gen = load_checkpoint(root / "06_models/generator_ema.pt")
    assert gen.metadata["method"] == "disback" and gen.metadata["step"] == 5
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{project.path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("disback_pipeline").experiment_id])
    assert run.info.run_name == "disback-di-digits-seed0"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "backtracking/loss_generator")] == \
        [1, 2, 3, 4, 5]
    hist = pd.read_csv(root / "08_reporting/backtracking_history.csv")
    assert hist[hist["stage"] == "backtracking"]["target"].tolist() == [order[1]] * 2 + ["teacher"] * 3
    metrics = json.loads((root / "08_reporting/metrics.json").read_text())
    # the reference statistics on disk are the ones every FID was computed against
    reference = NpzDataset(str(root / "05_model_input/reference_stats.npz")).load()
    features = FeatureExtractorDataset(str(root / "06_models/feature_extractor.pt")).load()
    source = make_data_source({"source": "digits"})
    assert str(reference["hash"]) == str(reference_statistics(features.extract(source.images[:300]))["hash"])
    for role in ("teacher", "student"):
        m = metrics[role]
        assert m["extractor"] == "domain" and m["n_samples"] == 40 and m["reference_hash"] == str(reference["hash"])
    # the student's FID is what its saved EMA weights give on the evaluation seed, recomputed here
    x, _ = sample_generator(gen.net, source, 40, 0, gen.metadata["s_init"], batch_size=40)
    assert metrics["student"]["fid"] == pytest.approx(fid_against(reference, features.extract(x)), rel=1e-6)
    assert metrics["throughput_ratio"] == pytest.approx(metrics["student"]["samples_per_s"]
                                                        / metrics["teacher"]["samples_per_s"]) \
        and metrics["extractor_test_accuracy"] == pytest.approx(features.test_accuracy)
    # what a user compares in the MLflow UI: each stage's losses per step, proxy quality at evaluation steps,
    # the switches with their reasons, the parameters
    steps = {key: [m.step for m in client.get_metric_history(run.info.run_id, key)]
             for key in ("degradation/dsm_loss", "backtracking/loss_fake_score", "backtracking/score_mismatch",
                         "backtracking/proxy_fid", "backtracking/target_index")}
    assert steps == {"degradation/dsm_loss": [1, 2, 3, 4], "backtracking/loss_fake_score": [1, 2, 3, 4, 5],
                     "backtracking/score_mismatch": [1, 2, 3, 4, 5], "backtracking/proxy_fid": [5],
                     "backtracking/target_index": [1, 3]}
    switches = json.loads(Path(client.download_artifacts(run.info.run_id, "backtracking/switches.json",
                                                         str(project.path))).read_text())
    assert [(s["iteration"], s["target"], s["switch_reason"]) for s in switches] == \
        [(1, order[1], "start"), (3, "teacher", "k2")]
    assert (run.data.metrics["backtracking/selected_iteration"], run.data.metrics["backtracking/selected_value"]) \
        == (5, pytest.approx(gen.metadata["selected_value"])) and gen.metadata["selected_iteration"] == 5
    assert run.data.params["backtracking.loss"] == "di" and run.data.params["degradation.k1"] == "4"
    assert run.data.metrics["evaluation/student/fid"] == pytest.approx(metrics["student"]["fid"])
    assert run.data.metrics["headline/quality_ratio"] == pytest.approx(metrics["student"]["fid"]
                                                                       / metrics["teacher"]["fid"])
    assert run.data.metrics["headline/throughput_ratio"] == pytest.approx(metrics["throughput_ratio"])
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # the UI opens on the runs
    _check_registered_student(client, root, metrics, gen)
    for png in ("teacher_grid", "initial_generator_grid", "student_grid", "quality_curve", "switch_grids"):
        assert (root / f"08_reporting/{png}.png").stat().st_size > 1000


@pytest.mark.slow
def test_compare_run_nests_one_mlflow_run_per_method(project):
    _tiny_digits(project, budget=4, eval_every=2)
    project.run("compare")
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{project.path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("disback_pipeline").experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = {r.info.run_name: r for r in runs if "mlflow.parentRunId" in r.data.tags}
    assert len(parents) == 1 and set(children) == {"baseline-di-digits-seed0", "disback-di-digits-seed0"}
    for name, run in children.items():
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert run.data.params["enabled"] == str(name.startswith("disback"))
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "backtracking/proxy_fid")]
        assert steps == [2, 4]
    # stage 1 ran for the DisBack arm only; the report compares the two arms' histories
    assert "backtracking/stage1_seconds" in children["disback-di-digits-seed0"].data.metrics
    assert children["baseline-di-digits-seed0"].data.metrics["backtracking/stage1_seconds"] == 0.0
    # each arm's outputs are in the catalog: its path (empty for the baseline), generators and history
    out = project.path / "data/base"
    assert (out / "06_models/compare/disback_degradation_path/manifest.json").is_file()
    for arm in ("baseline", "disback"):
        assert (out / f"06_models/compare/{arm}_generator.pt").is_file()
        assert (out / f"07_model_output/compare/{arm}_degradation_history.csv").is_file()
        assert (out / f"09_training_state/compare/{arm}/backtracking").is_dir()
    report = json.loads((project.path / "data/base/08_reporting/convergence.json").read_text())
    assert report["metric"] == "proxy_fid" and set(report["final_quality"]) == {"baseline", "disback"}
