"""Parameter counts of SD-1.5-class and SDXL-class UNets, their LoRA adapters, and the memory stage 2 needs for its
weights, gradients and Adam moments: what decides whether a run fits one card before activations.

    python benchmarks/t2i_memory.py [--ranks 4,64] [--md docs/TEXT_TO_IMAGE.md]

The UNets are built from their published configs on the meta device (no weights, nothing downloaded), so the
counts are exact. The memory model is this project's stage 2 (diffusion/disback.py, diffusion/adapters.py):

- whole weights: the teacher, the generator, the fake score, the path-node holder and the EMA generator are five
  fp32 copies (bf16 autocast keeps fp32 weights), the generator and the fake score carry fp32 gradients and two
  Adam moments each: 5 x 4 + 2 x 4 + 2 x 8 = 44 bytes a UNet parameter;
- LoRA: the copies share the teacher's frozen fp32 tensors (4 bytes a UNet parameter, once) and add their
  adapters: 44 bytes an adapter parameter.

Activations come on top and depend on the batch, the resolution, bf16 and gradient checkpointing: they are measured
on a GPU (benchmarks/gpu_check.py), not estimated here. The text encoders and the VAE stay off the training device
(prompt embeddings and real latents are computed once, before training).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import torch

SD15 = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
            block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
SDXL = dict(sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280),
            transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
            use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"))
TARGETS = ("to_q", "to_k", "to_v", "to_out.0")  # shared.trained_nets.lora_targets' default
GB = 1e9


def unet(config: dict):
    import diffusers

    with torch.device("meta"):
        return diffusers.UNet2DConditionModel(**config)


def lora_params(net, rank: int, targets=TARGETS) -> int:
    """Parameters of rank-``rank`` adapters on every Linear whose name ends in one of ``targets``: r (in + out)."""
    n = 0
    for name, module in net.named_modules():
        if isinstance(module, torch.nn.Linear) and any(name == t or name.endswith("." + t) for t in targets):
            n += rank * (module.in_features + module.out_features)
    return n


def rows(ranks: list[int]) -> list[dict]:
    out = []
    for label, config in (("SD-1.5 class (512 px)", SD15), ("SDXL class (1024 px)", SDXL)):
        net = unet(config)
        p = sum(t.numel() for t in net.parameters())
        out.append({"unet": label, "params": p, "setting": "whole weights", "trained": p, "bytes": 44 * p})
        for r in ranks:
            a = lora_params(net, r)
            out.append({"unet": label, "params": p, "setting": f"LoRA rank {r}", "trained": a,
                        "bytes": 4 * p + 44 * a})
    return out


def table(rs: list[dict]) -> str:
    lines = ["| UNet | parameters | stage 2 trains | trained parameters | weights + grads + Adam | fits 80 GB before "
             "activations |", "|---|---|---|---|---|---|"]
    for r in rs:
        lines.append(f"| {r['unet']} | {r['params'] / 1e6:,.1f} M | {r['setting']} | {r['trained'] / 1e6:,.2f} M | "
                     f"{r['bytes'] / GB:,.1f} GB | {'yes' if r['bytes'] < 80 * GB else 'no'} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ranks", default="4,64", help="comma-separated LoRA ranks")
    ap.add_argument("--md", help="a markdown file whose <!-- memory --> ... <!-- /memory --> block is replaced")
    args = ap.parse_args(argv)
    text = table(rows([int(r) for r in args.ranks.split(",")]))
    sys.stdout.write(text + "\n")
    if args.md:
        md = Path(args.md)
        block = f"<!-- memory -->\n{text}\n<!-- /memory -->"
        md.write_text(re.sub(r"<!-- memory -->.*?<!-- /memory -->", lambda _: block, md.read_text(), flags=re.S))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
