"""Typed configuration: unknown keys, wrong types and out-of-range values fail, naming the field."""

import dataclasses

import pytest

from disback_pipeline.diffusion.config import (
    STAGES,
    ConfigError,
    DegradationConfig,
    DistillConfig,
    from_dict,
    soft_merge,
    validate_parameters,
)

# one misspelt key per stage, with the name the error must suggest
MISSPELT = {"data": ("num_mode", "num_modes"), "teacher": ("checkpoint", "checkpoint_path"),
            "degradation": ("n_node", "n_nodes"), "backtracking": ("fake_step", "fake_steps"),
            "evaluation": ("proxy_sample", "proxy_samples"), "checkpointing": ("resumes", "resume"),
            "distributed": ("nprocs", "nproc")}
# one out-of-range value per stage, with the words the error must hold
OUT_OF_RANGE = {"data": ("std", -0.1, "data.std must be > 0"),
                "teacher": ("device", "gpu", "teacher.device must be auto, cpu or cuda"),
                "degradation": ("lr", 0.0, "degradation.lr must be > 0"),
                "backtracking": ("ema_decay", 1.0, r"backtracking.ema_decay must be in \[0, 1\)"),
                "evaluation": ("n_samples", 0, "evaluation.n_samples must be >= 1"),
                "checkpointing": ("resume", "always", "checkpointing.resume must be one of auto | never"),
                "distributed": ("nproc", 0, "distributed.nproc must be >= 1")}
TEACHER_BASE = {"network": {"backbone": "mlp"}}


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_unknown_key_names_the_nearest_valid_one(stage):
    bad, good = MISSPELT[stage]
    base = TEACHER_BASE if stage == "teacher" else {}
    with pytest.raises(ConfigError, match=f"unknown parameter {stage}.{bad}; did you mean {stage}.{good}\\?"):
        from_dict(STAGES[stage], {**base, bad: 1}, stage)


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_out_of_range_value_names_the_field(stage):
    key, value, message = OUT_OF_RANGE[stage]
    base = TEACHER_BASE if stage == "teacher" else {}
    with pytest.raises(ConfigError, match=message):
        from_dict(STAGES[stage], {**base, key: value}, stage)


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


def test_validate_parameters_checks_compare_arms_merged_into_backtracking():
    params = {"backtracking": {"loss": "dmd"}, "compare": {"baseline": {"enabled": False}, "disback": {"enabled": 1}}}
    with pytest.raises(ConfigError, match="compare.disback.enabled must be true or false, got 1"):
        validate_parameters(params)


def test_soft_merge_is_recursive_and_replaces_lists():
    base = {"a": {"b": 1, "c": [1, 2], "d": {"e": 1}}, "f": 0}
    assert soft_merge(base, {"a": {"c": [3], "d": {"g": 2}}}) == {"a": {"b": 1, "c": [3], "d": {"e": 1, "g": 2}},
                                                                  "f": 0}
    assert base["a"]["d"] == {"e": 1}  # the base is not modified


def test_a_misspelt_runtime_parameter_fails_before_anything_trains(project, caplog):
    """`kedro run --params backtracking.fake_step=5` fails at session start, naming the key; no output written."""
    from kedro.framework.project import configure_project
    from kedro.framework.session import KedroSession

    configure_project("disback_pipeline")
    with pytest.raises(ConfigError, match=r"unknown parameter backtracking.fake_step; did you mean "
                                          r"backtracking.fake_steps\?"):
        with KedroSession.create(project_path=project.path, runtime_params={"backtracking": {"fake_step": 5}}) \
                as session:
            session.run(pipeline_names=["distill"])
    assert not any((project.path / "data").rglob("*.pt"))  # the teacher never started
