"""Every Kedro environment resolves, and the large-scale ones fail clearly without their files."""

import io
from pathlib import Path

import pytest
import torch
import yaml
from kedro.config import OmegaConfigLoader

from disback_pipeline.diffusion.config import soft_merge
from disback_pipeline.parameters import build
from disback_pipeline.pipelines.reference.nodes import build_feature_extractor
from disback_pipeline.pipelines.teacher.nodes import train_or_load_teacher
from disback_pipeline.settings import CONFIG_LOADER_ARGS

CONF = Path(__file__).resolve().parents[1] / "conf"
ENVS = sorted(p.name for p in CONF.iterdir() if p.is_dir() and p.name not in ("base", "local"))
EDM_ENVS = ["cifar10_cond", "cifar10_uncond", "ffhq64", "afhqv2_64", "imagenet64"]


def _params(env):
    """The parameters a `kedro run --env ENV` sees, with the project's loader settings (soft merge)."""
    return OmegaConfigLoader(str(CONF), **{**CONFIG_LOADER_ARGS, "default_run_env": env})["parameters"]


def test_envs_listed():
    assert set(EDM_ENVS + ["toy2d"]) <= set(ENVS)


@pytest.mark.parametrize("env", ENVS)
def test_env_has_every_pipeline_key(env):
    params = _params(env)
    for key in ("data", "shared", "teacher", "degradation", "backtracking", "evaluation", "compare"):
        assert key in params, key
    assert params["shared"]["sampler"]["nfe"] % 2 == 1
    assert set(build(params)) == {f"params:{b}" for b in ("data", "shared", "teacher", "degradation", "backtracking",
                                                          "evaluation", "checkpointing", "distributed")} | \
        {"params:compare.baseline", "params:compare.disback"}
    assert params["checkpointing"]["dir"] == f"data/{env}/09_training_state"  # one output tree per env


def _leaves(d, path=()):
    for k, v in d.items():
        if isinstance(v, dict) and v:
            yield from _leaves(v, (*path, k))
        else:
            yield (*path, k), v


@pytest.mark.parametrize("env", ENVS)
def test_env_files_hold_only_overrides(env):
    """Each conf/<env>/ value differs from base (or is absent there); the merge is Kedro's soft merge."""
    base = {}
    for file in sorted((CONF / "base").glob("parameters_*.yml")):
        base.update(yaml.safe_load(file.read_text()))
    merged = base
    for file in sorted((CONF / env).glob("parameters_*.yml")):
        override = yaml.safe_load(file.read_text())
        for path, value in _leaves(override):
            node = base
            for key in path:
                node = node.get(key, {}) if isinstance(node, dict) else {}
            assert node != value, f"{file.name}: {'.'.join(path)} repeats base's value {value!r}"
        merged = soft_merge(merged, override)
    resolved = _params(env)
    merged["checkpointing"]["dir"] = merged["checkpointing"]["dir"].replace("${globals:output_root}", f"data/{env}")
    assert merged == resolved  # our soft_merge (benchmarks use it) is what Kedro does, globals aside


@pytest.mark.parametrize("env", EDM_ENVS)
def test_edm_env_names_missing_files(env, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative data/01_raw paths resolve to nothing here
    params = _params(env)
    assert params["teacher"]["mode"] == "load" and params["teacher"]["checkpoint_path"].endswith(".pkl")
    with pytest.raises(FileNotFoundError, match=r"edm-.*\.pkl does not exist.*nothing is downloaded"):
        train_or_load_teacher(params["data"], params["teacher"])
    with pytest.raises(Exception, match=r"not found under|does not exist"):
        build_feature_extractor(params["data"], params["evaluation"])


@pytest.mark.parametrize(("env", "folder", "guidance"), [("sd15", "stable-diffusion-v1-5", 1.75),
                                                         ("sdxl", "stable-diffusion-xl-base-1.0", 8.0)])
def test_text_to_image_envs_name_their_missing_folder(env, folder, guidance, tmp_path, monkeypatch):
    """A text-to-image environment without its diffusers folder: the teacher and the data fail naming it."""
    from disback_pipeline.diffusion.checkpoint import CheckpointError
    from disback_pipeline.parameters import as_data, build

    monkeypatch.chdir(tmp_path)
    params = _params(env)
    build(params)  # every block valid
    assert params["teacher"]["mode"] == "diffusers" and params["shared"]["guidance_scale"] == guidance
    with pytest.raises(CheckpointError, match=rf"{folder}: no such folder.*nothing is downloaded"):
        train_or_load_teacher(params["data"], params["teacher"])
    (tmp_path / "data/01_raw").mkdir(parents=True)
    (tmp_path / f"data/01_raw/{env}-prompts.txt").write_text("a photo of a cat\n")
    with pytest.raises(CheckpointError, match=rf"{folder}.*tokenizer, text_encoder/config.json"):
        as_data(params["data"]).source  # noqa: B018 - building the source is what fails


@pytest.mark.slow
def test_environments_write_their_own_trees_and_a_rerun_reuses_finished_stages(project):
    """toy2d, then base, then toy2d again: each environment keeps its outputs; the second toy2d run trains
    nothing (its finished training states are reused) and ends with the same weights."""
    import json

    project.edit("toy2d", "parameters_teacher", teacher__training__steps=40, teacher__report__num_samples=200,
                 teacher__network__mlp__width=32)
    project.edit("toy2d", "parameters_degradation", degradation__k1=20, degradation__candidates=5,
                 degradation__probe_size=64)
    project.edit("toy2d", "parameters_backtracking", backtracking__budget=20, backtracking__k2=4,
                 backtracking__eval_every=10)
    project.edit("toy2d", "parameters_evaluation", evaluation__reference_samples=500, evaluation__n_samples=500,
                 evaluation__batch_size=500, backtracking__proxy_samples=100, evaluation__grid_samples=100)
    project.edit("base", "parameters_teacher", teacher__network__unet__model_channels=8, teacher__training__steps=4,
                 teacher__training__batch_size=8, teacher__report__num_samples=4, shared__sampler__nfe=3)
    project.run("distill", env="toy2d")
    toy = project.path / "data/toy2d"
    first = {p: p.read_bytes() for p in (toy / "06_models").rglob("*.pt")}
    states = {p: p.stat().st_mtime_ns for p in (toy / "09_training_state").rglob("state-*.pt")}
    metrics = json.loads((toy / "08_reporting/metrics.json").read_text())
    project.run("teacher", env="base")
    assert (project.path / "data/base/06_models/teacher.pt").is_file()
    assert {p: p.read_bytes() for p in (toy / "06_models").rglob("*.pt")} == first  # base wrote nothing there
    project.run("distill", env="toy2d")
    assert {p: p.stat().st_mtime_ns for p in (toy / "09_training_state").rglob("state-*.pt")} == states
    for file, content in first.items():  # the same weights again
        a = torch.load(io.BytesIO(content), weights_only=True).get("state_dict", {})
        b = torch.load(file, weights_only=True).get("state_dict", {})
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), file
    assert any(file.name == "teacher.pt" for file in first)
    again = json.loads((toy / "08_reporting/metrics.json").read_text())
    assert _quality(again) == _quality(metrics)


def _quality(metrics: dict) -> dict:
    """metrics.json without its timings."""
    if isinstance(metrics, dict):
        return {k: _quality(v) for k, v in metrics.items()
                if not any(t in k for t in ("per_s", "seconds", "throughput"))}
    return metrics
