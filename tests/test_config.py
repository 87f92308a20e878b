"""Typed configuration: unknown keys, wrong types and out-of-range values fail, naming the field."""

import dataclasses

import pytest

from disback_pipeline.diffusion.config import (
    ConfigError,
    DegradationConfig,
    DistillConfig,
    SharedConfig,
    from_dict,
    soft_merge,
)
from disback_pipeline.parameters import BLOCKS, ELSEWHERE, Data, build, distill_config, typed

# one misspelt key per stage, with the name the error must suggest
MISSPELT = {"data": ("num_mode", "num_modes"), "teacher": ("checkpoint", "checkpoint_path"),
            "degradation": ("n_node", "n_nodes"), "backtracking": ("fake_step", "fake_steps"),
            "evaluation": ("n_sample", "n_samples"), "checkpointing": ("resumes", "resume"),
            "distributed": ("nprocs", "nproc"), "shared": ("s_int", "s_init")}
# one out-of-range value per stage, with the words the error must hold
OUT_OF_RANGE = {"data": ("std", -0.1, "data.std must be > 0"),
                "teacher": ("device", "gpu", "teacher.device must be auto, cpu or cuda"),
                "degradation": ("lr", 0.0, "degradation.lr must be > 0"),
                "backtracking": ("ema_decay", 1.0, r"backtracking.ema_decay must be in \[0, 1\)"),
                "evaluation": ("n_samples", 0, "evaluation.n_samples must be >= 1"),
                "checkpointing": ("resume", "always", "checkpointing.resume must be one of auto | never"),
                "distributed": ("nproc", 0, "distributed.nproc must be >= 1"),
                "shared": ("s_init", 0.0, "shared.s_init must be > 0")}
TEACHER_BASE = {"network": {"backbone": "mlp"}}


@pytest.mark.parametrize("stage", sorted(BLOCKS))
def test_unknown_key_names_the_nearest_valid_one(stage):
    bad, good = MISSPELT[stage]
    base = TEACHER_BASE if stage == "teacher" else {}
    with pytest.raises(ConfigError, match=f"unknown parameter {stage}.{bad}; did you mean {stage}.{good}\\?"):
        from_dict(BLOCKS[stage], {**base, bad: 1}, stage)


@pytest.mark.parametrize("stage", sorted(BLOCKS))
def test_out_of_range_value_names_the_field(stage):
    key, value, message = OUT_OF_RANGE[stage]
    base = TEACHER_BASE if stage == "teacher" else {}
    with pytest.raises(ConfigError, match=message):
        from_dict(BLOCKS[stage], {**base, key: value}, stage)


def test_floats_are_not_truncated_to_integers():
    with pytest.raises(ConfigError, match=r"degradation.n_nodes must be an integer, got 2.7"):
        from_dict(DegradationConfig, {"n_nodes": 2.7}, "degradation")
    with pytest.raises(ConfigError, match=r"backtracking.budget must be an integer, got '600'"):
        from_dict(DistillConfig, {"budget": "600"}, "backtracking")
    assert from_dict(DistillConfig, {"lr_fake": 1}, "backtracking").lr_fake == 1.0  # an int is a valid number


def test_nested_settings_are_checked_too():
    with pytest.raises(ConfigError, match=r"unknown parameter backtracking.adaptive.fraktion; did you mean "
                                          r"backtracking.adaptive.fraction\?"):
        from_dict(DistillConfig, {"adaptive": {"fraktion": 0.5}}, "backtracking")
    with pytest.raises(ConfigError, match=r"backtracking.sid.t_max must be in \(0, 1\]"):
        from_dict(DistillConfig, {"sid": {"t_max": 1.5}}, "backtracking")
    with pytest.raises(ConfigError, match=r"backtracking.betas must have 2 entries"):
        from_dict(DistillConfig, {"betas": [0.9]}, "backtracking")
    with pytest.raises(ConfigError, match=r"backtracking.loss must be one of di \| dmd \| sid, got 'vsd'"):
        from_dict(DistillConfig, {"loss": "vsd"}, "backtracking")


def test_configs_are_frozen_and_yaml_lists_become_tuples():
    cfg = from_dict(DistillConfig, {"betas": [0.0, 0.99], "switch": "adaptive", "adaptive": {"cap": 300}},
                    "backtracking")
    assert cfg.betas == (0.0, 0.99) and cfg.adaptive.cap == 300 and cfg.adaptive.window == 100
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.budget = 5


def test_build_checks_compare_arms_merged_into_shared():
    params = {"shared": {"s_init": 1.5}, "compare": {"baseline": {"enabled": False}, "disback": {"enabled": 1}}}
    with pytest.raises(ConfigError, match="compare.disback.enabled must be true or false, got 1"):
        build(params)
    params["compare"]["disback"]["enabled"] = True
    built = build(params)
    assert built["params:compare.baseline"] == SharedConfig(enabled=False, s_init=1.5)
    assert built["params:compare.disback"] == SharedConfig(enabled=True, s_init=1.5)


def test_build_hands_on_typed_blocks_and_one_data_source():
    built = build({"data": {"source": "gmm2d"}, "backtracking": {"loss": "dmd"}, "shared": {"enabled": False}})
    data = built["params:data"]
    assert isinstance(data, Data) and data.source is data.source  # built once, then the same object
    assert typed(built["params:backtracking"], DistillConfig, "backtracking") is built["params:backtracking"]
    cfg = distill_config(built["params:backtracking"], built["params:shared"])
    assert (cfg.loss, cfg.enabled, cfg.method, cfg.s_init) == ("dmd", False, "baseline", 2.5)


@pytest.mark.parametrize("block, key", [(b, k) for b, keys in ELSEWHERE.items() for k in keys])
def test_a_key_that_lives_in_another_block_names_its_home(block, key):
    home = ELSEWHERE[block][key]
    with pytest.raises(ConfigError, match=f"{block}.{key} is not a {block} setting: set {home}"):
        build({block: {key: 1}})


def test_the_settings_hook_hands_every_node_the_same_built_objects():
    """One build a run: each node gets the built blocks (the data source built, an image folder scanned, once);
    a compare arm's nodes get the arm's settings and their own training-state folder."""
    from types import SimpleNamespace

    from disback_pipeline.diffusion.config import CheckpointingConfig
    from disback_pipeline.hooks import Settings

    hook = Settings()
    params = {"data": {"source": "gmm2d"}, "shared": {"s_init": 1.5}, "checkpointing": {"dir": "states"},
              "compare": {"baseline": {"enabled": False}}}
    hook.after_context_created(SimpleNamespace(params=params))
    inputs = {"params:data": params["data"], "params:shared": params["shared"], "teacher_model": object()}
    first = hook.before_node_run(SimpleNamespace(namespace="teacher"), inputs)
    second = hook.before_node_run(SimpleNamespace(namespace="degradation"), inputs)
    assert set(first) == {"params:data", "params:shared"} and first["params:data"] is second["params:data"]
    assert first["params:data"].source is second["params:data"].source
    arm = hook.before_node_run(SimpleNamespace(namespace="baseline.backtracking"),
                               {"params:compare.baseline": {}, "params:checkpointing": {}})
    assert arm["params:compare.baseline"] == SharedConfig(enabled=False, s_init=1.5)
    assert arm["params:checkpointing"] == CheckpointingConfig(dir="states/compare/baseline")
    plain = hook.before_node_run(SimpleNamespace(namespace="backtracking"), {"params:checkpointing": {}})
    assert plain["params:checkpointing"] == CheckpointingConfig(dir="states")


def test_kedro_leaves_the_settings_to_the_project():
    """Kedro builds a node parameter hinted with a dataclass itself (``cls(**block)``: nested blocks stay dicts,
    no nearest-key message); no node of ours hints one, so every block is built by :func:`build` alone."""
    from kedro.framework.project import configure_project
    from kedro.validation.type_extractor import TypeExtractor

    from disback_pipeline.pipeline_registry import register_pipelines

    configure_project("disback_pipeline")
    assert TypeExtractor(register_pipelines()).extract_types_from_pipelines() == {}


def test_proxy_latents_must_be_held_out_from_the_evaluation():
    with pytest.raises(ConfigError, match=r"backtracking.proxy_seed = evaluation.seed = 3: .* different seeds"):
        build({"backtracking": {"proxy_seed": 3}, "evaluation": {"seed": 3}})


def test_soft_merge_is_recursive_and_replaces_lists():
    base = {"a": {"b": 1, "c": [1, 2], "d": {"e": 1}}, "f": 0}
    assert soft_merge(base, {"a": {"c": [3], "d": {"g": 2}}}) == {"a": {"b": 1, "c": [3], "d": {"e": 1, "g": 2}},
                                                                  "f": 0}
    assert base["a"]["d"] == {"e": 1}  # the base is not modified


def test_a_misspelt_runtime_parameter_fails_before_anything_trains(project, caplog):
    """`kedro run --params backtracking.fake_step=5` fails when the run starts, naming the key; no output written."""
    from kedro.framework.project import configure_project
    from kedro.framework.session import KedroSession

    configure_project("disback_pipeline")
    with pytest.raises(ConfigError, match=r"unknown parameter backtracking.fake_step; did you mean "
                                          r"backtracking.fake_steps\?"):
        with KedroSession.create(project_path=project.path, runtime_params={"backtracking": {"fake_step": 5}}) \
                as session:
            session.run(pipeline_names=["distill"])
    assert not any((project.path / "data").rglob("*.pt"))  # the teacher never started


def _defaults(cls) -> dict:
    """A config class's field defaults, nested classes as dicts and tuples as lists (as YAML has them)."""
    def plain(v):
        if dataclasses.is_dataclass(v):
            return _defaults(type(v))
        return [plain(x) for x in v] if isinstance(v, (tuple, list)) else v

    return {f.name: plain(f.default if f.default is not dataclasses.MISSING else f.default_factory())
            for f in dataclasses.fields(cls)}


def _differences(yaml_block: dict, defaults: dict, where: str, complete: bool) -> list[str]:
    out = [f"{where}.{k}: absent from conf/base (default {defaults[k]!r})" for k in defaults
           if complete and k not in yaml_block]
    for key, value in yaml_block.items():
        if key not in defaults:
            out.append(f"{where}.{key}: in conf/base, no such field")
        elif isinstance(value, dict) and isinstance(defaults[key], dict) and defaults[key]:
            out += _differences(value, defaults[key], f"{where}.{key}", complete)
        elif isinstance(value, dict):
            continue  # a free-form block (teacher.network): no defaults to agree with
        elif value != defaults[key] or type(value) is not type(defaults[key]) and defaults[key] is not None:
            out.append(f"{where}.{key}: conf/base {value!r}, default {defaults[key]!r}")
    return out


def test_conf_base_repeats_exactly_the_defaults():
    """One recipe: conf/base holds every field of every stage at the config classes' default (the data block
    only the keys of its source), so a reader of either sees the same run."""
    from kedro.config import OmegaConfigLoader

    from disback_pipeline.settings import CONFIG_LOADER_ARGS

    from .conftest import ROOT

    loader = OmegaConfigLoader(str(ROOT / "conf"), **{**CONFIG_LOADER_ARGS, "default_run_env": "base"})
    params = loader["parameters"]
    differences = []
    for stage, cls in BLOCKS.items():
        defaults = {k: v for k, v in _defaults(cls).items() if k not in ELSEWHERE.get(stage, {})}
        differences += _differences(params[stage], defaults, stage, complete=stage != "data")
    assert differences == []
