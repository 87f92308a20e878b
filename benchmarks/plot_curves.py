"""Quality-vs-iteration, quality-vs-wall-clock and score-mismatch curves from a benchmark's curves.csv.

    python benchmarks/plot_curves.py [benchmarks/curves.csv] [benchmarks/curves.png]

One row per (data set, base loss); mean over seeds as a line, mean +- one standard
deviation as a band. The wall-clock axis includes stage 1 for the DisBack arms.
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

COLOURS = {"baseline": "tab:blue", "disback": "tab:red", "disback_n1": "tab:green"}


def plot(curves: pd.DataFrame, out: Path) -> None:
    panels = list(curves.groupby(["dataset", "loss"], sort=False).groups)
    fig, axes = plt.subplots(len(panels), 3, figsize=(15, 3.2 * len(panels)), squeeze=False)
    for row, (name, loss) in zip(axes, panels):
        sub = curves[(curves.dataset == name) & (curves.loss == loss)]
        metric = "FID" if name == "digits" else "reverse KL"
        for method, g in sub.groupby("method", sort=False):
            stats = g.groupby("iteration").agg(q=("quality", "mean"), qs=("quality", "std"),
                                               w=("wall_clock_s", "mean"), m=("score_mismatch", "mean"))
            c = COLOURS.get(method, "black")
            for ax, x in ((row[0], stats.index), (row[1], stats["w"])):
                ax.plot(x, stats["q"], color=c, label=method)
                ax.fill_between(x, (stats["q"] - stats["qs"]).clip(lower=1e-3), stats["q"] + stats["qs"],
                                color=c, alpha=0.15)
            row[2].plot(stats.index, stats["m"], color=c, label=method)
        for ax, xl, yl in ((row[0], "generator iteration", metric), (row[1], "wall-clock s (stage 1 counted)",
                                                                       metric),
                           (row[2], "generator iteration", "score mismatch")):
            ax.set_yscale("log")
            ax.set_xlabel(xl)
            ax.set_ylabel(yl)
            ax.set_title(f"{name} / {loss}")
            ax.grid(alpha=0.3)
        row[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=80)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    here = Path(__file__).resolve().parent
    src = Path(argv[0]) if argv else here / "curves.csv"
    out = Path(argv[1]) if len(argv) > 1 else src.with_suffix(".png")
    plot(pd.read_csv(src), out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
