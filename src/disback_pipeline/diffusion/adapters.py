"""The networks stages 1 and 2 train: copies of the teacher, trained whole or through LoRA adapters.

With ``trained_nets.lora_rank`` > 0 (diffusers teachers) each trained copy (stage 1's degraded score, stage 2's
generator and fake score) gets low-rank adapters on the UNet's ``lora_targets`` layers (peft, through diffusers'
``add_adapter``); the teacher's weights stay frozen in every copy. The adapters start at zero (peft's B = 0), so a
fresh copy computes exactly the teacher; and the copies share the teacher's frozen tensors rather than copying
them, so the UNet is in memory once however many copies there are. What is saved of a trained copy
(:func:`trained_state`) is then the adapters alone: a degradation path of SD-1.5-size nodes is megabytes, and a
node only means something on top of the teacher it was recorded from (the manifest and the training states carry
the teacher's sha256). The student handed on is :func:`merged`: the adapters folded into the weights, the
teacher's own architecture.

Every adapter starts from the same fixed seed, whatever the global RNG holds: the baseline's and DisBack's
generators start alike, and every rank of a data-parallel run builds the same copy.
"""

from __future__ import annotations

import copy
import functools

import torch
from torch import nn

from .config import ConfigError, TrainedNetsConfig

ADAPTER_KEY = ".lora_"  # in every peft LoRA tensor's state_dict key (lora_A, lora_B, lora_embedding_*, ...)
ADAPTER_SEED = 0


def has_adapters(net: nn.Module) -> bool:
    """Whether ``net`` holds peft adapter layers."""
    return any(type(m).__module__.startswith("peft.tuners") for m in net.modules())


def trained_state(net: nn.Module) -> dict[str, torch.Tensor]:
    """What a trained copy adds to the teacher: its adapters' tensors, or its whole state without adapters."""
    state = net.state_dict()
    if not has_adapters(net):
        return state
    return {k: v for k, v in state.items() if ADAPTER_KEY in k}


def trained_parameters(net: nn.Module) -> list[nn.Parameter]:
    return [p for p in net.parameters() if p.requires_grad]


def _unet(net: nn.Module, what: str) -> nn.Module:
    unet = getattr(net, "unet", None)
    if unet is None or not hasattr(unet, "add_adapter"):
        raise ConfigError(f"shared.trained_nets.{what} applies to diffusers teachers (teacher.mode: diffusers), and "
                          f"this teacher is a {type(net).__name__}; set it to its default (0 / false)")
    return unet


def with_adapters(net: nn.Module, cfg: TrainedNetsConfig) -> nn.Module:
    """``net`` (in place) with fresh adapters on ``cfg.lora_targets`` and only those trainable; unchanged when
    ``cfg.lora_rank`` is 0 or it has them already."""
    if not cfg.lora or has_adapters(net):
        return net
    from peft import LoraConfig

    unet = _unet(net, "lora_rank")
    lora = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha or cfg.lora_rank,
                      target_modules=list(cfg.lora_targets), init_lora_weights=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(ADAPTER_SEED)
        try:
            unet.add_adapter(lora)
        except ValueError as exc:  # peft: none of the target modules is in the network
            raise ConfigError(f"shared.trained_nets.lora_targets {list(cfg.lora_targets)} names no layer of the "
                              f"teacher's UNet ({exc}); name its attention projections, e.g. to_q, to_k, to_v, "
                              "to_out.0") from exc
    return net


def _copy(net: nn.Module, cfg: TrainedNetsConfig, device, adapters: bool = True) -> nn.Module:
    """A copy of ``net`` on ``device``; with LoRA it shares the teacher's (frozen) parameters instead of copying
    them, so the generator, the fake score, the path-node holder and the EMA add only their adapters to the memory
    the teacher takes (the teacher moves to ``device`` with them)."""
    if not cfg.lora:
        return copy.deepcopy(net).to(device)
    net.to(device)
    out = copy.deepcopy(net, memo={id(p): p for p in net.parameters()})
    return (with_adapters(out, cfg) if adapters else out).to(device)


def trainable_copy(net: nn.Module, cfg: TrainedNetsConfig, device) -> nn.Module:
    """A copy of the teacher ``net`` to train, on ``device``: every weight, or its adapters only; with gradient
    checkpointing when asked."""
    out = _copy(net, cfg, device).train()
    if not has_adapters(out):
        out.requires_grad_(True)
    if cfg.gradient_checkpointing:  # torch's own function (diffusers' default is a closure): the copy pickles
        _unet(out, "gradient_checkpointing").enable_gradient_checkpointing(
            functools.partial(torch.utils.checkpoint.checkpoint, use_reentrant=False))
    return out


def frozen_copy(net: nn.Module, cfg: TrainedNetsConfig, device, adapters: bool = True) -> nn.Module:
    """A frozen copy of the teacher ``net`` shaped to hold a trained copy's state (a path node, a snapshot); or,
    with ``adapters`` false, the teacher itself in a copy of its own (sharing its tensors under LoRA)."""
    return _copy(net, cfg, device, adapters).eval().requires_grad_(False)


def load_trained_state(net: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load :func:`trained_state` of a copy shaped like ``net`` (keys checked by the caller or by construction)."""
    net.load_state_dict(state, strict=not has_adapters(net))


@torch.no_grad()
def merged(net: nn.Module) -> nn.Module:
    """``net`` with its adapters folded into the weights they adapt and removed: the teacher's architecture, so
    the student loads, samples and exports as a teacher does. ``net`` itself is untouched."""
    if not has_adapters(net):
        return net
    out = copy.deepcopy(net)
    out.unet.fuse_lora()
    out.unet.unload_lora()
    return out
