"""Teacher budget: a teacher's domain-FID against its training FLOPs (digits, or another environment's images).

    python benchmarks/teacher_budget.py --set steps=1500 --set ema_rampup=0.05 --out .bench/teacher_budget
    python benchmarks/teacher_budget.py --report .bench/teacher_budget --md benchmarks/TEACHER_BUDGET.md
    python benchmarks/teacher_budget.py --env crops16 --set steps=2000 --out benchmarks/crops16/teacher

One call trains one teacher (the environment's network and training settings, with ``--set`` overrides of
``teacher.training`` or ``teacher.network.unet``) and appends a row to ``<out>/rows.jsonl``: settings,
GFLOP per step (``torch.utils.flop_counter``, forward and backward), training seconds, and the domain-FID of
``evaluation.n_samples`` Heun samples at the evaluation's seed, the number the default run reports (against
``evaluation.reference_path``'s images when the environment names a held-out folder). Calls are independent,
so lanes can run side by side; ``--report`` tabulates every row.

Runs on the core package directly (no Kedro, no MLflow).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from convergence import domain_features, env_params  # noqa: E402
from step_cost import count_flops, teacher_step  # noqa: E402

from disback_pipeline.diffusion.config import SamplerConfig, from_dict, soft_merge  # noqa: E402
from disback_pipeline.diffusion.data import make_data_source  # noqa: E402
from disback_pipeline.diffusion.teacher import pretrain_teacher  # noqa: E402
from disback_pipeline.evaluation.features import standard_layout  # noqa: E402
from disback_pipeline.evaluation.quality import quality, sample_teacher  # noqa: E402

UNET_KEYS = ("model_channels", "channel_mult", "num_blocks", "attn_resolutions", "dropout")


def parse_sets(items: list[str]) -> tuple[dict, dict]:
    """``key=value`` (YAML value) -> (training overrides, unet overrides)."""
    training, unet = {}, {}
    for item in items:
        key, _, value = item.partition("=")
        if not value:
            raise SystemExit(f"--set needs key=value, got {item!r}")
        (unet if key in UNET_KEYS else training)[key] = yaml.safe_load(value)
    return training, unet


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    p = env_params(args.env)
    training_set, unet_set = parse_sets(args.set)
    network = soft_merge(p["teacher"]["network"], {"unet": unet_set})
    training = {**p["teacher"]["training"], **training_set, "log_every": 0, "checkpoint_every": 0}
    source = make_data_source(p["data"])
    flops = count_flops(teacher_step(source, network, int(training["batch_size"])))
    t0 = time.perf_counter()
    teacher, _ = pretrain_teacher(source, network, training, seed=args.seed, device="cpu")
    train_s = time.perf_counter() - t0
    cache = Path(args.domain_cache) if args.domain_cache else None
    features, reference = domain_features(source, p, cache)
    n = int(p["evaluation"]["n_samples"])
    x, _ = sample_teacher(teacher.net, source, n, int(p["evaluation"]["seed"]),
                          from_dict(SamplerConfig, p["shared"]["sampler"]))
    fid = float(quality(x, source, features, reference)["fid"])
    share = class_share(features, x)
    if args.grid:
        from torchvision.utils import save_image

        Path(args.grid).parent.mkdir(parents=True, exist_ok=True)
        save_image((x[:64].float() + 1) / 2, args.grid, nrow=8)
    steps = int(training["steps"])
    return {"env": args.env, "settings": {**training_set, **unet_set}, "steps": steps,
            "batch_size": int(training["batch_size"]), "seed": args.seed, "gflop_per_step": flops / 1e9,
            "tflop": flops * steps / 1e12,
            "train_s": round(train_s, 1), "fid": round(fid, 3), "n_samples": n, "threads": args.threads,
            "class_share": [round(v, 3) for v in share], "class_tv": round(0.5 * sum(abs(v - 1 / len(share))
                                                                                     for v in share), 3),
            "machine": f"{cpu_name()}, {torch.get_num_threads()} threads"}


@torch.no_grad()
def class_share(features, x: torch.Tensor) -> list[float]:
    """The share of the samples the domain classifier assigns to each class (photo, digit): how evenly the teacher
    covers the data's classes, which a class-discriminative FID weighs heavily."""
    logits = torch.cat([features.net(standard_layout(x[i:i + 1000].float())) for i in range(0, len(x), 1000)])
    counts = torch.bincount(logits.argmax(1), minlength=logits.shape[1]).float()
    return (counts / counts.sum()).tolist()


def cpu_name() -> str:
    """The processor's model name (/proc/cpuinfo), else the architecture: rows from different CPUs differ (a
    teacher and a domain extractor trained on another CPU round differently), so every row names its machine."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def report(folder: Path, md: Path) -> None:
    rows = [json.loads(line) for line in (folder / "rows.jsonl").read_text().splitlines() if line.strip()]
    rows.sort(key=lambda r: (r["machine"].split(",")[0], r["tflop"], r["fid"]))
    lines = ["| settings (over the environment) | steps | batch | GFLOP/step | TFLOP | s (here) | seed | domain-FID "
             "| class TV | machine |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        sets = ", ".join(f"{k}={v}" for k, v in r["settings"].items()) or f"conf/{r.get('env', 'base')}"
        tv = f"{r['class_tv']:.3f}" if "class_tv" in r else "-"  # rows written before the column
        lines.append(f"| {sets} | {r['steps']} | {r['batch_size']} | {r['gflop_per_step']:.2f} | {r['tflop']:.1f} "
                     f"| {r['train_s']:.0f} | {r['seed']} | {r['fid']:.2f} | {tv} | {r['machine'].split(',')[0]} |")
    text = md.read_text() if md.is_file() else ""
    head, sep, _ = text.partition("<!-- rows -->")
    md.write_text((head + sep if sep else "<!-- rows -->") + "\n" + "\n".join(lines) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", action="append", default=[], help="teacher.training or unet key=value (repeatable)")
    ap.add_argument("--env", default="base", help="the Kedro environment whose data, network and training it takes")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=".bench/teacher_budget", help="folder of rows.jsonl")
    ap.add_argument("--domain-cache", default=None, help="file to keep the domain classifier in (trained once)")
    ap.add_argument("--grid", default=None, help="PNG file to write 64 of the teacher's samples to")
    ap.add_argument("--report", default=None, help="folder of rows.jsonl to tabulate into --md")
    ap.add_argument("--md", default="benchmarks/TEACHER_BUDGET.md")
    args = ap.parse_args(argv)
    if args.report:
        report(Path(args.report), Path(args.md))
        return 0
    row = run(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "rows.jsonl").open("a") as f:
        f.write(json.dumps(row) + "\n")
    sys.stdout.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
