"""The crops16 study's comparison: each method at its chosen setting, FID against FLOPs and wall-clock.

    python benchmarks/crops16_report.py benchmarks/crops16/seeds_baseline benchmarks/crops16/seeds_fixed \
        --out benchmarks/crops16/study

Reads the parts' ``curves.csv`` (benchmarks/longrun.py) and writes ``comparison.md`` (a table a method) and
``comparison.png`` (FID against TFLOP and against seconds, mean and spread over the seeds). The FLOPs are
counted, not timed: a stage-2 iteration's by torch's flop counter at the run's own settings (r fake-score steps
and one generator step), stage 1's (DisBack only) as k1 fine-tuning steps of the teacher's network. Both methods
share the teacher, whose FLOPs are left out of both. The seconds are the runs' own clocks, stage 1 included.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

import longrun  # noqa: E402
from convergence import env_params, parse_set  # noqa: E402
from step_cost import count_flops, stage2_iteration, teacher_step  # noqa: E402

from disback_pipeline.diffusion.backbones import build_network  # noqa: E402
from disback_pipeline.diffusion.data import make_data_source  # noqa: E402
from disback_pipeline.diffusion.teacher import network_config_for  # noqa: E402

LABELS = {"baseline": "baseline (no path)", "fixed": "DisBack (fixed K2)"}


def recipe_settings(recipe: str) -> dict:
    """The ``backtracking`` overrides named by a curves' recipe label (``budget=N`` is the run's length)."""
    items = [i for i in recipe.split(",") if "=" in i and not i.startswith("budget=")]
    return parse_set(items).get("backtracking", {})


def flop_counts(env: str, curves: pd.DataFrame) -> dict:
    """{(method, recipe): (stage-1 FLOPs, FLOPs of one stage-2 iteration)}."""
    p = env_params(env)
    source = make_data_source(p["data"])
    teacher_net = build_network(network_config_for(source, p["teacher"]["network"]))
    stage1 = count_flops(teacher_step(source, p["teacher"]["network"], int(p["degradation"]["batch_size"])))
    stage1 *= int(p["degradation"]["k1"])
    counts = {}
    for (method, recipe, loss), _ in curves.groupby(["method", "recipe", "loss"]):
        _, iteration = stage2_iteration(p, source, teacher_net, {**recipe_settings(recipe), "loss": loss})
        counts[(method, recipe)] = (stage1 if method != "baseline" else 0.0, count_flops(iteration))
    return counts


def summary(curves: pd.DataFrame, counts: dict, teachers: dict) -> list[dict]:
    """longrun's summary of each (method, recipe) (finals, kept students) with its FLOPs and seconds."""
    rows = []
    for r in longrun.summarise(curves, teachers):
        s1, it = counts[(r["method"], r["recipe"])]
        sub = curves[(curves["method"] == r["method"]) & (curves["recipe"] == r["recipe"])]
        seconds = sub.sort_values("iteration").groupby("seed").last()["wall_clock_s"].mean()
        rows.append({**r, "tflop": (s1 + it * r["iterations"]) / 1e12, "stage1_tflop": s1 / 1e12,
                     "gflop_per_iteration": it / 1e9, "seconds": seconds})
    return rows


def table(rows: list[dict], n_eval: int) -> str:
    lines = [f"Teacher: domain-FID {rows[0]['teacher_quality']:.1f}; students: {n_eval} samples of the evaluation "
             "latents at each evaluation; kept = the EMA generator of the evaluation with the best FID on held-out "
             "latents.", "",
             "| method | setting | seeds | final FID | kept FID | kept / teacher | kept at | TFLOP (stage 1) | "
             "GFLOP / iteration | seconds (stage 1) |", "|" + "---|" * 10]
    for r in rows:
        setting = ", ".join(f"{k.split('.')[-1]}={v}" for k, v in
                            (i.split("=", 1) for i in r["recipe"].split(",")) if k != "backtracking.lr_fake")
        lines.append(f"| {LABELS.get(r['method'], r['method'])} | {setting} | {r['seeds']} | "
                     f"{r['final_quality_mean']:.0f} +- {r['final_quality_std']:.0f} | "
                     f"{r['kept_quality_mean']:.0f} +- {r['kept_quality_std']:.0f} | "
                     f"{r['kept_quality_mean'] / r['teacher_quality']:.1f}x | "
                     f"{', '.join(map(str, sorted(r['kept_iterations'])))} | "
                     f"{r['tflop']:.1f} ({r['stage1_tflop']:.1f}) | {r['gflop_per_iteration']:.1f} | "
                     f"{r['seconds']:.0f} ({r['stage1_s']:.0f}) |")
    return "\n".join(lines) + "\n"


def plot(curves: pd.DataFrame, counts: dict, teacher: float, n_eval: int, file: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for i, ((method, recipe), sub) in enumerate(curves.groupby(["method", "recipe"], sort=False)):
        s1, it = counts[(method, recipe)]
        m = sub.groupby("iteration").agg(q=("quality", "mean"), sd=("quality", "std"),
                                         wc=("wall_clock_s", "mean")).reset_index()
        tflop = (s1 + it * m["iteration"]) / 1e12
        for ax, x in zip(axes, (tflop, m["wc"])):
            ax.plot(x, m["q"], marker="o", ms=3, color=f"C{i}", label=f"{LABELS.get(method, method)}")
            ax.fill_between(x, m["q"] - m["sd"].fillna(0), m["q"] + m["sd"].fillna(0), color=f"C{i}", alpha=0.2)
    for ax, xlabel in zip(axes, ("TFLOP (stage 1 counted)", "seconds (stage 1 counted, one thread)")):
        ax.axhline(teacher, color="k", ls="--", lw=0.8, label="teacher")
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"domain-FID ({n_eval} samples)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(file, dpi=90)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("parts", nargs="+", help="longrun part folders (curves.csv, teachers.json)")
    ap.add_argument("--env", default="crops16")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    parts = [Path(p) for p in args.parts]
    missing = [str(p) for p in parts if not (p / "curves.csv").is_file()]
    if missing:
        ap.error(f"no curves.csv in {', '.join(missing)}: run its part first (benchmarks/crops16.sh seeds ...)")
    curves = pd.concat([pd.read_csv(p / "curves.csv") for p in parts], ignore_index=True)
    teachers: dict = {}
    for p in parts:
        teachers.update(json.loads((p / "teachers.json").read_text()))
    counts = flop_counts(args.env, curves)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = summary(curves, counts, teachers)
    n_eval = int(teachers[rows[0]["data"]]["n_eval"])
    text = table(rows, n_eval)
    (out / "comparison.md").write_text(text)
    plot(curves, counts, rows[0]["teacher_quality"], n_eval, out / "comparison.png")
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
