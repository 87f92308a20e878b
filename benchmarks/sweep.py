"""Settings sweep and ablation: DisBack and the baseline around the conf defaults, over seeds.

    python benchmarks/sweep.py --datasets ring,grid --losses di,dmd --seeds 3 --workers 15 \
        --teacher-cache .bench/cache --out benchmarks/sweep

One factor at a time around the env's settings (see ``CONFIGS``). Settings both
methods share (learning rate, r, s_init) run for both, so neither is tuned
down; path settings (N, K1, K2, spacing, stage-1 learning rate) run for DisBack
only. ``N1`` is the ablation's ingredient (b): the fake score starts from the
end of the degradation path but the teacher is the only target. Each job is one
process with one torch thread; teachers come from ``--teacher-cache`` (trained
there by the first job of a data set that misses one, so give each data set a
cached teacher before a parallel run).

Writes ``sweep_curves.csv`` (every evaluation of every run), ``sweep.json`` and
``SWEEP.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import sys
import time
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import convergence  # noqa: E402

from disback_pipeline.evaluation.convergence import first_reaching  # noqa: E402

BOTH, DISBACK = ("baseline", "disback"), ("disback",)


def _lr(v: float) -> dict:
    return {"backtracking": {"lr_generator": v, "lr_fake": v}}


# name -> (overrides on top of conf, methods that run it, what it varies)
CONFIGS: dict[str, tuple[dict, tuple[str, ...], str]] = {
    "default": ({}, BOTH, "conf defaults"),
    "lr_1e-4": (_lr(1e-4), BOTH, "learning rate (both nets)"),
    "lr_5e-4": (_lr(5e-4), BOTH, "learning rate (both nets)"),
    "r_5": ({"backtracking": {"fake_steps": 5}}, BOTH, "fake-score steps per generator step"),
    "s_init_1": ({"backtracking": {"s_init": 1.0}}, BOTH, "generator input noise level"),
    "s_init_10": ({"backtracking": {"s_init": 10.0}}, BOTH, "generator input noise level"),
    "N_1": ({"degradation": {"n_nodes": 1}}, DISBACK, "ablation (b): fake score from P_N, teacher only target"),
    "N_2": ({"degradation": {"n_nodes": 2}}, DISBACK, "path nodes"),
    "N_8": ({"degradation": {"n_nodes": 8}}, DISBACK, "path nodes"),
    "K2_100": ({"backtracking": {"k2": 100}}, DISBACK, "iterations per path node"),
    "K2_250": ({"backtracking": {"k2": 250}}, DISBACK, "iterations per path node"),
    "N_2_K2_100": ({"degradation": {"n_nodes": 2}, "backtracking": {"k2": 100}}, DISBACK, "path nodes x K2"),
    "N_8_K2_100": ({"degradation": {"n_nodes": 8}, "backtracking": {"k2": 100}}, DISBACK, "path nodes x K2"),
    "K1_100": ({"degradation": {"k1": 100}}, DISBACK, "stage-1 iterations"),
    "K1_1000": ({"degradation": {"k1": 1000}}, DISBACK, "stage-1 iterations"),
    "spacing_iterations": ({"degradation": {"spacing": "iterations"}}, DISBACK, "path spacing"),
    "stage1_lr_1e-4": ({"degradation": {"lr": 1e-4}}, DISBACK, "stage-1 learning rate"),
    "stage1_lr_1e-4_K1_1000": ({"degradation": {"lr": 1e-4, "k1": 1000}}, DISBACK, "stage-1 lr x K1"),
}

_CTX: dict[str, dict] = {}
_DEVICE = ["cpu"]


def _init_worker(counter, gpu_workers: int) -> None:
    """The first ``gpu_workers`` workers to start run their jobs on CUDA, the others on one CPU thread."""
    torch.set_num_threads(1)
    with counter.get_lock():
        rank = counter.value
        counter.value += 1
    _DEVICE[0] = "cuda" if rank < gpu_workers and torch.cuda.is_available() else "cpu"


def _job(job: tuple) -> pd.DataFrame:
    name, loss, config, method, seed, args = job
    if name not in _CTX:
        _CTX[name] = convergence.setup(name, args)
    t = time.perf_counter()
    rows = convergence.run_one(_CTX[name], loss, seed, method == "disback", args, CONFIGS[config][0],
                               device=_DEVICE[0])
    for i, (col, val) in enumerate((("dataset", name), ("loss", loss), ("config", config), ("method", method),
                                    ("seed", seed), ("device", _DEVICE[0]))):
        rows.insert(i, col, val)
    rows["teacher_quality"] = _CTX[name]["teacher_quality"]
    rows["metric"] = _CTX[name]["metric"]
    sys.stdout.write(f"{name} {loss} {config} {method} seed {seed} [{_DEVICE[0]}]: final "
                     f"{rows['quality'].iloc[-1]:.4g} ({time.perf_counter() - t:.0f} s)\n")
    sys.stdout.flush()
    return rows


def summarise(curves: pd.DataFrame) -> list[dict]:
    """Per (data, loss, config, method): final quality over seeds, mean quality over training, and the
    speed-up against the default baseline (iterations and wall-clock, stage 1 counted, to reach the
    default baseline's final mean quality)."""
    out = []
    for (name, loss), sub in curves.groupby(["dataset", "loss"], sort=False):
        mean = sub.groupby(["config", "method", "iteration"]).agg(
            quality=("quality", "mean"), wall_clock_s=("wall_clock_s", "mean")).reset_index()
        ref = mean[(mean.config == "default") & (mean.method == "baseline")]
        target = float(ref["quality"].iloc[-1])
        ref_it = first_reaching(ref, "quality", target, "iteration")
        ref_wc = first_reaching(ref, "quality", target, "wall_clock_s")
        for (config, method), g in mean.groupby(["config", "method"], sort=False):
            runs = sub[(sub.config == config) & (sub.method == method)]
            finals = runs.sort_values("iteration").groupby("seed")["quality"].last()
            devices = "+".join(sorted(runs["device"].unique())) if "device" in runs else "cpu"
            out.append({"dataset": name, "loss": loss, "config": config, "method": method, "devices": devices,
                        "varies": CONFIGS[config][2],
                        **convergence.arm_summary(g, finals, target, ref_it, ref_wc),
                        "target_quality": target, "metric": str(sub["metric"].iloc[0]),
                        "teacher_quality": float(sub["teacher_quality"].iloc[0])})
    return out


def machine(workers: int, gpu_workers: int) -> str:
    gpu = (f"{min(gpu_workers, workers)} of them on {torch.cuda.get_device_name()}"
           if gpu_workers and torch.cuda.is_available() else "all on the CPU")
    return (f"{platform.machine()}, {mp.cpu_count()} cores, {workers} runs at a time ({gpu}; one torch thread "
            f"each), Python {platform.python_version()}, torch {torch.__version__}")


def write_report(out: Path, rows: list[dict], cmd: str, total_s: float, machine_text: str) -> None:
    lines = ["# Settings sweep and ablation", "", f"Command: `{cmd}`  ",
             f"Machine: {machine_text}. Wall time {total_s / 60:.1f} min.", "",
             "Quality: reverse KL (2-D, lower is better), mean over seeds. `mean over training` averages the "
             "mean curve over all evaluations (lower = got good sooner). Speed-up: iterations (and wall-clock, "
             "stage 1 counted) the *default baseline* needs to reach its own final mean quality, over what "
             "this setting needs; n/a = never reached. Wall-clock ratios compare like with like only when both "
             "runs used the same device (`ran on`): a CUDA run of these small networks is about twice as fast as "
             "a CPU run, so across devices read the iteration ratios only.", ""]
    for (name, loss), group in pd.DataFrame(rows).groupby(["dataset", "loss"], sort=False):
        lines += [f"## {name} / {loss} (teacher {group['teacher_quality'].iloc[0]:.3g}, default baseline final "
                  f"{group['target_quality'].iloc[0]:.3g})", "",
                  "| setting | varies | method | seeds | final (mean +- std) | mean over training | speed-up (it) | "
                  "speed-up (wall) | ran on |", "|---|---|---|---|---|---|---|---|---|"]
        for r in group.sort_values(["final_mean"]).itertuples():
            lines.append(f"| {r.config} | {r.varies} | {r.method} | {r.seeds} | {r.final_mean:.3g} +- "
                         f"{r.final_std:.2g} | {r.mean_over_training:.3g} | "
                         f"{convergence._fmt(r.speedup_iterations)} | {convergence._fmt(r.speedup_wallclock)} | "
                         f"{r.devices} |")
        lines.append("")
    (out / "SWEEP.md").write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--datasets", default="ring,grid")
    ap.add_argument("--losses", default="di,dmd")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated names from CONFIGS")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--gpu-workers", type=int, default=0, help="how many of the workers run on CUDA (if present)")
    ap.add_argument("--budget", type=int, default=0)
    ap.add_argument("--eval-every", type=int, default=0)
    ap.add_argument("--proxy-samples", type=int, default=0)
    ap.add_argument("--teacher-steps", type=int, default=0)
    ap.add_argument("--teacher-cache", default="")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "sweep"))
    ap.add_argument("--summarise", default="", help="only rebuild sweep.json / SWEEP.md from this sweep_curves.csv")
    ap.add_argument("--command", default="", help="with --summarise: the command that made the curves")
    ap.add_argument("--minutes", type=float, default=0.0, help="with --summarise: its wall time")
    args = ap.parse_args(argv)
    if args.summarise:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        rows = summarise(pd.read_csv(args.summarise))
        where = Path(args.summarise).with_name("machine.txt")
        text = where.read_text().strip() if where.is_file() else machine(args.workers, args.gpu_workers)
        (out / "sweep.json").write_text(json.dumps({"command": args.command, "minutes": args.minutes,
                                                    "machine": text, "rows": rows}, indent=2))
        write_report(out, rows, args.command, args.minutes * 60, text)
        return 0
    configs = args.configs.split(",")
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        ap.error(f"unknown sweep setting(s) {unknown}; choose from {list(CONFIGS)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(name, loss, config, method, seed, args)
            for config in configs for method in CONFIGS[config][1]
            for name in args.datasets.split(",") for loss in args.losses.split(",") for seed in range(args.seeds)]
    # seed by seed (a run cut short loses seeds, not settings), longest first within a seed (short tail)
    jobs.sort(key=lambda j: (j[4], -(5 if "r_5" in j[2] else 1) - (1 if "1000" in j[2] else 0)))
    started = time.perf_counter()
    text = machine(args.workers, args.gpu_workers)
    (out / "machine.txt").write_text(text + "\n")
    frames = []
    ctx = mp.get_context("spawn")
    counter = ctx.Value("i", 0)
    with ctx.Pool(args.workers, initializer=_init_worker, initargs=(counter, args.gpu_workers)) as pool:
        for rows in pool.imap_unordered(_job, jobs):
            frames.append(rows)  # written after every run: a sweep cut short keeps all finished runs
            pd.concat(frames, ignore_index=True).to_csv(out / "sweep_curves.csv", index=False)
    curves = pd.concat(frames, ignore_index=True)
    rows = summarise(curves)
    total = time.perf_counter() - started
    cmd = (f"python benchmarks/sweep.py --datasets {args.datasets} --losses {args.losses} --seeds {args.seeds} "
           f"--workers {args.workers}" + (f" --gpu-workers {args.gpu_workers}" if args.gpu_workers else "")
           + (f" --configs {args.configs}" if args.configs != ",".join(CONFIGS) else "")
           + (f" --budget {args.budget}" if args.budget else "") + " --teacher-cache DIR")
    (out / "sweep.json").write_text(json.dumps({"command": cmd, "minutes": total / 60, "machine": text,
                                                "rows": rows}, indent=2))
    write_report(out, rows, cmd, total, text)
    sys.stdout.write(f"sweep: {len(jobs)} runs in {total / 60:.1f} min -> {out}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
