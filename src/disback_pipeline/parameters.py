"""A run's settings: Kedro's parameters built into the typed configurations of :mod:`.diffusion.config`, once.

The blocks of ``conf/<env>/parameters_*.yml``:

- each pipeline's own: ``teacher``, ``degradation``, ``backtracking``, ``evaluation`` (``reference`` reads the
  evaluation's feature settings);
- ``shared``: the values several pipelines read (whether backtracking is on, the generator's ``s_init``, the
  teacher's sampler and guidance, how stages 1 and 2 train their copies: ``trained_nets``);
- the run as a whole, owned by no pipeline: ``data``, ``checkpointing``, ``distributed``;
- ``compare``: per-arm overrides of ``shared``.

When a run starts, the project hook :class:`~disback_pipeline.hooks.Settings` calls :func:`build` (a misspelt
key fails within seconds) and hands each node the built objects in place of the raw ``params:<block>`` dicts.
A node called directly with dicts builds them on the spot (:func:`typed`, :func:`as_data`). The nodes' settings
arguments carry no dataclass type hint on purpose: Kedro 1.7 builds a hinted dataclass parameter itself, as
``cls(**block)``, which neither converts nested blocks nor names the nearest valid key.
"""

from __future__ import annotations

import dataclasses
from functools import cached_property
from typing import Any

from .diffusion.config import (
    CheckpointingConfig,
    ConfigError,
    DataConfig,
    DegradationConfig,
    DistillConfig,
    DistributedConfig,
    EvaluationConfig,
    SharedConfig,
    TeacherConfig,
    from_dict,
    soft_merge,
)
from .diffusion.data import DataSource, SourceOnEachMachine, make_data_source

BLOCKS = {"data": DataConfig, "shared": SharedConfig, "teacher": TeacherConfig, "degradation": DegradationConfig,
          "backtracking": DistillConfig, "evaluation": EvaluationConfig, "checkpointing": CheckpointingConfig,
          "distributed": DistributedConfig}

# keys a block does not take because another block holds them (DistillConfig keeps enabled and s_init for the
# library's callers; in a Kedro run they come from shared)
ELSEWHERE = {"backtracking": {"enabled": "shared.enabled", "s_init": "shared.s_init",
                              "trained_nets": "shared.trained_nets", "guidance_scale": "shared.guidance_scale"},
             "degradation": {"trained_nets": "shared.trained_nets"},
             "teacher": {"sampler": "shared.sampler"},
             "evaluation": {"proxy_samples": "backtracking.proxy_samples"}}


class Data:
    """The ``data`` block and the source it describes, built (an image folder scanned, its content hashed) once."""

    def __init__(self, config: DataConfig):
        self.config = config

    @property
    def name(self) -> str:
        return self.config.source

    @cached_property
    def source(self) -> DataSource:
        return make_data_source(self.config)

    @cached_property
    def sha256(self) -> str:
        return self.source.content_sha256()

    def for_ranks(self, ranks: DistributedConfig) -> DataSource | SourceOnEachMachine:
        """The source as the ranks get it: itself on one machine; on several, what each machine builds from its
        own files and checks against this one's content."""
        return self.source if ranks.machines is None else SourceOnEachMachine(self.config, self.sha256)


def typed(value: Any, cls: type, where: str):
    """``value`` as a ``cls``: as it is when a run's hook built it already, else built from the dict."""
    if isinstance(value, cls):
        return value
    for key, home in ELSEWHERE.get(where, {}).items():
        if key in (value or {}):
            raise ConfigError(f"{where}.{key} is not a {where} setting: set {home} (a value several stages read)")
    return from_dict(cls, value, where)


def as_data(value: Data | DataConfig | dict) -> Data:
    if isinstance(value, Data):
        return value
    return Data(value if isinstance(value, DataConfig) else typed(value, DataConfig, "data"))


def distill_config(backtracking: DistillConfig | dict, shared: SharedConfig | dict) -> DistillConfig:
    """Stage 2's configuration: the backtracking block with the shared method, s_init, guidance and trained
    networks."""
    shared = typed(shared, SharedConfig, "shared")
    return dataclasses.replace(typed(backtracking, DistillConfig, "backtracking"), enabled=shared.enabled,
                               s_init=shared.s_init, trained_nets=shared.trained_nets,
                               guidance_scale=shared.guidance_scale)


def degradation_config(degradation: DegradationConfig | dict, shared: SharedConfig | dict) -> DegradationConfig:
    """Stage 1's configuration: the degradation block with the shared trained networks."""
    shared = typed(shared, SharedConfig, "shared")
    return dataclasses.replace(typed(degradation, DegradationConfig, "degradation"),
                               trained_nets=shared.trained_nets)


def reference_source(data: Data, evaluation: EvaluationConfig) -> DataSource:
    """The real images the reference statistics describe: the training data, or the held-out folder
    ``evaluation.reference_path`` (read at the data's resolution and channels)."""
    check_reference_path(data.config, evaluation)
    if evaluation.reference_path is None:
        return data.source
    return make_data_source(dataclasses.replace(data.config, path=evaluation.reference_path))


def check_reference_path(data: DataConfig, evaluation: EvaluationConfig) -> None:
    if evaluation.reference_path is not None and data.source != "image_folder":
        raise ConfigError(f"evaluation.reference_path is for image folders, and data.source is {data.source}; "
                          "set evaluation.reference_path to null")


def build(params: dict[str, Any]) -> dict[str, Any]:
    """Every block present in ``params`` built, as ``{"params:<block>": object}``, the data block as a
    :class:`Data` and each compare arm as ``params:compare.<arm>`` (its overrides merged over ``shared``).
    Fails on the first unknown key or bad value, and on settings that contradict each other."""
    built = {f"params:{name}": typed(params[name] or {}, cls, name) for name, cls in BLOCKS.items()
             if name in params}
    if "params:data" in built:
        built["params:data"] = Data(built["params:data"])
    for arm, overrides in (params.get("compare") or {}).items():
        built[f"params:compare.{arm}"] = from_dict(SharedConfig, soft_merge(params.get("shared") or {},
                                                                            overrides or {}), f"compare.{arm}")
    stage2, evaluation = built.get("params:backtracking"), built.get("params:evaluation")
    if evaluation is not None and "params:data" in built:
        check_reference_path(built["params:data"].config, evaluation)
    if stage2 is not None and evaluation is not None and stage2.proxy_seed == evaluation.seed:
        raise ConfigError(f"backtracking.proxy_seed = evaluation.seed = {evaluation.seed}: the proxy evaluations "
                          "(which pick the kept generator under keep: best) must not see the final evaluation's "
                          "latents; give them different seeds")
    return built
