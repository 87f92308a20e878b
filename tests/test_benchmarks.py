"""The benchmark scripts: their summaries compute what RESULTS.md and SWEEP.md claim."""

import json
import sys
from pathlib import Path

import pandas as pd
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import convergence  # noqa: E402
import sweep  # noqa: E402


def _curve(config, method, seed, qualities, seconds_per_it=0.01, stage1=0.0, device="cpu"):
    its = [100 * (i + 1) for i in range(len(qualities))]
    return pd.DataFrame({"dataset": "ring", "loss": "di", "config": config, "method": method, "seed": seed,
                         "device": device, "iteration": its, "quality": qualities,
                         "wall_clock_s": [stage1 + seconds_per_it * i for i in its], "score_mismatch": 0.1,
                         "teacher_quality": 0.2, "metric": "reverse_kl", "stage1_s": stage1})


def test_sweep_speedup_is_against_the_default_baseline_final_quality():
    curves = pd.concat([
        _curve("default", "baseline", 0, [10, 8, 6, 5]),
        _curve("default", "baseline", 1, [10, 8, 6, 5]),
        _curve("r_5", "disback", 0, [9, 4, 3, 2], seconds_per_it=0.03, stage1=1.0),
        _curve("r_5", "disback", 1, [9, 6, 3, 4], seconds_per_it=0.03, stage1=1.0),
        _curve("N_1", "disback", 0, [12, 11, 10, 9]),
    ], ignore_index=True)
    rows = {(r["config"], r["method"]): r for r in sweep.summarise(curves)}
    ref = rows["default", "baseline"]
    assert ref["target_quality"] == 5 and ref["speedup_iterations"] == 1
    fast = rows["r_5", "disback"]
    # mean curve 9, 5, 3, 3: reaches 5 at iteration 200 vs the baseline's 400
    assert fast["speedup_iterations"] == pytest.approx(2.0)
    # wall-clock: baseline 4.0 s; r_5 reaches it at 1.0 + 0.03 * 200 = 7.0 s
    assert fast["speedup_wallclock"] == pytest.approx(4.0 / 7.0)
    assert fast["final_mean"] == pytest.approx(3.0) and fast["seeds"] == 2
    assert rows["N_1", "disback"]["speedup_iterations"] is None  # never reaches 5


def test_spread_picks_first_and_last_evaluation():
    assert convergence._spread(range(100, 3001, 100)) == [100, 800, 1500, 2300, 3000]
    assert convergence._spread([100, 200]) == [100, 200]


@pytest.mark.slow
def test_convergence_script_writes_every_arm(tmp_path):
    out = tmp_path / "bench"
    assert convergence.main(["--datasets", "ring", "--losses", "di", "--seeds", "1", "--budget", "20",
                             "--eval-every", "10", "--teacher-steps", "20", "--proxy-samples", "200",
                             "--teacher-cache", str(tmp_path / "cache"), "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())["ring"]["di"]
    assert set(res["arms"]) == {"baseline", "disback", "disback_n1"}
    assert res["metric"] == "reverse_kl" and res["throughput_ratio"] > 1
    curves = pd.read_csv(out / "curves.csv")
    assert sorted(curves["method"].unique()) == ["baseline", "disback", "disback_n1"]
    assert (curves.groupby("method")["iteration"].max() == 20).all()
    # DisBack's wall clock starts after stage 1; the baseline has none
    assert (curves[curves.method == "disback"]["stage1_s"] > 0).all()
    assert (curves[curves.method == "baseline"]["stage1_s"] == 0).all()
    report = (out / "RESULTS.md").read_text()
    assert "Ablation" in report and "disback_n1" in report and "Score mismatch" in report
