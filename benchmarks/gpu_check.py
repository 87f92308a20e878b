"""GPU step check: DisBack's stage-2 step (fake-score DSM step + DMD generator step) on the ImageNet-64 ADM
configuration, in lanes: fp32, bf16 autocast, bf16 + torch.compile (channels_last on request).

    python benchmarks/gpu_check.py                                  # CUDA: ADM 64x64, label_dim 1000 (~296M params)
    python benchmarks/gpu_check.py --lanes fp32,bf16 --batch 64     # some lanes, another batch
    python benchmarks/gpu_check.py --tiny --lanes fp32              # the same code path on the CPU, tiny network

    python benchmarks/gpu_check.py --src /tmp/old/src --label old  # another commit's code, side by side

Random weights (no checkpoint needed). Per lane: generator iterations/s, generated images/s (the fake-score
and the generator step each draw a batch), peak memory, FLOPs per iteration counted by
torch.utils.flop_counter (forward and backward of every network in the step), the achieved TFLOP/s and its
fraction of the card's dense bf16 peak. The timed loop calls the step functions directly, without the
divergence guard's per-step host synchronisation, so it measures the step itself. One JSON line per lane,
then a summary line with the bf16 / fp32 ratio.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
import types
from pathlib import Path

import torch

SRC = Path(__file__).resolve().parents[1] / "src"

ADM_IMAGENET64 = {"backbone": "dhariwalunet", "img_resolution": 64, "in_channels": 3, "out_channels": 3,
                  "label_dim": 1000, "model_channels": 192, "channel_mult": [1, 2, 3, 4], "num_blocks": 3,
                  "attn_resolutions": [32, 16, 8], "dropout": 0.0}
TINY = {**ADM_IMAGENET64, "img_resolution": 16, "label_dim": 10, "model_channels": 32, "channel_mult": [1, 2],
        "num_blocks": 1, "attn_resolutions": [8]}
# dense bf16 tensor-core peaks (FLOP/s) from the vendors' data sheets, by a name fragment of the device
BF16_PEAK = {"H100 80GB HBM3": 989e12, "H100 PCIe": 756e12, "H100": 989e12, "H200": 989e12, "A100": 312e12}
LANES = {"fp32": {"bf16": False, "compile": False}, "bf16": {"bf16": True, "compile": False},
         "bf16+compile": {"bf16": True, "compile": True}, "compile": {"bf16": False, "compile": True}}


def load_package(src: Path) -> types.SimpleNamespace:
    """The step's functions from the package under ``src`` (this checkout's by default; another commit's tree,
    e.g. from ``git archive``, to time two versions of the code on one machine). One tree per process."""
    src = Path(src).resolve()
    loaded = sys.modules.get("disback_pipeline")
    if loaded is None:
        sys.path.insert(0, str(src))
    elif not Path(loaded.__file__).resolve().is_relative_to(src):
        raise SystemExit(f"disback_pipeline is already imported from {Path(loaded.__file__).parent}, not from "
                         f"{src}: time another tree in a process of its own")
    mods = {name: importlib.import_module(f"disback_pipeline.diffusion.{name}")
            for name in ("backbones", "checkpoint", "config", "data", "disback", "losses", "training")}
    if not Path(mods["disback"].__file__).resolve().is_relative_to(src):
        raise SystemExit(f"{src} holds no disback_pipeline package (imported {mods['disback'].__file__})")

    class RandomLabels(mods["data"].DataSource):
        """Only shapes and labels matter here: the step never reads real images."""

        def __init__(self, resolution: int, classes: int):
            self.name, self.shape, self.num_classes, self.conditional = ("random", (3, resolution, resolution),
                                                                         classes, True)

    return types.SimpleNamespace(**mods, RandomLabels=RandomLabels)


def peak_flops(device: str) -> float | None:
    if device == "cpu":
        return None
    name = torch.cuda.get_device_name()
    return next((v for k, v in BF16_PEAK.items() if k in name), None)


def run_lane(pkg: types.SimpleNamespace, lane: str, net_cfg: dict, batch: int, iterations: int,  # noqa: PLR0913
             device: str, channels_last: bool, profile: bool = False, cudnn_benchmark: str = "auto",
             warmup: int = 3) -> dict:
    settings = LANES[lane]
    cfg = pkg.config.from_dict(pkg.config.DistillConfig, {
        "loss": "dmd", "s_init": 80.0, "k2": 0, "lr_generator": 2e-6, "lr_fake": 2e-6, "batch_size": batch,
        "ema_decay": 0.999, "device": device, "bf16": settings["bf16"] and device == "cuda",
        "compile": settings["compile"], "channels_last": channels_last}, "backtracking")
    torch.manual_seed(0)
    teacher = pkg.checkpoint.Checkpoint(pkg.backbones.build_network(net_cfg), net_cfg, {})
    source = pkg.RandomLabels(net_cfg["img_resolution"], net_cfg["label_dim"])
    dev = pkg.training.select_device(device)  # the loops' device set-up (cuDNN autotuning where the code has it)
    if cudnn_benchmark != "auto":
        torch.backends.cudnn.benchmark = cudnn_benchmark == "on"
    nets = pkg.disback._build_nets(teacher, source, None, cfg, dev)
    fake_loss = pkg.losses.EDMLoss(cfg.fake_P_mean, cfg.fake_P_std, nets.fake.sigma_data)
    gen_loss = cfg.generator_loss()

    def step():
        pkg.disback.fake_score_step(nets, fake_loss, source, cfg, dev)
        pkg.disback.generator_step(nets, gen_loss, nets.teacher, source, cfg, dev)

    warm_start = time.perf_counter()
    for _ in range(warmup):  # warm-up: allocations, cuDNN's algorithm search, compilation
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    warmup_s = time.perf_counter() - warm_start
    flops = count_flops(step)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(iterations):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    it_s = iterations / seconds
    if profile:
        print_profile(step, device)
    peak = peak_flops(device)
    return {"lane": lane, "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
            "torch": torch.__version__, "cudnn_benchmark": torch.backends.cudnn.benchmark,
            "parameters": sum(p.numel() for p in teacher.net.parameters()), "batch": batch,
            "channels_last": channels_last, "warmup_s": warmup_s, "iterations": iterations, "iterations_per_s": it_s,
            "generator_images_per_s": it_s * batch * 2, "flops_per_iteration": flops,
            "achieved_tflops": flops * it_s / 1e12, "bf16_peak_fraction": flops * it_s / peak if peak else None,
            "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None}


def print_profile(step, device: str, rows: int = 25) -> None:
    """The step's operators by their own device time (3 steps), to stderr: where a slow lane spends it."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(3):
            step()
        if device == "cuda":
            torch.cuda.synchronize()
    key = "self_cuda_time_total" if device == "cuda" else "self_cpu_time_total"
    sys.stderr.write(prof.key_averages().table(sort_by=key, row_limit=rows) + "\n")


def count_flops(step) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return int(counter.get_total_flops())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiny", action="store_true", help="a tiny ADM on the CPU (checks the code path)")
    ap.add_argument("--lanes", default="fp32,bf16,bf16+compile", help=f"comma list of {', '.join(LANES)}")
    ap.add_argument("--iterations", type=int, default=10)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--channels-last", action="store_true",
                    help="channels_last memory format (slower on an H200 for these GroupNorm-heavy networks)")
    ap.add_argument("--profile", default="", help="comma list of lanes whose operators to list by device time")
    ap.add_argument("--src", type=Path, default=SRC, help="the package tree to time (default: this checkout's)")
    ap.add_argument("--label", default="", help="a name for the code timed (e.g. its commit), copied to every line")
    ap.add_argument("--cudnn-benchmark", choices=("auto", "on", "off"), default="auto",
                    help="cuDNN's algorithm search: as the code's device set-up leaves it (auto), or forced")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps before the timed ones")
    args = ap.parse_args(argv)
    lanes = args.lanes.split(",")
    unknown = [lane for lane in lanes if lane not in LANES]
    if unknown:
        ap.error(f"unknown lane(s) {unknown}; choose from {', '.join(LANES)}")
    device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    pkg = load_package(args.src)
    results = {}
    for lane in lanes:
        results[lane] = {"label": args.label, **run_lane(
            pkg, lane, TINY if args.tiny else ADM_IMAGENET64, args.batch, args.iterations, device,
            args.channels_last, lane in args.profile.split(","), args.cudnn_benchmark, args.warmup)}
        sys.stdout.write(json.dumps(results[lane]) + "\n")
        sys.stdout.flush()
    if "fp32" in results and "bf16" in results:
        ratio = results["bf16"]["iterations_per_s"] / results["fp32"]["iterations_per_s"]
        sys.stdout.write(json.dumps({"bf16_over_fp32": ratio}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
