"""Long-run study: base losses x methods x seeds, run until the curves flatten.

    python benchmarks/longrun.py --datasets ring --losses di,dmd,sid --seeds 3 --budget 5000 \
        --part 1/2 --out .bench/longrun/ring_1            # one lane's share of the runs
    python benchmarks/longrun.py --merge .bench/longrun/ring_1,.bench/longrun/ring_2 --out benchmarks

Methods: ``baseline`` (no path), ``fixed`` (DisBack, K2 iterations per node) and
``adaptive`` (DisBack, leave a node when the score mismatch has converged).
Every run of a part is written to its ``curves.csv`` as soon as it ends, and a
re-run of the same part skips the runs already there, so a part cut off loses
only the run in progress. ``--set`` changes a backtracking or degradation
setting for every run of the part (tuning, robustness map); the setting goes
into the curves' ``recipe`` column so parts with different recipes merge into
one report. The merge writes LONGRUN.md, longrun.json and longrun.png.

Runs on the core package directly (no Kedro, no MLflow): what is measured is the method.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from convergence import add_run_options, parse_set, run_one, setup  # noqa: E402

log = logging.getLogger("benchmarks.longrun")

METHODS = {"baseline": (False, {}), "fixed": (True, {"switch": "fixed"}), "adaptive": (True, {"switch": "adaptive"})}
LEVELS = (10.0, 5.0, 2.0, 1.5)  # multiples of the teacher's quality
EXTRA = ("off_mode_mass", "mode_std")


def recipe_name(items: list[str], budget: int = 0) -> str:
    """The curves' recipe label: the ``--set`` items and, when ``--budget`` overrides the env's, ``budget=N``
    (so parts that differ only in budget stay apart in the merged table)."""
    return ",".join(sorted(items) + ([f"budget={budget}"] if budget else [])) or "default"


def plan(datasets, losses, methods, seeds) -> list[tuple]:
    # seed outermost: a study cut short (or split into parts) has whole seeds of every (data, loss, method)
    return [(d, loss, m, s) for s in range(seeds) for d in datasets for loss in losses for m in methods]


def run_part(args) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    curves_file = out / "curves.csv"
    frames = [pd.read_csv(curves_file)] if curves_file.is_file() else []
    done = set()
    if frames:
        done = set(map(tuple, frames[0][["dataset", "loss", "method", "seed"]].drop_duplicates().to_numpy()))
    overrides = parse_set(args.set)
    recipe = recipe_name(args.set, args.budget)
    k, n = (int(v) for v in args.part.split("/"))
    runs = plan(args.datasets.split(","), args.losses.split(","), args.methods.split(","), args.seeds)[k - 1::n]
    teachers_file = out / "teachers.json"
    teachers = json.loads(teachers_file.read_text()) if teachers_file.is_file() else {}
    ctx = {}
    for data, loss, method, seed in runs:
        if (data, loss, method, seed) in done:
            continue
        if data not in ctx:
            ctx[data] = setup(data, args)
            teachers[data] = {"metric": ctx[data]["metric"], "teacher_quality": ctx[data]["teacher_quality"],
                              "n_eval": ctx[data]["n_eval"], "batch_size": int(ctx[data]["params"]["backtracking"]
                                                                               ["batch_size"])}
            teachers_file.write_text(json.dumps(teachers, indent=2))
        enabled, bt = METHODS[method]
        t = time.perf_counter()
        rows = run_one(ctx[data], loss, seed, enabled, args,
                       {"backtracking": {**overrides.get("backtracking", {}), **bt},
                        "degradation": overrides.get("degradation", {})}, device=args.device, extra_metrics=EXTRA)
        for i, (col, val) in enumerate((("dataset", data), ("loss", loss), ("method", method), ("seed", seed),
                                        ("recipe", recipe))):
            rows.insert(i, col, val)
        frames.append(rows)
        pd.concat(frames, ignore_index=True).to_csv(curves_file, index=False)
        log.info("%s %s %s seed %d: final %.4g after %d iterations (%.0f s)", data, loss, method, seed,
                 rows["quality"].iloc[-1], rows["iteration"].iloc[-1], time.perf_counter() - t)


def first_at(curve: pd.DataFrame, level: float, x: str) -> float | None:
    hit = curve[curve["quality"] <= level]
    return None if hit.empty else float(hit[x].iloc[0])


def flatness(curve: pd.Series) -> float:
    """Relative drop of the mean curve over its last quarter: (value at 3/4 - final) / final.

    Near 0 (below 0.05, say) means flattened; large means still improving."""
    values = curve.to_numpy()
    q = values[int(0.75 * (len(values) - 1))]
    return float((q - values[-1]) / abs(values[-1])) if values[-1] else float("nan")


def summarise(curves: pd.DataFrame, teachers: dict) -> list[dict]:
    rows = []
    for (data, loss, method, recipe), sub in curves.groupby(["dataset", "loss", "method", "recipe"], sort=False):
        t = teachers[data]
        mean = sub.groupby("iteration").agg(quality=("quality", "mean"), wall_clock_s=("wall_clock_s", "mean"))
        mean = mean.reset_index()
        finals = sub.sort_values("iteration").groupby("seed").last()
        row = {"data": data, "loss": loss, "method": method, "recipe": recipe, "seeds": int(finals.shape[0]),
               "metric": t["metric"], "teacher_quality": t["teacher_quality"],
               "final_quality_mean": float(finals["quality"].mean()),
               "final_quality_std": float(finals["quality"].std()) if len(finals) > 1 else 0.0,
               "iterations": int(mean["iteration"].iloc[-1]), "flatness_last_quarter": flatness(mean["quality"]),
               "stage1_s": float(finals["stage1_s"].mean())}
        for k in EXTRA:
            if k in finals and finals[k].notna().any():
                row[f"final_{k}"] = float(finals[k].mean())
        if "select_quality" in sub and sub["select_quality"].notna().any():
            # keep = best: per seed, the evaluation with the lowest held-out proxy, scored on the evaluation's latents
            kept = sub.dropna(subset=["select_quality"]).sort_values("iteration").reset_index(drop=True)
            kept = kept.loc[kept.groupby("seed")["select_quality"].idxmin()]
            row.update({"kept_quality_mean": float(kept["quality"].mean()),
                        "kept_quality_std": float(kept["quality"].std()) if len(kept) > 1 else 0.0,
                        "kept_iterations": [int(i) for i in kept["iteration"]]})
        for f in LEVELS:
            level = f * t["teacher_quality"]
            it = first_at(mean, level, "iteration")
            row[f"iterations_to_{f:g}x"] = it
            row[f"images_to_{f:g}x"] = None if it is None else it * t["batch_size"]
            row[f"wallclock_to_{f:g}x"] = first_at(mean, level, "wall_clock_s")
            row[f"seeds_reaching_{f:g}x"] = int(sum(
                first_at(g, level, "iteration") is not None for _, g in sub.groupby("seed")))
        rows.append(row)
    return rows


def _fmt(v, nd=3) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{nd}g}"


def plot(curves: pd.DataFrame, teachers: dict, file: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = list(curves.groupby(["dataset", "loss", "recipe"], sort=False))
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, ((data, loss, recipe), sub) in zip(axes.flat, panels):
        for method, g in sorted(sub.groupby("method"), key=lambda kv: list(METHODS).index(kv[0])):
            m = g.groupby("iteration")["quality"].agg(["mean", "std"]).reset_index()
            color = f"C{list(METHODS).index(method)}"  # one colour per method in every panel
            ax.plot(m["iteration"], m["mean"], label=method, color=color)
            ax.fill_between(m["iteration"], m["mean"] - m["std"].fillna(0), m["mean"] + m["std"].fillna(0), alpha=0.2,
                            color=color)
        ax.axhline(teachers[data]["teacher_quality"], color="k", ls="--", lw=0.8, label="teacher")
        ax.set_yscale("log")
        short = ", ".join(f"{k.split('.')[-1]}={v}" for k, _, v in (i.partition("=") for i in recipe.split(","))
                          if k != "backtracking.lr_fake")  # lr_fake follows lr_generator in the map
        ax.set_title(f"{data} / {loss}" + ("" if recipe == "default" else f": {short}"), fontsize=8)
        ax.set_xlabel("generator iteration")
        ax.set_ylabel(teachers[data]["metric"])
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(file, dpi=90)
    plt.close(fig)


def merge(out: Path, parts: list[Path]) -> list[dict]:
    curves = pd.concat([pd.read_csv(p / "curves.csv") for p in parts], ignore_index=True)
    teachers: dict = {}
    for p in parts:
        teachers.update(json.loads((p / "teachers.json").read_text()))
    rows = summarise(curves, teachers)
    out.mkdir(parents=True, exist_ok=True)
    curves.to_csv(out / "longrun_curves.csv", index=False)
    (out / "longrun.json").write_text(json.dumps(rows, indent=2))
    plot(curves, teachers, out / "longrun.png")
    write_tables(out / "LONGRUN_TABLES.md", rows)
    return rows


def write_tables(file: Path, rows: list[dict]) -> None:
    lines = [f"Machine: {platform.machine()}, {os.cpu_count()} cores, CPU only, torch {torch.__version__}.", "",
             "| data | loss | method | recipe | seeds | iterations | teacher | final (mean +- std) | ratio | "
             "flatness | off-mode mass | mode std | it to 5x | it to 2x | it to 1.5x | wall s to 2x (stage 1 "
             "counted) | seeds at 2x |", "|" + "---|" * 17]
    for r in rows:
        lines.append(
            f"| {r['data']} | {r['loss']} | {r['method']} | {r['recipe']} | {r['seeds']} | {r['iterations']} | "
            f"{_fmt(r['teacher_quality'])} | {_fmt(r['final_quality_mean'])} +- {_fmt(r['final_quality_std'], 2)} | "
            f"{_fmt(r['final_quality_mean'] / r['teacher_quality'])} | {_fmt(r['flatness_last_quarter'], 2)} | "
            f"{_fmt(r.get('final_off_mode_mass'))} | {_fmt(r.get('final_mode_std'))} | "
            f"{_fmt(r['iterations_to_5x'])} | {_fmt(r['iterations_to_2x'])} | {_fmt(r['iterations_to_1.5x'])} | "
            f"{_fmt(r['wallclock_to_2x'])} | {r['seeds_reaching_2x']}/{r['seeds']} |")
    kept = [r for r in rows if "kept_quality_mean" in r]
    if kept:
        lines += ["", "Kept generator (`keep: best`): per seed, the EMA generator of the evaluation with the lowest "
                  "quality on held-out latents, scored on the evaluation's own latents.", "",
                  "| data | loss | method | recipe | final (mean +- std) | kept (mean +- std) | kept / teacher | "
                  "kept at iterations |", "|" + "---|" * 8]
        lines += [f"| {r['data']} | {r['loss']} | {r['method']} | {r['recipe']} | "
                  f"{_fmt(r['final_quality_mean'])} +- {_fmt(r['final_quality_std'], 2)} | "
                  f"{_fmt(r['kept_quality_mean'])} +- {_fmt(r['kept_quality_std'], 2)} | "
                  f"{_fmt(r['kept_quality_mean'] / r['teacher_quality'])} | "
                  f"{', '.join(map(str, r['kept_iterations']))} |" for r in kept]
    lines += robustness_table(rows, "2x") + robustness_table(rows, "10x")
    file.write_text("\n".join(lines) + "\n")


def _recipe_value(recipe: str, key: str) -> str | None:
    for item in recipe.split(","):
        k, _, v = item.partition("=")
        if k == key:
            return v
    return None


def robustness_table(rows: list[dict], level: str = "2x") -> list[str]:
    """Per (data, loss, method): a learning-rate x s_init grid of seeds reaching ``level`` x the teacher's
    quality, with the iterations the mean curve needed and the final quality (recipes that set both)."""
    grid = [r for r in rows if _recipe_value(r["recipe"], "backtracking.lr_generator") is not None
            and _recipe_value(r["recipe"], "backtracking.s_init") is not None]
    if not grid:
        return []
    out = ["", f"Robustness map: seeds reaching {level} the teacher's quality / seeds, (iterations the mean "
           "curve needed), final mean quality; rows learning rate (both networks), columns s_init.", ""]
    for key in dict.fromkeys((r["data"], r["loss"], r["method"]) for r in grid):
        cells = {(_recipe_value(r["recipe"], "backtracking.lr_generator"),
                  _recipe_value(r["recipe"], "backtracking.s_init")): r
                 for r in grid if (r["data"], r["loss"], r["method"]) == key}
        lrs = sorted({k[0] for k in cells}, key=float)
        inits = sorted({k[1] for k in cells}, key=float)
        out += [f"{key[0]} / {key[1]} / {key[2]}:", "", "| lr (rows) / s_init | " + " | ".join(inits) + " |",
                "|---|" + "---|" * len(inits)]
        for lr in lrs:
            row = []
            for s_init in inits:
                r = cells.get((lr, s_init))
                row.append("-" if r is None else f"{r[f'seeds_reaching_{level}']}/{r['seeds']} "
                           f"({_fmt(r[f'iterations_to_{level}'])}), {_fmt(r['final_quality_mean'])}")
            out.append(f"| {lr} | " + " | ".join(row) + " |")
        out.append("")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--datasets", default="ring")
    ap.add_argument("--losses", default="di,dmd,sid")
    ap.add_argument("--methods", default="baseline,fixed,adaptive")
    ap.add_argument("--seeds", type=int, default=3)
    add_run_options(ap, teacher_cache=".bench/cache")
    ap.add_argument("--part", default="1/1", help="k/n: run every n-th run of the plan, starting at the k-th")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=".bench/longrun/part")
    ap.add_argument("--merge", default="", help="comma-separated part folders to combine into --out")
    ap.add_argument("--teacher-only", action="store_true", help="train and cache the data sets' teachers, then stop")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.merge:
        rows = merge(Path(args.out), [Path(p) for p in args.merge.split(",")])
        log.info("merged %d rows into %s", len(rows), args.out)
        return 0
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        with np.errstate(all="ignore"):
            if args.teacher_only:
                for data in args.datasets.split(","):
                    setup(data, args)
            else:
                run_part(args)
    finally:  # a caller in the same process (the tests) keeps its thread count
        torch.set_num_threads(threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
