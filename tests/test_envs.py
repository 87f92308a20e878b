"""Every Kedro environment resolves, and the large-scale ones fail clearly without their files."""

from pathlib import Path

import pytest
from kedro.config import OmegaConfigLoader

from disback_pipeline.pipelines.reference.nodes import build_feature_extractor
from disback_pipeline.pipelines.teacher.nodes import train_or_load_teacher

CONF = Path(__file__).resolve().parents[1] / "conf"
ENVS = sorted(p.name for p in CONF.iterdir() if p.is_dir() and p.name not in ("base", "local"))
EDM_ENVS = ["cifar10_cond", "cifar10_uncond", "ffhq64", "afhqv2_64", "imagenet64"]


def _params(env):
    return OmegaConfigLoader(str(CONF), base_env="base", default_run_env=env)["parameters"]


def test_envs_listed():
    assert set(EDM_ENVS + ["toy2d"]) <= set(ENVS)


@pytest.mark.parametrize("env", ENVS)
def test_env_has_every_pipeline_key(env):
    params = _params(env)
    for key in ("data", "teacher", "degradation", "backtracking", "evaluation", "compare"):
        assert key in params, key
    assert params["teacher"]["sampler"]["nfe"] % 2 == 1


@pytest.mark.parametrize("env", EDM_ENVS)
def test_edm_env_names_missing_files(env, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative data/01_raw paths resolve to nothing here
    params = _params(env)
    assert params["teacher"]["mode"] == "load" and params["teacher"]["checkpoint_path"].endswith(".pkl")
    with pytest.raises(FileNotFoundError, match=r"edm-.*\.pkl does not exist.*nothing is downloaded"):
        train_or_load_teacher(params["data"], params["teacher"])
    with pytest.raises(Exception, match=r"not found under|does not exist"):
        build_feature_extractor(params["data"], params["evaluation"])
