"""GPU path check: a few DisBack iterations of the ImageNet-64 ADM configuration on CUDA in bf16.

    python benchmarks/gpu_check.py             # on a CUDA machine: ADM 64x64, label_dim 1000 (~296M parameters)
    python benchmarks/gpu_check.py --fp32      # the same without bf16 autocast, for the ratio
    python benchmarks/gpu_check.py --tiny      # the same code path on the CPU with a tiny network

Random weights (no checkpoint needed). Prints iterations/s, images/s and peak memory as one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from disback_pipeline.diffusion.backbones import build_network  # noqa: E402
from disback_pipeline.diffusion.checkpoint import Checkpoint  # noqa: E402
from disback_pipeline.diffusion.data import DataSource  # noqa: E402
from disback_pipeline.diffusion.disback import distill  # noqa: E402

ADM_IMAGENET64 = {"backbone": "dhariwalunet", "img_resolution": 64, "in_channels": 3, "out_channels": 3,
                  "label_dim": 1000, "model_channels": 192, "channel_mult": [1, 2, 3, 4], "num_blocks": 3,
                  "attn_resolutions": [32, 16, 8], "dropout": 0.0}
TINY = {**ADM_IMAGENET64, "img_resolution": 16, "label_dim": 10, "model_channels": 32, "channel_mult": [1, 2],
        "num_blocks": 1, "attn_resolutions": [8]}


class RandomLabels(DataSource):
    """Only shapes and labels matter here: the loop never reads real images."""

    def __init__(self, resolution: int, classes: int):
        self.name, self.shape, self.num_classes, self.conditional = "random", (3, resolution, resolution), classes, True


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--iterations", type=int, default=6)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--fp32", action="store_true", help="no bf16 autocast (the comparison run)")
    args = ap.parse_args(argv)
    cfg = TINY if args.tiny else ADM_IMAGENET64
    device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    torch.manual_seed(0)
    teacher = Checkpoint(build_network(cfg), cfg, {})
    n_params = sum(p.numel() for p in teacher.net.parameters())
    loop = {"loss": "dmd", "s_init": 80.0, "budget": args.iterations, "k2": 0, "fake_steps": 1,
            "lr_generator": 2e-6, "lr_fake": 2e-6, "batch_size": args.batch, "ema_decay": 0.999, "seed": 0,
            "device": device, "bf16": device == "cuda" and not args.fp32, "log_every": 0}
    source = RandomLabels(cfg["img_resolution"], cfg["label_dim"])
    distill(teacher, source, None, {**loop, "budget": 1})  # warm-up (allocations, kernels)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    distill(teacher, source, None, loop)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    out = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "parameters": n_params,
           "bf16": loop["bf16"], "batch": args.batch, "iterations": args.iterations,
           "iterations_per_s": args.iterations / seconds,
           "generator_images_per_s": args.iterations * args.batch * (1 + loop["fake_steps"]) / seconds,
           "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None}
    sys.stdout.write(json.dumps(out) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
