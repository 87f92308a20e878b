"""A teacher from a local diffusers folder, as the project's denoiser D(x; sigma, condition).

diffusers' UNets (``UNet2DModel``, ``UNet2DConditionModel``) are trained on a discrete variance-preserving schedule:
x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) eps at integer timesteps t, a_t the scheduler's cumulative alphas. The same
noisy image in the variance-exploding form the rest of the project uses is x = x_t / sqrt(a_t) = x_0 + sigma eps
with sigma_t = sqrt((1 - a_t) / a_t) (Karras et al. 2022, appendix C.3.4). So the wrapper

- scales the input by c_in = 1 / sqrt(1 + sigma^2) (that is sqrt(a_t)) before the UNet,
- feeds the timestep of ``sigma`` on the model's own table (log-sigma interpolated between neighbouring integer
  timesteps, so a sigma of the table gives its exact timestep; fractional ones lie between), and
- turns the prediction into the denoised image: epsilon: D = x - sigma eps; v: D = x / (1 + sigma^2) -
  sigma / sqrt(1 + sigma^2) v; sample: D is the output.

SDXL-class UNets (``addition_embed_type: text_time``) take, beside the token embeddings, a pooled text embedding
and six "time ids" (original size, crop corner, target size). The project's condition slot holds one tensor a
sample, so the three travel packed (:func:`pack_text_time`): the tokens' rows, then rows that hold the pooled
embedding and the time ids end to end, zero-padded; the wrapper unpacks them before the UNet.

Nothing is downloaded: the folder is read with ``local_files_only``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoint import CheckpointError

UNET_CLASSES = ("UNet2DModel", "UNet2DConditionModel")
PREDICTIONS = ("epsilon", "v_prediction", "sample")


def sigmas_of(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """sigma_t = sqrt((1 - a_t) / a_t) for every integer timestep t (increasing with t)."""
    return ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5


def pack_text_time(tokens: torch.Tensor, pooled: torch.Tensor, time_ids: torch.Tensor) -> torch.Tensor:
    """An SDXL condition as one tensor (n, tokens + k, width): the token embeddings (n, tokens, width), then k rows
    holding the pooled embedding (n, P) and the time ids (n, 6) end to end, zero-padded to whole rows."""
    n, _, width = tokens.shape
    extra = torch.cat([pooled, time_ids.to(pooled.dtype).expand(n, -1)], dim=1)
    rows = -(-extra.shape[1] // width)
    extra = torch.nn.functional.pad(extra, (0, rows * width - extra.shape[1]))
    return torch.cat([tokens, extra.reshape(n, rows, width).to(tokens.dtype)], dim=1)


def unpack_text_time(condition: torch.Tensor, text_time: tuple[int, int]) -> tuple[torch.Tensor, dict]:
    """The UNet's ``encoder_hidden_states`` and ``added_cond_kwargs`` from a packed condition."""
    tokens, pooled = text_time
    extra = condition[:, tokens:].flatten(1)
    return condition[:, :tokens], {"text_embeds": extra[:, :pooled], "time_ids": extra[:, pooled:pooled + 6]}


class VPDenoiser(nn.Module):
    """D(x; sigma, condition) of a diffusers UNet on its discrete VP schedule (module docstring)."""

    def __init__(self, unet: nn.Module, alphas_cumprod: torch.Tensor, prediction_type: str = "epsilon",
                 sigma_data: float = 0.5, null_condition: torch.Tensor | None = None,
                 text_time: tuple[int, int] | None = None):
        super().__init__()
        if prediction_type not in PREDICTIONS:
            raise ValueError(f"prediction_type must be one of {PREDICTIONS}, got {prediction_type!r}")
        self.unet, self.prediction_type = unet, prediction_type
        self.sigma_data = float(sigma_data)  # the data's spread the training losses weigh by (images in [-1, 1])
        alphas = torch.as_tensor(alphas_cumprod, dtype=torch.float32)  # float32, as diffusers' schedulers hold it
        self.alphas_cumprod = alphas.tolist()  # the exact values, for the config that rebuilds this network
        self.register_buffer("log_sigmas", sigmas_of(alphas).log(), persistent=False)
        # a text-conditioned UNet: the empty prompt's embedding (1, tokens, width), used where no condition is given
        # (the unconditional branch of guidance, real images without captions, samples drawn without a prompt)
        self.register_buffer("null_condition", null_condition)
        # SDXL-class: (token rows, pooled width) of the packed condition (pack_text_time); None: plain tokens
        self.text_time = None if text_time is None else (int(text_time[0]), int(text_time[1]))

    @property
    def sigma_min(self) -> float:
        return float(self.log_sigmas[0].exp())

    @property
    def sigma_max(self) -> float:
        return float(self.log_sigmas[-1].exp())

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """The (fractional) timestep of each sigma: log-sigma interpolated between the table's neighbours, clamped
        to the table's range."""
        log_sigma = sigma.float().clamp_min(1e-10).log()
        table = self.log_sigmas.to(log_sigma.device)
        low = (torch.searchsorted(table, log_sigma, right=True) - 1).clamp(0, len(table) - 2)
        w = ((table[low] - log_sigma) / (table[low] - table[low + 1])).clamp(0, 1)
        return (1 - w) * low + w * (low + 1)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, condition: Any = None) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1)
        sigma = sigma.expand(x.shape[0]) if sigma.numel() == 1 else sigma
        s = sigma.reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)
        c_in = 1 / (1 + s ** 2).sqrt()
        if condition is None and self.null_condition is not None:
            condition = self.null_condition.expand(x.shape[0], -1, -1)
        kwargs = {} if condition is None else {"encoder_hidden_states": condition.to(x.dtype)}
        if condition is not None and self.text_time is not None:
            tokens, added = unpack_text_time(condition.to(x.dtype), self.text_time)
            kwargs = {"encoder_hidden_states": tokens, "added_cond_kwargs": added}
        out = self.unet(x * c_in, self.sigma_to_t(sigma), **kwargs, return_dict=False)[0]
        if self.prediction_type == "epsilon":
            return x - s * out
        if self.prediction_type == "v_prediction":
            return x * c_in ** 2 - s * c_in * out
        return out


class Guided(nn.Module):
    """Classifier-free guidance of a denoiser: D_w(x; sigma, c) = D(x; sigma, null) + w (D(x; sigma, c) -
    D(x; sigma, null)), both branches in one batch. Without a condition, or at w = 1, it is the denoiser itself.

    Stage 2 guides its target (the teacher, or the path node it walks to) and nothing else: the fake score models
    the generator's own, unguided distribution, and the generator is what is trained."""

    def __init__(self, net: nn.Module, scale: float):
        super().__init__()
        self.net, self.scale = net, float(scale)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, condition: Any = None) -> torch.Tensor:
        null = getattr(self.net, "null_condition", None)
        if condition is None or self.scale == 1.0 or null is None:
            return self.net(x, sigma, condition)
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1).expand(x.shape[0])
        both = self.net(torch.cat([x, x]), torch.cat([sigma, sigma]),
                        torch.cat([null.expand(x.shape[0], -1, -1).to(condition.dtype), condition]))
        uncond, cond = both.chunk(2)
        return uncond + self.scale * (cond - uncond)


def guided(net: nn.Module, scale: float) -> nn.Module:
    """``net`` under guidance ``scale`` (the network itself at 1)."""
    return net if scale == 1.0 else Guided(net, scale)


def network_config(denoiser: VPDenoiser) -> dict[str, Any]:
    """What rebuilds ``denoiser`` without its folder (:func:`build_vp_denoiser`): the UNet's class and config, the
    schedule, the parametrisation; and the data shape it takes, as the project's other networks state it."""
    unet = denoiser.unet
    config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(unet.config).items()
              if not k.startswith("_")}
    size = config.get("sample_size")
    size = size[0] if isinstance(size, (list, tuple)) else size
    return {"backbone": "diffusers", "unet_class": type(unet).__name__, "unet": config,
            "alphas_cumprod": list(denoiser.alphas_cumprod),
            "prediction_type": denoiser.prediction_type, "sigma_data": denoiser.sigma_data,
            "in_channels": int(config["in_channels"]), "img_resolution": int(size), "label_dim": 0,
            "condition_shape": None if denoiser.null_condition is None else list(denoiser.null_condition.shape),
            "text_time": None if denoiser.text_time is None else list(denoiser.text_time)}


def build_vp_denoiser(config: dict[str, Any]) -> VPDenoiser:
    """The network :func:`network_config` describes, with fresh weights (a checkpoint's are loaded into it)."""
    import diffusers

    if config.get("unet_class") not in UNET_CLASSES:
        raise ValueError(f"unet_class must be one of {UNET_CLASSES}, got {config.get('unet_class')!r}")
    unet = getattr(diffusers, config["unet_class"]).from_config(config["unet"])
    shape = config.get("condition_shape")
    return VPDenoiser(unet, torch.tensor(config["alphas_cumprod"]), config["prediction_type"],
                      config.get("sigma_data", 0.5), None if shape is None else torch.zeros(shape),
                      config.get("text_time"))


def load_vae(folder: str | Path) -> nn.Module:
    """The ``AutoencoderKL`` of a diffusers folder (``vae/``), read offline, for latent teachers."""
    import diffusers

    folder = Path(folder)
    if not (folder / "vae/config.json").is_file():
        raise CheckpointError(f"{folder}: no vae/config.json; data.vae must name a diffusers folder with its VAE "
                              "(a latent teacher's own folder, usually teacher.checkpoint_path)")
    return diffusers.AutoencoderKL.from_pretrained(folder, subfolder="vae", local_files_only=True).eval()


ENCODERS = (("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2"))


def text_time_of(folder: str | Path) -> bool:
    """Whether the folder's UNet takes SDXL's pooled embedding and time ids (``addition_embed_type: text_time``)."""
    unet = Path(folder) / "unet/config.json"
    return unet.is_file() and json.loads(unet.read_text()).get("addition_embed_type") == "text_time"


def time_ids(folder: str | Path) -> torch.Tensor:
    """SDXL's six size conditions for the folder's own resolution, uncropped, as its pipeline passes them by
    default: (height, width, 0, 0, height, width), the pixel size being the UNet's latent size times the VAE's
    downsampling (8 when the folder has no VAE)."""
    folder = Path(folder)
    size = json.loads((folder / "unet/config.json").read_text())["sample_size"]
    h, w = (size, size) if isinstance(size, int) else size
    vae = folder / "vae/config.json"
    scale = 2 ** (len(json.loads(vae.read_text())["block_out_channels"]) - 1) if vae.is_file() else 8
    return torch.tensor([[h * scale, w * scale, 0, 0, h * scale, w * scale]], dtype=torch.float32)


def _encode(folder: Path, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Token embeddings (n, tokens, width) and, for SDXL-class folders, the pooled embedding (n, P)."""
    import transformers

    pairs = [(t, e) for t, e in ENCODERS if (folder / e / "config.json").is_file()]
    if not pairs or any(not (folder / t).exists() for t, _ in pairs):
        missing = [p for p in ("tokenizer", "text_encoder/config.json") if not (folder / p).exists()]
        raise CheckpointError(f"{folder}: a text-conditioned UNet needs the folder's tokenizer and text encoder, and "
                              f"{', '.join(missing) or 'tokenizer_2'} is missing; copy the whole diffusers folder")
    sdxl = text_time_of(folder)
    hidden, pooled = [], None
    for tok_dir, enc_dir in pairs:
        tokenizer = transformers.CLIPTokenizer.from_pretrained(folder, subfolder=tok_dir, local_files_only=True)
        cls = transformers.CLIPTextModelWithProjection if sdxl and enc_dir == "text_encoder_2" \
            else transformers.CLIPTextModel
        encoder = cls.from_pretrained(folder, subfolder=enc_dir, local_files_only=True).eval()
        ids = tokenizer(list(prompts), padding="max_length", max_length=tokenizer.model_max_length,
                        truncation=True, return_tensors="pt").input_ids
        with torch.no_grad():
            out = encoder(ids, output_hidden_states=sdxl)
        if not sdxl:
            return out.last_hidden_state.float(), None
        hidden.append(out.hidden_states[-2].float())
        pooled = out.text_embeds.float() if getattr(out, "text_embeds", None) is not None else pooled
    if pooled is None:
        raise CheckpointError(f"{folder}: an SDXL-class UNet needs text_encoder_2 (a CLIPTextModelWithProjection) "
                              "for the pooled embedding; copy the whole diffusers folder")
    return torch.cat(hidden, dim=-1), pooled


def encode_prompts(folder: str | Path, prompts: list[str]) -> torch.Tensor:
    """The conditions of ``prompts`` (n, rows, width), from the folder's tokenizer(s) and CLIP text encoder(s),
    read offline, each prompt padded or cut to the tokenizer's length.

    One encoder (SD-1/2): its last hidden states. Two (SDXL): each encoder's penultimate hidden states side by
    side, with the second's pooled projection and the folder's :func:`time_ids` packed behind them
    (:func:`pack_text_time`), as SDXL's pipeline computes them."""
    folder = Path(folder)
    tokens, pooled = _encode(folder, prompts)
    return tokens if pooled is None else pack_text_time(tokens, pooled, time_ids(folder))


def null_condition(folder: str | Path) -> tuple[torch.Tensor, tuple[int, int] | None]:
    """The unconditional branch's condition, and the packing's (token rows, pooled width) for SDXL-class folders.

    It is the empty prompt's; SDXL's pipeline zeroes the token and pooled embeddings of the empty prompt instead
    (``force_zeros_for_empty_prompt`` in model_index.json, true unless the folder says otherwise), and so does
    this."""
    folder = Path(folder)
    tokens, pooled = _encode(folder, [""])
    if pooled is None:
        return tokens, None
    index = folder / "model_index.json"
    if (json.loads(index.read_text()) if index.is_file() else {}).get("force_zeros_for_empty_prompt", True):
        tokens, pooled = torch.zeros_like(tokens), torch.zeros_like(pooled)
    return pack_text_time(tokens, pooled, time_ids(folder)), (tokens.shape[1], pooled.shape[1])


def _missing(folder: Path) -> list[str]:
    return [p for p in ("unet/config.json", "scheduler/scheduler_config.json") if not (folder / p).is_file()]


def load_diffusers_teacher(folder: str | Path, dtype: torch.dtype = torch.float32) -> VPDenoiser:
    """The UNet and scheduler of a diffusers model folder (``unet/``, ``scheduler/``), offline, as a
    :class:`VPDenoiser`. A missing folder or component fails naming what is missing."""
    import diffusers

    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: no such folder; teacher.checkpoint_path must name a diffusers model folder "
                              "(model_index.json, unet/, scheduler/, ...) saved with save_pretrained or downloaded "
                              "beforehand (nothing is downloaded at run time)")
    missing = _missing(folder)
    if missing:
        raise CheckpointError(f"{folder}: not a diffusers model folder, or an incomplete one: {', '.join(missing)} "
                              "missing; copy the whole folder (unet/ and scheduler/ at least)")
    unet_class = json.loads((folder / "unet/config.json").read_text()).get("_class_name")
    if unet_class not in UNET_CLASSES:
        raise CheckpointError(f"{folder}/unet: a {unet_class}, but the teacher must be one of {UNET_CLASSES}")
    unet = getattr(diffusers, unet_class).from_pretrained(folder, subfolder="unet", local_files_only=True,
                                                          torch_dtype=dtype)
    scheduler_config = json.loads((folder / "scheduler/scheduler_config.json").read_text())
    name = scheduler_config.get("_class_name", "DDPMScheduler")
    # the folder's own scheduler class: its defaults fill what the file leaves out, as in diffusers' pipelines
    scheduler = getattr(diffusers, name, diffusers.DDPMScheduler).from_config(scheduler_config)
    if not hasattr(scheduler, "alphas_cumprod"):
        raise CheckpointError(f"{folder}/scheduler: a {name}, which has no discrete variance-preserving schedule "
                              "(alphas_cumprod); the teacher must come from a DDPM-family model (epsilon or v "
                              "prediction), not a flow-matching one")
    null, text_time = null_condition(folder) if unet_class == "UNet2DConditionModel" else (None, None)
    return VPDenoiser(unet.eval(), torch.as_tensor(scheduler.alphas_cumprod), scheduler.config.prediction_type,
                      null_condition=null, text_time=text_time)
