"""Backbones F for the EDM preconditioner, and the factory that rebuilds a
network from the plain-dict architecture config stored in checkpoints.

Every backbone is called as ``F(x, c_noise, class_labels)`` where ``c_noise``
has shape (B,) and ``class_labels`` is (B, label_dim) one-hot (or None).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from .edm_networks import DhariwalUNet, SongUNet, group_norm
from .precond import EDMPrecond


class NoiseEmbedding(nn.Module):
    """Sinusoidal features of the scalar noise label c_noise = ln(sigma)/4.

    Args:
        num_channels: output width (even).
        max_freq: highest angular frequency (radians per unit of c_noise);
            frequencies are spaced geometrically from 1 to ``max_freq``.
    """

    def __init__(self, num_channels: int, max_freq: float = 64.0):
        super().__init__()
        if num_channels % 2:
            raise ValueError(f"noise embedding width must be even, got {num_channels}")
        half = num_channels // 2
        freqs = torch.exp(torch.linspace(0.0, math.log(max_freq), half))
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, c_noise: torch.Tensor) -> torch.Tensor:
        angles = c_noise.reshape(-1, 1).to(torch.float32) * self.freqs
        return torch.cat([angles.cos(), angles.sin()], dim=1)


class _EmbeddingMLP(nn.Module):
    """Noise (and optional class) embedding shared by both backbones."""

    def __init__(self, noise_channels: int, emb_dim: int, label_dim: int):
        super().__init__()
        self.noise = NoiseEmbedding(noise_channels)
        self.label = nn.Linear(label_dim, noise_channels, bias=False) if label_dim else None
        self.mlp = nn.Sequential(
            nn.Linear(noise_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )

    def forward(self, c_noise, class_labels):
        emb = self.noise(c_noise)
        if self.label is not None and class_labels is not None:
            emb = emb + self.label(class_labels)
        return F.silu(self.mlp(emb))


class _ResidualMLPBlock(nn.Module):
    def __init__(self, width: int, emb_dim: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc0 = nn.Linear(width, width)
        self.emb = nn.Linear(emb_dim, width)
        self.fc1 = nn.Linear(width, width)
        self.dropout = nn.Dropout(dropout)

    def forward(self, h, emb):
        y = self.fc0(F.silu(self.norm(h))) + self.emb(emb)
        return h + self.fc1(self.dropout(F.silu(y)))


class MLPBackbone(nn.Module):
    """Residual MLP for low-dimensional data (e.g. 2-D mixtures).

    Args:
        dim: data dimension.
        width: hidden width (units).
        num_blocks: number of residual blocks.
        emb_dim: width of the noise/class embedding.
        label_dim: number of classes; 0 = unconditional.
        dropout: dropout probability inside blocks.
    """

    def __init__(self, dim: int = 2, width: int = 256, num_blocks: int = 3,
                 emb_dim: int = 128, label_dim: int = 0, dropout: float = 0.0):
        super().__init__()
        self.embed = _EmbeddingMLP(emb_dim, emb_dim, label_dim)
        self.inp = nn.Linear(dim, width)
        self.blocks = nn.ModuleList(
            [_ResidualMLPBlock(width, emb_dim, dropout) for _ in range(num_blocks)]
        )
        self.out_norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, dim)

    def forward(self, x, c_noise, class_labels=None):
        emb = self.embed(c_noise, class_labels)
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, emb)
        return self.out(F.silu(self.out_norm(h)))


def _groups(channels: int) -> int:
    """Largest group count <= min(32, channels/4) that divides ``channels``."""
    for g in range(max(1, min(32, channels // 4)), 0, -1):
        if channels % g == 0:
            return g
    return 1


class _GroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` (same parameters and keys) computed in the input's dtype, also under autocast
    (see :func:`edm_networks.group_norm`)."""

    def forward(self, x):
        return group_norm(x, self.num_groups, self.weight, self.bias, self.eps)


class _Attention(nn.Module):
    def __init__(self, channels: int, num_heads: int = 1):
        super().__init__()
        self.norm = _GroupNorm(_groups(channels), channels)
        self.qkv = nn.Conv2d(channels, channels * 3, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        self.num_heads = num_heads
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x):
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.num_heads, c // self.num_heads, h * w).unbind(1)
        # (batch, heads, tokens, channels), channels contiguous: the layout torch's fused kernels take
        q, k, v = (t.transpose(-1, -2).contiguous() for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v)
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class _ResBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float, attention: bool):
        super().__init__()
        self.norm0 = _GroupNorm(_groups(in_ch), in_ch)
        self.conv0 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.affine = nn.Linear(emb_dim, out_ch)
        self.norm1 = _GroupNorm(_groups(out_ch), out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv1 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()
        self.attn = _Attention(out_ch) if attention else nn.Identity()

    def forward(self, x, emb):
        h = self.conv0(F.silu(self.norm0(x)))
        h = h + self.affine(emb)[:, :, None, None]
        h = self.conv1(self.dropout(F.silu(self.norm1(h))))
        return self.attn(self.skip(x) + h)


class UNetBackbone(nn.Module):
    """Small UNet for images (ADM-like layout).

    Args:
        img_resolution: input height = width (pixels).
        in_channels: image channels.
        model_channels: base channel count.
        channel_mult: per-level channel multipliers; len = number of levels.
        num_blocks: residual blocks per level in the encoder (decoder has +1).
        attn_resolutions: resolutions (pixels) at which blocks use self-attention.
        dropout: dropout probability in residual blocks.
        label_dim: number of classes; 0 = unconditional.
    """

    def __init__(self, img_resolution: int = 8, in_channels: int = 1, model_channels: int = 32,
                 channel_mult=(1, 2), num_blocks: int = 1, attn_resolutions=(4,),
                 dropout: float = 0.0, label_dim: int = 0):
        super().__init__()
        if img_resolution % (2 ** (len(channel_mult) - 1)):
            raise ValueError(
                f"img_resolution {img_resolution} is not divisible by 2^(levels-1) "
                f"for channel_mult {list(channel_mult)}; use fewer levels or another resolution"
            )
        emb_dim = model_channels * 4
        self.embed = _EmbeddingMLP(model_channels, emb_dim, label_dim)
        self.conv_in = nn.Conv2d(in_channels, model_channels, 3, padding=1)
        attn_resolutions = set(attn_resolutions or ())
        self.enc = nn.ModuleList()
        skips = [model_channels]
        ch, res = model_channels, img_resolution
        for level, mult in enumerate(channel_mult):
            for _ in range(num_blocks):
                self.enc.append(_ResBlock(ch, model_channels * mult, emb_dim, dropout, res in attn_resolutions))
                ch = model_channels * mult
                skips.append(ch)
            if level < len(channel_mult) - 1:
                self.enc.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
                skips.append(ch)
                res //= 2
        self.mid = nn.ModuleList([
            _ResBlock(ch, ch, emb_dim, dropout, True),
            _ResBlock(ch, ch, emb_dim, dropout, False),
        ])
        self.dec = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for _ in range(num_blocks + 1):
                self.dec.append(_ResBlock(ch + skips.pop(), model_channels * mult, emb_dim,
                                          dropout, res in attn_resolutions))
                ch = model_channels * mult
            if level > 0:
                self.dec.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                              nn.Conv2d(ch, ch, 3, padding=1)))
                res *= 2
        self.out_norm = _GroupNorm(_groups(ch), ch)
        self.conv_out = nn.Conv2d(ch, in_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x, c_noise, class_labels=None):
        emb = self.embed(c_noise, class_labels)
        h = self.conv_in(x)
        skips = [h]
        for layer in self.enc:
            h = layer(h, emb) if isinstance(layer, _ResBlock) else layer(h)
            skips.append(h)
        for layer in self.mid:
            h = layer(h, emb)
        for layer in self.dec:
            if isinstance(layer, _ResBlock):
                h = layer(torch.cat([h, skips.pop()], dim=1), emb)
            else:
                h = layer(h)
        return self.conv_out(F.silu(self.out_norm(h)))


BACKBONES: dict[str, type[nn.Module]] = {"mlp": MLPBackbone, "unet": UNetBackbone,
                                         "songunet": SongUNet, "dhariwalunet": DhariwalUNet}
#: EDM-compatible backbones sit under ``model`` so EDM state_dicts load with their own key names.
EDM_BACKBONES = {"songunet", "dhariwalunet"}


def build_network(config: dict[str, Any]) -> EDMPrecond:
    """Build an EDM-preconditioned network from its architecture config.

    ``config`` holds ``backbone`` (a key of :data:`BACKBONES`), optional
    ``sigma_data`` and ``label_dim``, and the backbone's keyword arguments.
    """
    config = dict(config)
    name = config.pop("backbone", None)
    if name == "diffusers":  # a diffusers UNet on its VP schedule (a teacher from a diffusers folder, its copies)
        from .diffusers_teacher import build_vp_denoiser

        return build_vp_denoiser(config)
    if name not in BACKBONES:
        raise ValueError(
            f"unknown backbone {name!r} in network config; choose one of {sorted(BACKBONES)}"
        )
    sigma_data = float(config.pop("sigma_data", 0.5))
    label_dim = int(config.get("label_dim", 0))
    try:
        backbone = BACKBONES[name](**config)
    except TypeError as exc:
        raise ValueError(f"bad arguments for backbone {name!r}: {exc}") from exc
    return EDMPrecond(backbone, sigma_data=sigma_data, label_dim=label_dim,
                      backbone_name="model" if name in EDM_BACKBONES else "backbone")
