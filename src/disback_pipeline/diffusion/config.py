"""Typed configuration: one frozen dataclass per stage, built once from the parameters dict.

Each field has its unit in a comment and the single default; conf/base repeats exactly these
values (tests/test_config.py fails when the two disagree), and environments override them.
:func:`from_dict` refuses unknown keys, naming the nearest valid one, and wrong types; each class's ``__post_init__``
checks ranges and choices, naming the field.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from .distributed import Machines
from .schedule import AdaptiveRule


class ConfigError(ValueError):
    """A parameter is unknown, of the wrong type, or out of range."""


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp))


def _convert_union(value: Any, tp, where: str):
    args = typing.get_args(tp)
    if value is None and type(None) in args:
        return None
    errors = []
    for arg in (a for a in args if a is not type(None)):
        try:
            return _convert(value, arg, where)
        except ConfigError as exc:
            errors.append(str(exc))
    raise ConfigError(errors[0])


def _convert_literal(value: Any, tp, where: str):
    choices = typing.get_args(tp)
    if value not in choices:
        raise ConfigError(f"{where} must be one of {' | '.join(map(str, choices))}, got {value!r}")
    return value


def _convert_tuple(value: Any, tp, where: str):
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{where} must be a list, got {value!r}")
    args = typing.get_args(tp)
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(_convert(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
    if len(value) != len(args):
        raise ConfigError(f"{where} must have {len(args)} entries, got {list(value)!r}")
    return tuple(_convert(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))


def _convert_dict(value: Any, tp, where: str):
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a mapping, got {value!r}")
    return dict(value)


# scalar type -> (accepts the value?, how the error names the type, conversion)
_SCALARS = {
    bool: (lambda v: isinstance(v, bool), "true or false", bool),
    int: (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer", int),
    float: (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool), "a number", float),
    str: (lambda v: isinstance(v, str), "a string", str),
}


def _convert(value: Any, tp, where: str):
    """``value`` as type ``tp`` or a ConfigError naming ``where``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return _convert_union(value, tp, where)
    if origin is Literal:
        return _convert_literal(value, tp, where)
    if origin is tuple:
        return _convert_tuple(value, tp, where)
    if origin is dict or tp is dict:
        return _convert_dict(value, tp, where)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping of {_type_name(tp)} fields, got {value!r}")
        return from_dict(tp, value, where)
    if tp in _SCALARS:
        ok, name, cast = _SCALARS[tp]
        if not ok(value):
            raise ConfigError(f"{where} must be {name}, got {value!r}")
        return cast(value)
    raise ConfigError(f"{where}: unsupported field type {tp!r}")  # a bug in a config class, not in the YAML


def from_dict(cls, data: dict[str, Any] | None, where: str = ""):
    """Build the frozen dataclass ``cls`` from ``data``; unknown keys and wrong types fail."""
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    prefix = f"{where}." if where else ""
    unknown = [k for k in data if k not in names]
    if unknown:
        key = unknown[0]
        near = difflib.get_close_matches(str(key), names, n=1, cutoff=0.5)
        hint = f"; did you mean {prefix}{near[0]}?" if near else f"; valid keys: {', '.join(names)}"
        raise ConfigError(f"unknown parameter {prefix}{key}{hint}")
    kwargs = {k: _convert(v, hints[k], f"{prefix}{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ValueError as exc:  # range checks in __post_init__ start with the field's name
        raise ConfigError(f"{prefix}{exc}") from exc


def _positive(obj, *names: str) -> None:
    for name in names:
        v = getattr(obj, name)
        if not v > 0:
            raise ConfigError(f"{name} must be > 0, got {v!r}")


def _at_least(obj, low: int, *names: str) -> None:
    for name in names:
        v = getattr(obj, name)
        if v < low:
            raise ConfigError(f"{name} must be >= {low}, got {v!r}")


def _fraction(obj, *names: str, closed: bool = False) -> None:
    for name in names:
        v = getattr(obj, name)
        if not (0.0 <= v <= 1.0 if closed else 0.0 <= v < 1.0):
            raise ConfigError(f"{name} must be in [0, 1{']' if closed else ')'}, got {v!r}")


Device = str  # auto | cpu | cuda | cuda:N


def _device(obj) -> None:
    if not (obj.device in ("auto", "cpu") or obj.device.startswith("cuda")):
        raise ConfigError(f"device must be auto, cpu or cuda[:N], got {obj.device!r}")


@dataclass(frozen=True)
class SigmaConfig:
    """Noise levels of the Diff-Instruct / DMD generator loss."""

    dist: Literal["lognormal", "loguniform"] = "lognormal"  # distribution of sigma
    P_mean: float = -1.2      # mean of ln(sigma) for lognormal (log data units)
    P_std: float = 1.2        # std of ln(sigma) for lognormal (log data units)
    sigma_min: float = 0.002  # lowest sigma for loguniform (data units)
    sigma_max: float = 80.0   # highest sigma for loguniform (data units)

    def __post_init__(self):
        _positive(self, "P_std", "sigma_min")
        if not self.sigma_max > self.sigma_min:
            raise ConfigError(f"sigma_max must be > sigma_min, got {self.sigma_max} <= {self.sigma_min}")


@dataclass(frozen=True)
class SiDConfig:
    """Hyper-parameters of the SiD generator loss (used when loss = sid)."""

    alpha: float = 1.2        # weight of the ||D_T - D_F||^2 term (dimensionless)
    t_max: float = 0.8        # cap on the noise level: uniform position in [0, t_max] of EDM's schedule (0..1]
    sigma_min: float = 0.002  # schedule's smallest sigma (data units)
    sigma_max: float = 80.0   # schedule's largest sigma (data units)
    rho: float = 7.0          # schedule curvature (dimensionless)
    normalise: bool = True    # divide per sample by mean |x_g - D_T|

    def __post_init__(self):
        if not 0.0 < self.t_max <= 1.0:
            raise ConfigError(f"t_max must be in (0, 1], got {self.t_max!r}")
        _positive(self, "sigma_min", "rho")


@dataclass(frozen=True)
class GanConfig:
    """The adversarial term on real data (used when gan_weight > 0)."""

    lr: float = 1.0e-4        # Adam learning rate of the discriminator head (per step)
    hidden: int = 64          # width of the head's hidden layer (units)
    P_mean: float = -1.2      # mean of ln(sigma) at which real and generated data are noised
    P_std: float = 1.2        # std of ln(sigma) for the same

    def __post_init__(self):
        _positive(self, "lr", "hidden", "P_std")


@dataclass(frozen=True)
class TrainedNetsConfig:
    """How stages 1 and 2 train their copies of the teacher (the degraded/fake score and the generator)."""

    lora_rank: int = 0                # LoRA rank on the UNet's target layers (diffusers teachers; 0 = every weight)
    lora_alpha: float = 0.0           # LoRA scale numerator: updates scaled by alpha / rank (0 = the rank: scale 1)
    lora_targets: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")  # module names that get adapters
    gradient_checkpointing: bool = False  # recompute the trained UNets' activations in backward (diffusers)

    def __post_init__(self):
        _at_least(self, 0, "lora_rank", "lora_alpha")
        if self.lora_rank and not self.lora_targets:
            raise ConfigError("lora_targets must name at least one module when lora_rank > 0")

    @property
    def lora(self) -> bool:
        return self.lora_rank > 0


@dataclass(frozen=True)
class DistillConfig:
    """Stage 2 (and the baseline): score distillation of the one-step generator."""

    enabled: bool = True              # false = the baseline: no stage 1, fake score from the teacher
    loss: Literal["di", "dmd", "sid"] = "di"  # base score-distillation loss
    s_init: float = 2.5               # noise level at which G denoises its latent (data units)
    switch: Literal["fixed", "adaptive"] = "fixed"  # when to leave a path node
    k2: int = 10                      # K2: generator iterations per intermediate node when fixed (count)
    adaptive: AdaptiveRule = field(default_factory=AdaptiveRule)  # rule when switch = adaptive
    budget: int = 500                 # total generator iterations (count)
    fake_steps: int = 1               # r: fake-score DSM steps per generator step (count)
    lr_generator: float = 2.0e-4      # generator Adam learning rate (per step)
    lr_fake: float = 2.0e-4           # fake-score Adam learning rate (per step)
    guidance_scale: float = 1.0       # classifier-free guidance of the target (text-conditioned teachers; 1 = none)
    trained_nets: TrainedNetsConfig = field(default_factory=TrainedNetsConfig)  # LoRA, checkpointing (shared)
    lr_schedule: Literal["constant", "cosine"] = "cosine"  # both learning rates over the budget (cosine: to 0)
    betas: tuple[float, float] = (0.0, 0.999)  # Adam betas for both networks
    batch_size: int = 64              # samples per step (count)
    sigma: SigmaConfig = field(default_factory=SigmaConfig)  # generator-loss noise levels (di, dmd)
    sid: SiDConfig = field(default_factory=SiDConfig)         # SiD's hyper-parameters (loss = sid)
    gan_weight: float = 0.0           # weight of the adversarial term on real data (0 = off)
    gan: GanConfig = field(default_factory=GanConfig)         # the adversarial head (gan_weight > 0)
    fake_P_mean: float = -1.2         # mean of ln(sigma) for the fake score's DSM loss
    fake_P_std: float = 1.2           # std of ln(sigma) for the fake score's DSM loss
    ema_decay: float = 0.99           # generator EMA decay per iteration (fraction)
    ema_rampup: float = 0.0           # EMA half-life at most this share of the iterations so far (0 = off)
    seed: int = 0                     # integer RNG seed
    device: Device = "auto"           # auto | cpu | cuda
    bf16: bool = False                # bf16 autocast on CUDA
    compile: bool = False             # torch.compile the networks in place (state_dict keys unchanged)
    channels_last: bool = False       # NHWC memory layout for image networks (faster convolutions on CUDA)
    log_every: int = 100              # status line interval (iterations; 0 = never)
    eval_every: int = 100             # proxy-quality interval (iterations; 0 = never)
    record_every: int = 1             # history row interval (iterations)
    checkpoint_every: int = 100       # training-state interval (iterations; 0 = only at the end)
    keep: Literal["last", "best"] = "best"  # EMA generator handed on: the last, or the best by the proxy quality
    reset_optimizer: bool = True      # restart the generator's Adam moments at every change of target
    proxy_samples: int = 500          # samples per proxy evaluation (count)
    proxy_seed: int = 1               # latent seed of the proxy evaluations (held out from evaluation.seed's)
    grid_samples: int = 64            # images in each panel of the switch figure (count; 2-D data: 2000 points)

    def __post_init__(self):
        _positive(self, "s_init", "lr_generator", "lr_fake", "fake_P_std")
        _at_least(self, 0, "guidance_scale")
        if self.keep == "best" and self.eval_every == 0:
            raise ValueError("keep: best picks the EMA generator at the proxy evaluations, and eval_every is 0 "
                             "(never); set eval_every > 0 or keep: last")
        _at_least(self, 0, "k2", "log_every", "eval_every", "gan_weight", "checkpoint_every", "ema_rampup")
        _at_least(self, 1, "budget", "fake_steps", "batch_size", "record_every", "proxy_samples", "grid_samples")
        _fraction(self, "ema_decay")
        for i, b in enumerate(self.betas):
            if not 0.0 <= b < 1.0:
                raise ConfigError(f"betas[{i}] must be in [0, 1), got {b!r}")
        _device(self)

    @property
    def method(self) -> str:
        return "disback" if self.enabled else "baseline"

    def generator_loss(self):
        """The configured generator loss object."""
        from .losses import make_generator_loss

        if self.loss == "sid":
            return make_generator_loss("sid", **dataclasses.asdict(self.sid))
        s = self.sigma
        return make_generator_loss(self.loss, sigma_dist=s.dist, P_mean=s.P_mean, P_std=s.P_std,
                                   sigma_min=s.sigma_min, sigma_max=s.sigma_max)


@dataclass(frozen=True)
class DegradationConfig:
    """Stage 1: fine-tune a teacher copy on the frozen initial generator's samples."""

    k1: int = 300                     # K1: fine-tuning iterations (steps)
    n_nodes: int = 4                  # N: path nodes after the teacher (count)
    spacing: Literal["iterations", "distance"] = "distance"  # where the nodes go
    candidates: int = 40              # snapshots considered by spacing = distance (count)
    probe_size: int = 256             # probe batch for denoiser distances (samples)
    lr: float = 1.0e-3                # Adam learning rate (per step)
    betas: tuple[float, float] = (0.9, 0.999)  # Adam betas
    batch_size: int = 64              # generator samples per step (count)
    P_mean: float = -1.2              # mean of ln(sigma) for the DSM loss
    P_std: float = 1.2                # std of ln(sigma) for the DSM loss
    seed: int = 0                     # integer RNG seed
    device: Device = "auto"           # auto | cpu | cuda
    bf16: bool = False                # bf16 autocast on CUDA
    log_every: int = 100              # status line interval (steps; 0 = never)
    record_every: int = 1             # history row interval (steps)
    checkpoint_every: int = 100       # training-state interval (steps; 0 = only at the end)
    trained_nets: TrainedNetsConfig = field(default_factory=TrainedNetsConfig)  # LoRA, checkpointing (shared)

    def __post_init__(self):
        _at_least(self, 1, "n_nodes", "candidates", "probe_size", "batch_size", "record_every")
        _at_least(self, 0, "log_every", "checkpoint_every")
        if self.k1 < self.n_nodes:
            raise ConfigError(f"k1 (K1, degradation iterations) must be >= n_nodes = {self.n_nodes}, got {self.k1}")
        _positive(self, "lr", "P_std")
        _device(self)


@dataclass(frozen=True)
class DataConfig:
    """The data set shared by every stage; which keys matter depends on ``source``."""

    source: Literal["gmm2d", "digits", "image_folder", "torchvision"] = "digits"  # where the data come from
    conditional: bool = False         # feed one-hot class labels to every network
    layout: Literal["ring", "grid", "custom"] = "ring"  # gmm2d: arrangement of the modes
    num_modes: int = 8                # gmm2d ring: modes (count)
    radius: float = 1.0               # gmm2d ring: radius (data units)
    std: float = 0.05                 # gmm2d: per-axis standard deviation of each mode (data units)
    size: int = 5                     # gmm2d grid: modes per side (count)
    spacing: float = 0.5              # gmm2d grid: distance between neighbouring modes (data units)
    means: tuple[tuple[float, float], ...] | None = None  # gmm2d custom: mode centres (data units)
    path: str | None = None           # image_folder: folder of images (sub-folders become labels)
    resolution: int | None = None     # image_folder / torchvision: side length (pixels)
    channels: int = 3                 # image_folder: 1 or 3
    name: Literal["mnist", "fashion_mnist", "cifar10"] | None = None  # torchvision: which set
    root: str | None = None           # torchvision: local folder holding the set
    download: bool = False            # torchvision: fetch from the network (never in tests or default runs)
    workers: int = 2                  # image_folder: DataLoader processes decoding files (count; 0 = main process)
    prompts: str | None = None        # text-to-image: file of prompts (.txt, one a line; .csv/.parquet: `prompt`)
    text_encoder: str | None = None   # text-to-image: the diffusers folder whose tokenizer and text encoder embed them
    vae: str | None = None            # latent teachers: the diffusers folder whose VAE (vae/) encodes and decodes

    def __post_init__(self):
        _at_least(self, 1, "num_modes", "size")
        _at_least(self, 0, "workers")
        if (self.prompts is None) != (self.text_encoder is None):
            raise ConfigError("prompts and text_encoder go together: the prompts file and the diffusers folder whose "
                              "text encoder embeds them (usually teacher.checkpoint_path)")
        if self.prompts is not None and self.conditional:
            raise ConfigError("conditional (one-hot class labels) and prompts (text) exclude each other; set "
                              "conditional: false")
        _positive(self, "std", "spacing", "radius")
        if self.channels not in (1, 3):
            raise ConfigError(f"channels must be 1 or 3, got {self.channels!r}")


@dataclass(frozen=True)
class TrainingConfig:
    """Teacher pre-training with the EDM DSM loss."""

    steps: int = 1500                 # optimiser steps (count)
    batch_size: int = 64              # samples per step (count)
    lr: float = 1.0e-3                # peak Adam learning rate (per step)
    lr_schedule: Literal["constant", "cosine"] = "cosine"  # decay over `steps`
    warmup_steps: int = 100           # linear learning-rate warm-up (steps)
    betas: tuple[float, float] = (0.9, 0.999)  # Adam betas
    ema_decay: float = 0.999          # EMA decay per step (fraction); the EMA weights are the teacher
    ema_rampup: float = 0.05          # EMA half-life at most this share of the steps so far (0 = off)
    P_mean: float = -1.2              # mean of ln(sigma) for the DSM loss
    P_std: float = 1.2                # std of ln(sigma) for the DSM loss
    grad_clip: float | None = 1.0     # max gradient norm (None = no clipping)
    log_every: int = 250              # status line / MLflow flush interval (steps; 0 = never)
    checkpoint_every: int = 500       # training-state interval (steps; 0 = only at the end)

    def __post_init__(self):
        _at_least(self, 0, "steps", "warmup_steps", "log_every", "checkpoint_every")
        _at_least(self, 1, "batch_size")
        _positive(self, "lr", "P_std")
        _fraction(self, "ema_decay")
        _at_least(self, 0, "ema_rampup")
        if self.grad_clip is not None:
            _positive(self, "grad_clip")


@dataclass(frozen=True)
class SamplerConfig:
    """EDM's Heun sampler for the teacher."""

    nfe: int = 35                     # network evaluations per sample (odd: 2 * steps - 1)
    sigma_min: float = 0.002          # smallest noise level (data units)
    sigma_max: float = 80.0           # largest noise level (data units)
    rho: float = 7.0                  # schedule curvature (dimensionless)

    def __post_init__(self):
        if self.nfe < 1 or self.nfe % 2 == 0:
            raise ConfigError(f"nfe must be a positive odd integer (2 * steps - 1), got {self.nfe!r}")
        _positive(self, "sigma_min", "rho")
        if not self.sigma_max > self.sigma_min:
            raise ConfigError(f"sigma_max must be > sigma_min, got {self.sigma_max} <= {self.sigma_min}")


@dataclass(frozen=True)
class ReportConfig:
    """The teacher pipeline's report: Heun samples of the teacher (a figure; NLL and modes for 2-D data)."""

    num_samples: int = 256            # samples drawn (count)
    seed: int = 0                     # latent seed of the samples

    def __post_init__(self):
        _at_least(self, 1, "num_samples")


@dataclass(frozen=True)
class TeacherConfig:
    """The teacher: pre-trained here, or loaded from a file."""

    mode: Literal["pretrain", "load", "diffusers"] = "pretrain"  # pretrain | load | diffusers
    checkpoint_path: str | None = None  # load: our checkpoint (.pt) or an EDM snapshot (.pkl); diffusers: a folder
    seed: int = 0                     # RNG seed for initialisation, batches and noise
    device: Device = "auto"           # auto | cpu | cuda
    bf16: bool = False                # bf16 autocast on CUDA
    network: dict = field(default_factory=dict)  # architecture (backbone and its arguments; checked when built)
    training: TrainingConfig = field(default_factory=TrainingConfig)  # pre-training (mode = pretrain)
    report: ReportConfig = field(default_factory=ReportConfig)        # the teacher's samples in its report

    def __post_init__(self):
        _device(self)
        if self.mode == "load" and not self.checkpoint_path:
            raise ConfigError("checkpoint_path must be set when mode is 'load' (a .pt of ours or an EDM .pkl)")
        if self.mode == "diffusers" and not self.checkpoint_path:
            raise ConfigError("checkpoint_path must be set when mode is 'diffusers' (a diffusers model folder with "
                              "unet/ and scheduler/)")
        if self.mode == "pretrain" and "backbone" not in self.network:
            raise ConfigError("network.backbone must be set when mode is 'pretrain' (unet | mlp | songunet | "
                              "dhariwalunet)")


@dataclass(frozen=True)
class DomainConfig:
    """The offline classifier behind extractor = domain."""

    steps: int = 1500                 # training steps (count)
    batch_size: int = 128             # images per step (count)
    lr: float = 2.0e-3                # Adam learning rate (per step)
    seed: int = 0                     # RNG seed (also fixes the 80/20 train/test split)

    def __post_init__(self):
        _at_least(self, 1, "steps", "batch_size")
        _positive(self, "lr")


@dataclass(frozen=True)
class EvaluationConfig:
    """Quality of teacher and student, reference statistics and proxy metrics during training."""

    extractor: Literal["domain", "inception"] = "domain"  # image features (2-D data need none)
    inception_path: str | None = None  # inception-2015-12-05.pt (or its folder) when extractor = inception
    inception_mode: Literal["clean", "legacy_tensorflow"] = "clean"  # clean-fid's mode
    domain: DomainConfig = field(default_factory=DomainConfig)  # the offline classifier
    reference_samples: int = 0        # real samples for the reference statistics (count; 0 = the whole set)
    reference_path: str | None = None  # image folder of held-out images for the reference statistics (null =
                                       # the training data), read at data.resolution and data.channels
    n_samples: int = 2000             # samples per model for the final metrics (count)
    batch_size: int = 2000            # samples per sampling batch, teacher and student alike (count)
    device: Device = "auto"           # where the final samples are drawn
    grid_samples: int = 64            # images per sample grid (count)
    seed: int = 0                     # latent seed shared by every evaluation
    clip_path: str | None = None      # text-to-image: a local CLIP model folder for the CLIP score (null = none)

    def __post_init__(self):
        _at_least(self, 0, "reference_samples")
        _at_least(self, 1, "n_samples", "batch_size", "grid_samples")
        _device(self)


@dataclass(frozen=True)
class CheckpointingConfig:
    """Training states of the three loops (teacher pre-training, stage 1, stage 2) and resuming from them."""

    resume: Literal["auto", "never"] = "auto"  # auto: continue a stage from its newest state | never: start afresh
    keep: int = 2                     # newest states kept per stage (count)
    dir: str = "data/base/09_training_state"  # folder of the states, one sub-folder per stage (per environment)

    def __post_init__(self):
        _at_least(self, 1, "keep")
        if not self.dir:
            raise ConfigError("dir must name a folder")


@dataclass(frozen=True)
class DistributedConfig:
    """Data-parallel training of the three loops: ``nproc`` ranks on this machine share each step's global batch
    (``batch_size`` is per rank: global batch = batch_size x nproc)."""

    nproc: int = 1                    # ranks (processes); 1 = one process, no torch.distributed (count)
    backend: Literal["auto", "gloo", "nccl"] = "auto"  # auto: nccl on CUDA (one GPU a rank), gloo on the CPU
    nnodes: int = 1                   # machines taking part, this one included; > 1: the others run the worker
    endpoint: str | None = None       # HOST:PORT this machine listens on for the workers (nnodes > 1)
    join_timeout_s: float = 600.0     # how long a stage waits for every machine to join (seconds)
    heartbeat_timeout_s: float = 60.0  # a rank silent this long is lost and the stage stops (seconds)

    def __post_init__(self):
        _at_least(self, 1, "nproc", "nnodes")
        _positive(self, "join_timeout_s", "heartbeat_timeout_s")
        if self.nnodes > 1:
            host, _, port = (self.endpoint or "").rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ConfigError(f"endpoint must be HOST:PORT (an address of this machine the other machines "
                                  f"reach, and a free port) when nnodes > 1, got {self.endpoint!r}; "
                                  "e.g. --params distributed.endpoint=node001:29400")

    @property
    def one_process(self) -> bool:
        """The stage runs in the calling process (callbacks reach it as they happen)."""
        return self.nproc == 1 and self.nnodes == 1

    @property
    def machines(self) -> Machines | None:
        """The other machines' part (None on one machine)."""
        if self.nnodes == 1:
            return None
        return Machines(self.nnodes, str(self.endpoint), self.join_timeout_s, self.heartbeat_timeout_s)


@dataclass(frozen=True)
class SharedConfig:
    """The values more than one stage reads: which method runs, the generator's input noise level and the
    teacher's sampler."""

    enabled: bool = DistillConfig.enabled    # backtracking on (DisBack: stage 1 records a path, stage 2 walks it)
    s_init: float = DistillConfig.s_init     # noise level at which G denoises its latent (stage 1, 2, evaluation)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)  # the teacher's Heun sampler (report, evaluation)
    guidance_scale: float = DistillConfig.guidance_scale  # the teacher's classifier-free guidance (stage 2, samples)
    trained_nets: TrainedNetsConfig = field(default_factory=TrainedNetsConfig)  # stage 1's and 2's trained copies

    def __post_init__(self):
        _positive(self, "s_init")
        _at_least(self, 0, "guidance_scale")

    @property
    def method(self) -> str:
        return "disback" if self.enabled else "baseline"


def soft_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``override`` merged into ``base`` key by key, recursively (Kedro's ``soft`` merge of an environment
    over conf/base); lists and other values are replaced whole."""
    out = dict(base)
    for key, value in override.items():
        out[key] = soft_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) \
            else value
    return out
