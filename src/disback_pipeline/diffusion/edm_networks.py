"""EDM-compatible backbones: SongUNet (DDPM++ / NCSN++) and DhariwalUNet (ADM).

Written from the architecture descriptions in the EDM paper (Karras et al.
2022, appendix F) and checked against the parity fixtures in
shared/fixtures/edm_parity: parameter and buffer names follow EDM's so its
checkpoints load strictly (``model.enc.16x16_conv.weight``,
``model.map_noise.freqs``, ...). Weights are stored as-is; initialisation
details only matter for training from scratch and follow common practice.
"""

from __future__ import annotations

import contextlib
import math

import torch
from torch import nn
from torch.nn import functional as F


class Linear(nn.Module):
    """y = x W^T + b with EDM's parameter names (``weight`` (out, in), ``bias``)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / math.sqrt(in_features))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def forward(self, x):
        return F.linear(x, self.weight.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))


def _resample_kernel(taps) -> torch.Tensor:
    """Separable 2-D FIR kernel (1, 1, k, k) from 1-D taps, normalised to unit sum."""
    f = torch.as_tensor(taps, dtype=torch.float32)
    return (torch.outer(f, f) / f.sum().square())[None, None]


class Conv2d(nn.Module):
    """Convolution with optional FIR up/down-sampling by 2 (``resample_filter`` buffer).

    ``kernel = 0`` gives a pure resampling layer without weights. With
    ``fused_resample`` a down-sampling layer convolves first and then filters
    and decimates (the NCSN++ residual encoder's auxiliary path).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: int, bias: bool = True, up: bool = False,
                 down: bool = False, resample_filter=(1, 1), fused_resample: bool = False):
        super().__init__()
        if up and down:
            raise ValueError("a Conv2d cannot both up- and down-sample")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.up, self.down, self.fused_resample = up, down, fused_resample
        fan_in = max(1, in_channels * kernel * kernel)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel, kernel) / math.sqrt(fan_in)) \
            if kernel else None
        self.bias = nn.Parameter(torch.zeros(out_channels)) if kernel and bias else None
        self.register_buffer("resample_filter", _resample_kernel(resample_filter) if up or down else None)

    def forward(self, x):
        w = None if self.weight is None else self.weight.to(x.dtype)
        f = None if self.resample_filter is None else self.resample_filter.to(x.dtype)
        w_pad = w.shape[-1] // 2 if w is not None else 0
        f_pad = (f.shape[-1] - 1) // 2 if f is not None else 0
        if self.fused_resample and self.down and w is not None:
            x = F.conv2d(x, w, padding=w_pad + f_pad)
            x = F.conv2d(x, f.tile([self.out_channels, 1, 1, 1]), groups=self.out_channels, stride=2)
        else:
            if self.up:
                x = F.conv_transpose2d(x, (f * 4).tile([self.in_channels, 1, 1, 1]), groups=self.in_channels,
                                       stride=2, padding=f_pad)
            if self.down:
                x = F.conv2d(x, f.tile([self.in_channels, 1, 1, 1]), groups=self.in_channels, stride=2,
                             padding=f_pad)
            if w is not None:  # the bias goes into the convolution (one kernel fewer than an added bias)
                return F.conv2d(x, w, None if self.bias is None else self.bias.to(x.dtype), padding=w_pad)
        if self.bias is not None:
            x = x + self.bias.to(x.dtype).reshape(1, -1, 1, 1)
        return x


def group_norm(x, num_groups: int, weight, bias, eps: float):
    """Group normalisation in the input's dtype, also under autocast.

    Autocast runs ``group_norm`` in float32, so every normalisation of a bf16 activation would be a cast
    up, a float32 norm (and the SiLU after it), and a cast back down before the next convolution: memory
    traffic, no arithmetic. The kernels accumulate the statistics in float32 for a bf16 input anyway, so
    the normalisation runs on the bf16 tensor itself. Outside autocast nothing changes.
    """
    autocast_off = (torch.autocast(x.device.type, enabled=False) if torch.is_autocast_enabled(x.device.type)
                    else contextlib.nullcontext())
    with autocast_off:
        return F.group_norm(x, num_groups, weight.to(x.dtype), bias.to(x.dtype), eps)


class GroupNorm(nn.Module):
    """Group normalisation with min(32, C / 4) groups (EDM's rule), in the input's dtype (:func:`group_norm`)."""

    def __init__(self, num_channels: int, num_groups: int = 32, min_channels_per_group: int = 4, eps: float = 1e-5):
        super().__init__()
        self.num_groups = min(num_groups, num_channels // min_channels_per_group)
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x):
        return group_norm(x, self.num_groups, self.weight, self.bias, self.eps)


class UNetBlock(nn.Module):
    """Residual block with noise-embedding modulation and optional self-attention.

    Args:
        adaptive_scale: the embedding gives (scale, shift) (ADM) instead of a bias (DDPM++/NCSN++).
        skip_scale: factor applied after each residual sum (1/sqrt(2) in SongUNet, 1 in ADM).
        resample_proj: the skip path of a resampling block gets a 1x1 projection even when
            channel counts match (SongUNet) or only resamples (ADM).
        num_heads / channels_per_head: attention heads (explicit, or out_channels / channels_per_head).
    """

    def __init__(self, in_channels: int, out_channels: int, emb_channels: int, up: bool = False,  # noqa: PLR0913 - network constructor with EDM's arguments
                 down: bool = False, attention: bool = False, num_heads: int | None = None,
                 channels_per_head: int = 64, dropout: float = 0.0, skip_scale: float = 1.0, eps: float = 1e-5,
                 resample_filter=(1, 1), resample_proj: bool = False, adaptive_scale: bool = True):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.num_heads = 0 if not attention else (num_heads if num_heads is not None
                                                 else out_channels // channels_per_head)
        self.skip_scale, self.adaptive_scale, self.dropout = skip_scale, adaptive_scale, dropout
        self.norm0 = GroupNorm(in_channels, eps=eps)
        self.conv0 = Conv2d(in_channels, out_channels, 3, up=up, down=down, resample_filter=resample_filter)
        self.affine = Linear(emb_channels, out_channels * (2 if adaptive_scale else 1))
        self.norm1 = GroupNorm(out_channels, eps=eps)
        self.conv1 = Conv2d(out_channels, out_channels, 3)
        self.skip = None
        if out_channels != in_channels or up or down:
            kernel = 1 if resample_proj or out_channels != in_channels else 0
            self.skip = Conv2d(in_channels, out_channels, kernel, up=up, down=down, resample_filter=resample_filter)
        if self.num_heads:
            self.norm2 = GroupNorm(out_channels, eps=eps)
            self.qkv = Conv2d(out_channels, out_channels * 3, 1)
            self.proj = Conv2d(out_channels, out_channels, 1)

    def forward(self, x, emb):
        orig = x
        x = self.conv0(F.silu(self.norm0(x)))
        params = self.affine(emb)[:, :, None, None].to(x.dtype)
        if self.adaptive_scale:
            scale, shift = params.chunk(2, dim=1)
            x = F.silu(torch.addcmul(shift, self.norm1(x), scale + 1))
        else:
            x = F.silu(self.norm1(x + params))
        x = self.conv1(F.dropout(x, p=self.dropout, training=self.training))
        x = _scaled(x + (self.skip(orig) if self.skip is not None else orig), self.skip_scale)
        if self.num_heads:
            b, c, h, w = x.shape
            # EDM's layout of the qkv channels (heads, then channels, then q/k/v), attention through torch's fused
            # kernel (softmax(q k^T / sqrt(channels per head)) v, as EDM's einsum form computes it). The fused
            # kernels take only 4-D (batch, heads, tokens, channels) inputs with contiguous channels; anything else
            # falls back to the unfused math path (two bmm and a softmax), so the layout is made explicit here.
            qkv = self.qkv(self.norm2(x)).reshape(b, self.num_heads, c // self.num_heads, 3, h * w)
            q, k, v = (t.transpose(-1, -2).contiguous() for t in qkv.unbind(3))
            attn = F.scaled_dot_product_attention(q, k, v)
            x = _scaled(self.proj(attn.transpose(-1, -2).reshape(b, c, h, w)) + x, self.skip_scale)
        return x


def _scaled(x, scale: float):
    """x * scale, without a kernel when the scale is 1 (ADM's residual sums)."""
    return x if scale == 1 else x * scale


class PositionalEmbedding(nn.Module):
    """Sinusoidal embedding [cos, sin] of a scalar at geometric frequencies."""

    def __init__(self, num_channels: int, max_positions: int = 10000, endpoint: bool = False):
        super().__init__()
        self.num_channels, self.max_positions, self.endpoint = num_channels, max_positions, endpoint

    def forward(self, x):
        half = self.num_channels // 2
        freqs = torch.arange(half, dtype=torch.float32, device=x.device) / (half - (1 if self.endpoint else 0))
        freqs = (1 / self.max_positions) ** freqs
        x = torch.outer(x.float(), freqs.to(x.dtype))
        return torch.cat([x.cos(), x.sin()], dim=1)


class FourierEmbedding(nn.Module):
    """Random Fourier features [cos, sin] of a scalar (frequencies stored as buffer ``freqs``)."""

    def __init__(self, num_channels: int, scale: float = 16.0):
        super().__init__()
        self.register_buffer("freqs", torch.randn(num_channels // 2) * scale)

    def forward(self, x):
        x = torch.outer(x.float(), (2 * math.pi * self.freqs).to(x.dtype))
        return torch.cat([x.cos(), x.sin()], dim=1)


def _add_level_entry(dec: nn.ModuleDict, res: int, channels: int, bottom: bool, block: dict) -> None:
    """Decoder entry of a level: two middle blocks (attention, then plain) at the bottom, else an up block."""
    if bottom:
        dec[f"{res}x{res}_in0"] = UNetBlock(channels, channels, attention=True, **block)
        dec[f"{res}x{res}_in1"] = UNetBlock(channels, channels, **block)
    else:
        dec[f"{res}x{res}_up"] = UNetBlock(channels, channels, up=True, **block)


def _call(block, x, emb):
    return block(x, emb) if isinstance(block, UNetBlock) else block(x)


class SongUNet(nn.Module):
    """DDPM++ (positional embedding, standard encoder, [1,1] resampling) and NCSN++ (Fourier
    embedding, residual encoder, [1,3,3,1] resampling) UNets, selected by their arguments."""

    def __init__(self, img_resolution: int, in_channels: int, out_channels: int, label_dim: int = 0,  # noqa: PLR0913 - network constructor with EDM's arguments
                 augment_dim: int = 0, model_channels: int = 128, channel_mult=(1, 2, 2, 2),
                 channel_mult_emb: int = 4, num_blocks: int = 4, attn_resolutions=(16,), dropout: float = 0.10,
                 label_dropout: float = 0.0, embedding_type: str = "positional", channel_mult_noise: int = 1,
                 encoder_type: str = "standard", decoder_type: str = "standard", resample_filter=(1, 1)):
        super().__init__()
        for name, value, allowed in (("embedding_type", embedding_type, ("positional", "fourier")),
                                     ("encoder_type", encoder_type, ("standard", "skip", "residual")),
                                     ("decoder_type", decoder_type, ("standard", "skip"))):
            if value not in allowed:
                raise ValueError(f"SongUNet {name} must be one of {allowed}, got {value!r}")
        self.label_dropout = label_dropout
        emb_channels = model_channels * channel_mult_emb
        noise_channels = model_channels * channel_mult_noise
        block = dict(emb_channels=emb_channels, num_heads=1, dropout=dropout, skip_scale=math.sqrt(0.5), eps=1e-6,
                     resample_filter=resample_filter, resample_proj=True, adaptive_scale=False)
        self.map_noise = PositionalEmbedding(noise_channels, endpoint=True) if embedding_type == "positional" \
            else FourierEmbedding(noise_channels)
        self.map_label = Linear(label_dim, noise_channels) if label_dim else None
        self.map_augment = Linear(augment_dim, noise_channels, bias=False) if augment_dim else None
        self.map_layer0 = Linear(noise_channels, emb_channels)
        self.map_layer1 = Linear(emb_channels, emb_channels)

        self.enc = nn.ModuleDict()
        cout, caux = in_channels, in_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                cin, cout = cout, model_channels
                self.enc[f"{res}x{res}_conv"] = Conv2d(cin, cout, 3)
            else:
                self.enc[f"{res}x{res}_down"] = UNetBlock(cout, cout, down=True, **block)
                if encoder_type == "skip":
                    self.enc[f"{res}x{res}_aux_down"] = Conv2d(caux, caux, 0, down=True,
                                                               resample_filter=resample_filter)
                    self.enc[f"{res}x{res}_aux_skip"] = Conv2d(caux, cout, 1)
                if encoder_type == "residual":
                    self.enc[f"{res}x{res}_aux_residual"] = Conv2d(caux, cout, 3, down=True,
                                                                   resample_filter=resample_filter,
                                                                   fused_resample=True)
                    caux = cout
            for idx in range(num_blocks):
                cin, cout = cout, model_channels * mult
                self.enc[f"{res}x{res}_block{idx}"] = UNetBlock(cin, cout, attention=res in attn_resolutions, **block)
        skips = [b.out_channels for name, b in self.enc.items() if "aux" not in name]

        self.dec = nn.ModuleDict()
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = img_resolution >> level
            _add_level_entry(self.dec, res, cout, level == len(channel_mult) - 1, block)
            for idx in range(num_blocks + 1):
                cin, cout = cout + skips.pop(), model_channels * mult
                attn = idx == num_blocks and res in attn_resolutions
                self.dec[f"{res}x{res}_block{idx}"] = UNetBlock(cin, cout, attention=attn, **block)
            if decoder_type == "skip" or level == 0:
                if decoder_type == "skip" and level < len(channel_mult) - 1:
                    self.dec[f"{res}x{res}_aux_up"] = Conv2d(out_channels, out_channels, 0, up=True,
                                                             resample_filter=resample_filter)
                self.dec[f"{res}x{res}_aux_norm"] = GroupNorm(cout, eps=1e-6)
                self.dec[f"{res}x{res}_aux_conv"] = Conv2d(cout, out_channels, 3)

    def forward(self, x, noise_labels, class_labels=None, augment_labels=None):  # noqa: PLR0912 - EDM's encoder/decoder walk, kept as EDM wrote it
        emb = self.map_noise(noise_labels)
        emb = emb.reshape(emb.shape[0], 2, -1).flip(1).reshape(*emb.shape)  # [sin, cos] order
        if self.map_label is not None and class_labels is not None:
            labels = class_labels
            if self.training and self.label_dropout:
                keep = torch.rand(x.shape[0], 1, device=x.device) >= self.label_dropout
                labels = labels * keep.to(labels.dtype)
            emb = emb + self.map_label(labels * math.sqrt(self.map_label.in_features))
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = F.silu(self.map_layer1(F.silu(self.map_layer0(emb))))

        skips, aux = [], x
        for name, block in self.enc.items():
            if "aux_down" in name:
                aux = block(aux)
            elif "aux_skip" in name:
                x = skips[-1] = x + block(aux)
            elif "aux_residual" in name:
                x = skips[-1] = aux = (x + block(aux)) / math.sqrt(2)
            else:
                x = _call(block, x, emb)
                skips.append(x)
        aux, tmp = None, None
        for name, block in self.dec.items():
            if "aux_up" in name:
                aux = block(aux)
            elif "aux_norm" in name:
                tmp = block(x)
            elif "aux_conv" in name:
                tmp = block(F.silu(tmp))
                aux = tmp if aux is None else tmp + aux
            else:
                if x.shape[1] != block.in_channels:
                    x = torch.cat([x, skips.pop()], dim=1)
                x = block(x, emb)
        return aux


class DhariwalUNet(nn.Module):
    """The ADM UNet (Dhariwal & Nichol) as used by EDM for ImageNet 64."""

    def __init__(self, img_resolution: int, in_channels: int, out_channels: int, label_dim: int = 0,  # noqa: PLR0913 - network constructor with EDM's arguments
                 augment_dim: int = 0, model_channels: int = 192, channel_mult=(1, 2, 3, 4),
                 channel_mult_emb: int = 4, num_blocks: int = 3, attn_resolutions=(32, 16, 8),
                 dropout: float = 0.10, label_dropout: float = 0.0):
        super().__init__()
        self.label_dropout = label_dropout
        emb_channels = model_channels * channel_mult_emb
        block = dict(emb_channels=emb_channels, channels_per_head=64, dropout=dropout)
        self.map_noise = PositionalEmbedding(model_channels)
        self.map_augment = Linear(augment_dim, model_channels, bias=False) if augment_dim else None
        self.map_layer0 = Linear(model_channels, emb_channels)
        self.map_layer1 = Linear(emb_channels, emb_channels)
        self.map_label = Linear(label_dim, emb_channels, bias=False) if label_dim else None

        self.enc = nn.ModuleDict()
        cout = in_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                cin, cout = cout, model_channels * mult
                self.enc[f"{res}x{res}_conv"] = Conv2d(cin, cout, 3)
            else:
                self.enc[f"{res}x{res}_down"] = UNetBlock(cout, cout, down=True, **block)
            for idx in range(num_blocks):
                cin, cout = cout, model_channels * mult
                self.enc[f"{res}x{res}_block{idx}"] = UNetBlock(cin, cout, attention=res in attn_resolutions, **block)
        skips = [b.out_channels for b in self.enc.values()]

        self.dec = nn.ModuleDict()
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = img_resolution >> level
            _add_level_entry(self.dec, res, cout, level == len(channel_mult) - 1, block)
            for idx in range(num_blocks + 1):
                cin, cout = cout + skips.pop(), model_channels * mult
                self.dec[f"{res}x{res}_block{idx}"] = UNetBlock(cin, cout, attention=res in attn_resolutions, **block)
        self.out_norm = GroupNorm(cout)
        self.out_conv = Conv2d(cout, out_channels, 3)

    def forward(self, x, noise_labels, class_labels=None, augment_labels=None):
        emb = self.map_noise(noise_labels)
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = self.map_layer1(F.silu(self.map_layer0(emb)))
        if self.map_label is not None and class_labels is not None:
            labels = class_labels
            if self.training and self.label_dropout:
                keep = torch.rand(x.shape[0], 1, device=x.device) >= self.label_dropout
                labels = labels * keep.to(labels.dtype)
            emb = emb + self.map_label(labels)
        emb = F.silu(emb)
        skips = []
        for block in self.enc.values():
            x = _call(block, x, emb)
            skips.append(x)
        for block in self.dec.values():
            if x.shape[1] != block.in_channels:
                x = torch.cat([x, skips.pop()], dim=1)
            x = block(x, emb)
        return self.out_conv(F.silu(self.out_norm(x)))
