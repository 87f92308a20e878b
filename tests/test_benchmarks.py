"""The benchmark scripts: their summaries compute what RESULTS.md and SWEEP.md claim."""

import json
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

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


# small stage-1 and batch settings: the scripts' plumbing is under test here, not the method
SMALL = ["--set", "degradation.k1=12", "--set", "degradation.candidates=6", "--set", "degradation.probe_size=64",
         "--set", "degradation.batch_size=32", "--set", "backtracking.batch_size=32"]


@pytest.mark.slow
def test_convergence_script_writes_every_arm(tmp_path):
    out = tmp_path / "bench"
    assert convergence.main(["--datasets", "ring", "--losses", "di", "--seeds", "1", "--budget", "20",
                             "--eval-every", "10", "--teacher-steps", "20", "--proxy-samples", "200",
                             "--teacher-cache", str(tmp_path / "cache"), "--out", str(out), *SMALL]) == 0
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


def test_longrun_parts_resume_and_merge(tmp_path):
    import longrun

    common = ["--datasets", "ring", "--losses", "di,sid", "--methods", "baseline,adaptive", "--seeds", "1",
              "--budget", "20", "--eval-every", "10", "--teacher-steps", "20", "--proxy-samples", "200",
              "--teacher-cache", str(tmp_path / "cache"), *SMALL]
    for k in (1, 2):
        assert longrun.main([*common, "--part", f"{k}/2", "--out", str(tmp_path / f"p{k}")]) == 0
    first = pd.read_csv(tmp_path / "p1" / "curves.csv")
    assert set(map(tuple, first[["loss", "method"]].drop_duplicates().to_numpy())) == {("di", "baseline"),
                                                                                     ("sid", "baseline")}
    # a re-run of a finished part runs nothing again
    assert longrun.main([*common, "--part", "1/2", "--out", str(tmp_path / "p1")]) == 0
    assert len(pd.read_csv(tmp_path / "p1" / "curves.csv")) == len(first)
    assert longrun.main(["--merge", f"{tmp_path / 'p1'},{tmp_path / 'p2'}", "--out", str(tmp_path / "m")]) == 0
    rows = json.loads((tmp_path / "m" / "longrun.json").read_text())
    assert {(r["loss"], r["method"]) for r in rows} == {("di", "baseline"), ("di", "adaptive"), ("sid", "baseline"),
                                                        ("sid", "adaptive")}
    for r in rows:
        assert r["recipe"].endswith(",budget=20")  # --budget is named, so runs that differ only in budget stay apart
        assert r["seeds"] == 1 and r["iterations"] == 20 and r["teacher_quality"] > 0
        assert {"final_quality_mean", "final_quality_std", "iterations_to_1.5x", "wallclock_to_1.5x",
                "final_off_mode_mass"} <= set(r)
        assert 0 <= r["final_off_mode_mass"] <= 1  # (mode_std appears once some samples sit near a mode)
    assert (tmp_path / "m" / "longrun.png").stat().st_size > 1000


def test_longrun_recipe_names_sets_and_budget():
    import longrun

    assert longrun.recipe_name([]) == "default"
    assert longrun.recipe_name(["b.y=2", "b.x=1"]) == "b.x=1,b.y=2"
    assert longrun.recipe_name(["b.x=1"], 600) == "b.x=1,budget=600"
    assert longrun.recipe_name([], 600) == "budget=600"


def test_longrun_summary_levels_and_flatness():
    import longrun

    curves = pd.concat([_curve("default", m, s, q) for m, qs in
                        (("baseline", [(2.0, 1.0, 0.5, 0.45), (2.2, 1.2, 0.6, 0.55)]),
                         ("fixed", [(1.0, 0.4, 0.3, 0.3), (1.0, 0.5, 0.3, 0.3)])) for s, q in enumerate(qs)])
    curves = curves.rename(columns={"config": "recipe"})
    rows = {r["method"]: r for r in longrun.summarise(curves, {"ring": {"metric": "reverse_kl",
                                                                        "teacher_quality": 0.2, "batch_size": 10}})}
    base, fixed = rows["baseline"], rows["fixed"]
    # mean curves: baseline 2.1, 1.1, 0.55, 0.5; fixed 1.0, 0.45, 0.3, 0.3 (teacher 0.2: 5x = 1.0, 2x = 0.4, 1.5x = 0.3)
    assert base["iterations_to_5x"] == 300 and base["iterations_to_2x"] is None
    assert fixed["iterations_to_5x"] == 100 and fixed["iterations_to_2x"] == 300 and fixed["iterations_to_1.5x"] == 300
    assert fixed["images_to_2x"] == 3000 and fixed["seeds_reaching_2x"] == 2 and base["seeds_reaching_5x"] == 2
    assert base["final_quality_mean"] == pytest.approx(0.5) and fixed["final_quality_std"] == 0.0
    # flatness over the last quarter: baseline (0.55 - 0.5) / 0.5 = 0.1, fixed 0
    assert base["flatness_last_quarter"] == pytest.approx(0.1) and fixed["flatness_last_quarter"] == 0.0


def test_longrun_kept_generator_is_picked_on_held_out_latents_and_scored_on_the_evaluation_s(tmp_path):
    import longrun

    a = _curve("default", "baseline", 0, [3.0, 1.0, 2.0, 4.0]).assign(select_quality=[3.1, 1.4, 1.2, 4.2])
    b = _curve("default", "baseline", 1, [3.0, 2.0, 1.5, 1.0]).assign(select_quality=[3.0, 2.1, 1.6, 0.9])
    curves = pd.concat([a, b]).rename(columns={"config": "recipe"})
    (row,) = longrun.summarise(curves, {"ring": {"metric": "reverse_kl", "teacher_quality": 0.5, "batch_size": 10}})
    # seed 0: the held-out proxy picks iteration 300 (1.2), whose evaluation-latent quality is 2.0, not the curve's
    # best (1.0 at 200); seed 1: iteration 400 (1.0)
    assert row["kept_iterations"] == [300, 400] and row["kept_quality_mean"] == pytest.approx(1.5)
    assert row["final_quality_mean"] == pytest.approx(2.5)
    longrun.write_tables(tmp_path / "t.md", [row])
    table = (tmp_path / "t.md").read_text()
    assert "| ring | di | baseline | default | 2.5 +- 2.1 | 1.5 +- 0.71 | 3 | 300, 400 |" in table


def test_robustness_table_is_a_learning_rate_by_s_init_grid():
    import longrun

    def row(lr, s_init, reached, it):
        return {"data": "ring", "loss": "sid", "method": "fixed", "seeds": 2, "seeds_reaching_2x": reached,
                "iterations_to_2x": it, "final_quality_mean": 0.5,
                "recipe": f"backtracking.lr_fake={lr},backtracking.lr_generator={lr},backtracking.s_init={s_init}"}

    lines = longrun.robustness_table([row("1.0e-3", "2.5", 0, None), row("2.0e-4", "2.5", 2, 750.0),
                                      row("2.0e-4", "0.5", 1, None)])
    assert "ring / sid / fixed:" in lines and "| lr (rows) / s_init | 0.5 | 2.5 |" in lines
    assert "| 2.0e-4 | 1/2 (-), 0.5 | 2/2 (750), 0.5 |" in lines
    assert "| 1.0e-3 | - | 0/2 (-), 0.5 |" in lines
    assert longrun.robustness_table([{**row("1", "1", 0, None), "recipe": "default"}]) == []


def test_gpu_check_tiny_lane_on_the_cpu(capsys):
    """The GPU step benchmark's code path (--tiny, fp32 lane): throughput and FLOPs per iteration."""
    import gpu_check

    assert gpu_check.main(["--tiny", "--lanes", "fp32", "--iterations", "1", "--batch", "2"]) == 0
    (line,) = capsys.readouterr().out.strip().splitlines()
    result = json.loads(line)
    assert result["lane"] == "fp32" and result["device"] == "cpu" and result["iterations_per_s"] > 0
    # the step: a fake-score DSM step and a DMD generator step (fake and teacher forward, generator backward)
    assert result["flops_per_iteration"] > 1e8 and result["achieved_tflops"] > 0
    with pytest.raises(SystemExit):
        gpu_check.main(["--tiny", "--lanes", "fp16"])


def test_gpu_check_times_one_tree_a_process(tmp_path):
    """--src times another commit's code; this process already runs this checkout's, so another tree is refused
    by name instead of being timed as this one."""
    import gpu_check

    with pytest.raises(SystemExit, match="already imported from .*time another tree in a process of its own"):
        gpu_check.main(["--tiny", "--lanes", "fp32", "--src", str(tmp_path)])


def test_channels_last_changes_only_the_layout():
    """channels_last: the same state_dict keys (checkpoints load as before) and the same step up to rounding.
    compile: true is not run here (compiling takes about 100 s on this CPU); `gpu_check.py --tiny --lanes
    compile` ran it on the CPU (13.5 vs 12.9 iterations/s uncompiled), and the GPU lanes measure it."""
    import torch

    from disback_pipeline.diffusion.backbones import build_network
    from disback_pipeline.diffusion.checkpoint import Checkpoint
    from disback_pipeline.diffusion.data import load_digits_source
    from disback_pipeline.diffusion.disback import distill

    cfg = {"backbone": "unet", "sigma_data": 0.5, "model_channels": 8, "channel_mult": [1, 2], "num_blocks": 1,
           "attn_resolutions": [4], "dropout": 0.0, "in_channels": 1, "img_resolution": 8, "label_dim": 0}
    torch.manual_seed(0)
    teacher = Checkpoint(build_network(cfg), cfg, {})
    keys = list(teacher.net.state_dict())
    loop = {"budget": 2, "batch_size": 4, "device": "cpu", "log_every": 0, "eval_every": 0, "keep": "last"}
    plain = distill(teacher, load_digits_source(), None, loop)
    torch.manual_seed(0)
    teacher = Checkpoint(build_network(cfg), cfg, {})
    nhwc = distill(teacher, load_digits_source(), None, {**loop, "channels_last": True})
    assert list(nhwc.generator_ema.net.state_dict()) == keys
    for a, b in zip(plain.generator_ema.net.parameters(), nhwc.generator_ema.net.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)  # the same step up to the kernels' rounding


def test_the_t2i_memory_estimate_counts_what_peft_adds_and_the_published_unet_sizes(tmp_path):
    """benchmarks/t2i_memory.py: its adapter count equals the parameters peft adds to a UNet, its UNet configs give
    the published sizes (SD-1.5 859.52 M, SDXL 2,567.46 M), and the memory model is 44 bytes a trained parameter."""
    import t2i_memory

    from disback_pipeline.diffusion.adapters import trainable_copy, trained_state
    from disback_pipeline.diffusion.config import TrainedNetsConfig
    from disback_pipeline.diffusion.diffusers_teacher import VPDenoiser
    from disback_pipeline.tiny_t2i import tiny_unet

    unet = tiny_unet(conditional=True)
    net = trainable_copy(VPDenoiser(unet, torch.linspace(0.99, 0.01, 10)), TrainedNetsConfig(lora_rank=3), "cpu")
    assert t2i_memory.lora_params(unet, 3) == sum(v.numel() for v in trained_state(net).values())
    rows = {(r["unet"][:4], r["setting"]): r for r in t2i_memory.rows([4])}
    assert rows[("SD-1", "whole weights")]["params"] == 859_520_964
    assert rows[("SDXL", "whole weights")]["params"] == 2_567_463_684
    full, lora = rows[("SDXL", "whole weights")], rows[("SDXL", "LoRA rank 4")]
    assert full["bytes"] == 44 * full["params"] and lora["bytes"] == 4 * lora["params"] + 44 * lora["trained"]
    md = tmp_path / "doc.md"
    md.write_text("before\n<!-- memory -->\nold\n<!-- /memory -->\nafter\n")
    assert t2i_memory.main(["--ranks", "4", "--md", str(md)]) == 0
    text = md.read_text()
    assert "old" not in text and "| SDXL class (1024 px) | 2,567.5 M | LoRA rank 4 |" in text and "after" in text


def test_the_t2i_step_benchmark_runs_stage_2s_step_whole_and_through_lora():
    """benchmarks/t2i_step.py on the CPU (tiny UNet): the lanes build stage 2's networks as a run does, LoRA
    trains only the adapters, and every lane steps."""
    import t2i_step

    whole = t2i_step.run_lane("tiny", "full", batch=2, iterations=1, device="cpu")
    lora = t2i_step.run_lane("tiny", "lora+gc", batch=2, iterations=1, device="cpu")
    assert whole["trained_parameters"] == whole["unet_parameters"] == 63772
    assert lora["trained_parameters"] == t2i_memory_lora(64)
    assert not whole["oom"] and not lora["oom"] and lora["generated_images_per_s"] > 0


def t2i_memory_lora(rank: int) -> int:
    import t2i_memory

    from disback_pipeline.tiny_t2i import tiny_unet

    return t2i_memory.lora_params(tiny_unet(conditional=True), rank)


def test_crops16_report_counts_stage_1_for_disback_only_and_keeps_on_held_out_latents(tmp_path):
    import crops16_report

    def run(method, recipe, seed, qualities, proxies, stage1):
        return _curve("x", method, seed, qualities, seconds_per_it=0.5, stage1=stage1).assign(
            recipe=recipe, select_quality=proxies).drop(columns="config")

    r1, r2 = "backtracking.fake_steps=1,budget=300", "backtracking.fake_steps=2,budget=300"
    curves = pd.concat([run("baseline", r1, 0, [9.0, 5.0, 6.0], [9.0, 5.5, 5.0], 0.0),
                        run("baseline", r1, 1, [8.0, 7.0, 4.0], [8.0, 7.0, 4.5], 0.0),
                        run("fixed", r2, 0, [9.0, 3.0, 5.0], [9.0, 3.0, 6.0], 20.0)])
    counts = crops16_report.flop_counts("base", curves)  # digits: conf/base's networks, batch 64
    (s1_base, it1), (s1_fixed, it2) = counts[("baseline", r1)], counts[("fixed", r2)]
    assert s1_base == 0.0 and it1 == pytest.approx(18.5e9, rel=5e-3)  # benchmarks/STEP_COST.md's di, r = 1
    assert s1_fixed == pytest.approx(300 * 6.16e9, rel=5e-3)  # k1 = 300 teacher-sized steps of 6.16 GFLOP
    assert it2 > it1 + 3e9  # one more fake-score step
    teachers = {"ring": {"metric": "fid", "teacher_quality": 2.0, "n_eval": 500, "batch_size": 64}}
    base, fixed = crops16_report.summary(curves, counts, teachers)
    # baseline: seed 0 keeps iteration 300 (proxy 5.0; quality 6.0), seed 1 iteration 300 (4.0)
    assert base["kept_iterations"] == [300, 300] and base["kept_quality_mean"] == pytest.approx(5.0)
    assert base["final_quality_mean"] == pytest.approx(5.0) and base["tflop"] == pytest.approx(300 * it1 / 1e12)
    assert fixed["kept_iterations"] == [200] and fixed["kept_quality_mean"] == pytest.approx(3.0)
    assert fixed["tflop"] == pytest.approx((s1_fixed + 300 * it2) / 1e12) and fixed["seconds"] == pytest.approx(170)
    row = "| DisBack (fixed K2) | fake_steps=2, budget=300 | 1 | 5 +- 0 | 3 +- 0 | 1.5x | 200 |"
    assert row in crops16_report.table([base, fixed], 500)
    for method, part in curves.groupby("method"):  # the command: parts on disk -> comparison.md and .png
        (tmp_path / method).mkdir()
        part.to_csv(tmp_path / method / "curves.csv", index=False)
        (tmp_path / method / "teachers.json").write_text(json.dumps(teachers))
    crops16_report.main([str(tmp_path / "baseline"), str(tmp_path / "fixed"), "--env", "base", "--out",
                         str(tmp_path / "out")])
    assert row in (tmp_path / "out/comparison.md").read_text() and (tmp_path / "out/comparison.png").stat().st_size


def test_crops16_report_names_a_part_without_curves(tmp_path, capsys):
    import crops16_report

    with pytest.raises(SystemExit):
        crops16_report.main([str(tmp_path / "seeds_fixed"), "--out", str(tmp_path / "out")])
    assert "no curves.csv in" in capsys.readouterr().err and not (tmp_path / "out").exists()
