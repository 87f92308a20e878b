"""Every Kedro environment resolves, and the large-scale ones fail clearly without their files."""

from pathlib import Path

import pytest
import yaml
from kedro.config import OmegaConfigLoader

from disback_pipeline.diffusion.config import soft_merge, validate_parameters
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
    for key in ("data", "teacher", "degradation", "backtracking", "evaluation", "compare"):
        assert key in params, key
    assert params["teacher"]["sampler"]["nfe"] % 2 == 1
    assert set(validate_parameters(params)) == {"data", "teacher", "degradation", "backtracking", "evaluation",
                                                "checkpointing"}
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
