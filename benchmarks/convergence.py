"""Convergence benchmark: DisBack vs the baseline from the same teacher, over seeds.

    python benchmarks/convergence.py --datasets ring,grid,digits --losses di,dmd --seeds 5

For each data set one teacher is trained (its env's settings, seed 0); then for
every base loss and seed both methods run with identical settings (the env's
backtracking parameters; only ``enabled`` differs). Quality (reverse KL for
2-D mixtures, domain-FID for digits) is measured on the EMA generator every
``eval_every`` iterations. Writes ``curves.csv``, ``summary.csv``,
``results.json`` and ``RESULTS.md`` into ``--out``.

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
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from disback_pipeline.diffusion.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from disback_pipeline.diffusion.config import (  # noqa: E402
    DegradationConfig,
    DistillConfig,
    SamplerConfig,
    from_dict,
    soft_merge,
)
from disback_pipeline.diffusion.data import GaussianMixture2D, make_data_source  # noqa: E402
from disback_pipeline.diffusion.degradation import record_degradation  # noqa: E402
from disback_pipeline.diffusion.disback import Callbacks, distill  # noqa: E402
from disback_pipeline.diffusion.teacher import pretrain_teacher  # noqa: E402
from disback_pipeline.evaluation.convergence import first_reaching  # noqa: E402
from disback_pipeline.evaluation.features import (  # noqa: E402
    DomainClassifier,
    FeatureSpec,
    TrainedExtractor,
    train_domain_classifier,
)
from disback_pipeline.evaluation.quality import (  # noqa: E402
    quality,
    reference_statistics,
    sample_generator,
    sample_teacher,
)
from disback_pipeline.pipelines.reference.nodes import build_reference_stats  # noqa: E402

log = logging.getLogger("benchmarks.convergence")

# arm -> (backtracking enabled, overrides). ``disback_n1`` is the ablation's ingredient (b): the fake score
# starts from the end of the degradation path (N = 1) but the teacher is the only target.
ARMS = {"baseline": (False, {}), "disback": (True, {}), "disback_n1": (True, {"degradation": {"n_nodes": 1}})}


def env_params(env: str) -> dict:
    """The parameters ``kedro run --env ENV`` sees: conf/<env> soft-merged over conf/base (no conf/local)."""
    params: dict = {}
    for folder in ("base", env) if env != "base" else ("base",):
        for file in sorted((ROOT / "conf" / folder).glob("parameters_*.yml")):
            params = soft_merge(params, yaml.safe_load(file.read_text()))
    return params


DATASETS = {
    "ring": ("toy2d", {}),
    "grid": ("toy2d", {"layout": "grid", "size": 5, "spacing": 0.5, "std": 0.05}),
    "digits": ("base", {}),
    "crops16": ("crops16", {}),  # python -m disback_pipeline.crops data/01_raw/crops16 first
}


def domain_classifier(source, steps: int, teacher_cache: Path | None) -> TrainedExtractor:
    """The domain feature extractor (seed 0), kept beside the cached teacher so parallel runs train it once."""
    cache = teacher_cache.with_name(teacher_cache.name.replace("_teacher", "_domain")) if teacher_cache else None
    if cache is not None and cache.is_file():
        saved = torch.load(cache, map_location="cpu", weights_only=True)
        net = DomainClassifier(**saved["config"])
        net.load_state_dict(saved["state_dict"])
        return TrainedExtractor(net.eval(), saved["config"], saved["test_accuracy"])
    trained = train_domain_classifier(source, steps=steps, seed=0)
    if cache is not None:
        torch.save({"state_dict": trained.net.state_dict(), "config": trained.config,
                    "test_accuracy": trained.test_accuracy}, cache)
    return trained


def domain_features(source, p: dict, teacher_cache: Path | None) -> tuple[FeatureSpec, dict]:
    """The domain-FID extractor (kept beside ``teacher_cache``, see :func:`domain_classifier`) and the reference
    statistics under it, as the reference pipeline computes them (streamed; ``evaluation.reference_path``'s
    held-out images when the environment names a folder)."""
    trained = domain_classifier(source, int(p["evaluation"]["domain"]["steps"]), teacher_cache)
    features = FeatureSpec("domain", trained.net, trained.config, trained.test_accuracy)
    return features, build_reference_stats(features, p["data"], p["evaluation"])


def setup(name: str, args) -> dict:
    """Teacher (trained, or reused from --teacher-cache), feature extractor, reference statistics."""
    env, data_override = DATASETS[name]
    device = getattr(args, "device", "cpu")  # sweep.py places each run itself
    p = env_params(env)
    p["data"] = {**p["data"], **data_override}
    source = make_data_source(p["data"])
    t0 = time.perf_counter()
    training = {**p["teacher"]["training"], "log_every": 0}
    if args.teacher_steps:
        training["steps"] = args.teacher_steps
    cache = Path(args.teacher_cache) / f"{name}_teacher.pt" if args.teacher_cache else None
    if cache is not None and cache.is_file():  # shared by parallel runs of the same data set
        teacher = load_checkpoint(cache)
        teacher_s = float(teacher.metadata["train_seconds"])
    else:
        teacher, _ = pretrain_teacher(source, p["teacher"]["network"], training, seed=0, device=device)
        teacher_s = time.perf_counter() - t0
        if cache is not None:
            teacher.metadata["train_seconds"] = teacher_s
            save_checkpoint(teacher, cache)
    teacher.net.to(device)  # the teacher samples and serves as target on the runs' device
    if not isinstance(source, GaussianMixture2D):  # images: domain-FID
        features, reference = domain_features(source, p, cache)
        metric = "fid"
    else:
        features = FeatureSpec("none")
        x, _ = source.sample(10000, torch.Generator().manual_seed(1000))
        reference = reference_statistics(features.extract(x))
        metric = "reverse_kl"
    n_eval = args.proxy_samples or int(p["backtracking"]["proxy_samples"])
    x_t, tps_t = sample_teacher(teacher.net, source, n_eval, 0, from_dict(SamplerConfig, p["shared"]["sampler"]))
    teacher_quality = quality(x_t, source, features, reference)[metric]
    return {"params": p, "source": source, "teacher": teacher, "teacher_s": teacher_s, "features": features,
            "reference": reference, "metric": metric, "n_eval": n_eval, "teacher_quality": teacher_quality,
            "teacher_samples_per_s": tps_t}


def run_one(ctx: dict, loss: str, seed: int, enabled: bool, args, overrides: dict | None = None,
            device: str = "cpu", extra_metrics: tuple[str, ...] = ()) -> pd.DataFrame:
    """One distillation run; ``overrides`` = {"backtracking": {...}, "degradation": {...}} on top of conf.

    ``extra_metrics`` (e.g. off_mode_mass) are recorded beside ``quality`` at every evaluation."""
    p, source = ctx["params"], ctx["source"]
    overrides = overrides or {}
    settings = {**p["backtracking"], "s_init": p["shared"]["s_init"], "loss": loss, "seed": seed,
                "enabled": enabled, "device": device,
                "log_every": 0, "eval_every": args.eval_every or p["backtracking"]["eval_every"],
                "record_every": 10 ** 9}
    if args.budget:
        settings["budget"] = args.budget
    settings = soft_merge(settings, overrides.get("backtracking", {}))
    cfg = from_dict(DistillConfig, settings, "backtracking")
    path, stage1 = None, 0.0
    if enabled:
        deg = from_dict(DegradationConfig, {**soft_merge(p["degradation"], overrides.get("degradation", {})),
                                            "seed": seed, "log_every": 0, "device": device}, "degradation")
        path, _ = record_degradation(ctx["teacher"], source, deg, cfg.s_init)
        stage1 = path.metadata["stage1_seconds"]

    select = bool(getattr(args, "select", False)) or cfg.keep == "best"

    def evaluate(gen):
        x, _ = sample_generator(gen, source, ctx["n_eval"], 0, cfg.s_init)
        q = quality(x, source, ctx["features"], ctx["reference"])
        out = {"quality": q[ctx["metric"]], **{k: q[k] for k in extra_metrics if k in q}}
        if select:  # the held-out proxy that picks the kept generator: other latents (seed 1), same count
            xs, _ = sample_generator(gen, source, ctx["n_eval"], 1, cfg.s_init)
            out["select_quality"] = quality(xs, source, ctx["features"], ctx["reference"], 1)[ctx["metric"]]
        return out

    res = distill(ctx["teacher"], source, path, cfg, time_offset=stage1,
                  callbacks=Callbacks(evaluate=evaluate, select_by="select_quality" if select else None))
    rows = pd.DataFrame([r for r in res.history if "quality" in r])  # wall-clock excludes evaluation time
    rows["stage1_s"] = stage1
    keep = ["iteration", "wall_clock_s", "target", "switch_reason", "score_mismatch", "quality", "stage1_s"]
    return rows[keep + [k for k in (*extra_metrics, "select_quality") if k in rows]]


def parse_set(items: list[str]) -> dict:
    """``stage.key=value`` (YAML value) -> {"backtracking": {...}, "degradation": {...}}."""
    out: dict = {}
    for item in items:
        key, eq, value = item.partition("=")
        stage, _, name = key.partition(".")
        if stage not in ("backtracking", "degradation") or not name or not eq:
            raise SystemExit(f"--set needs backtracking.KEY=VALUE or degradation.KEY=VALUE, got {item!r}")
        node = out.setdefault(stage, {})
        *parents, leaf = name.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = yaml.safe_load(value)
    return out


def arm_summary(mean_curve: pd.DataFrame, finals: pd.Series, target: float, ref_it: float, ref_wc: float) -> dict:
    """One arm against a reference: speed-ups to reach ``target`` (the reference got there at ``ref_it`` iterations
    and ``ref_wc`` seconds), final quality over seeds and the mean curve's average over training."""
    it = first_reaching(mean_curve, "quality", target, "iteration")
    wc = first_reaching(mean_curve, "quality", target, "wall_clock_s")
    return {"speedup_iterations": None if math.isnan(it) else ref_it / it,
            "speedup_wallclock": None if math.isnan(wc) else ref_wc / wc,
            "final_mean": float(finals.mean()), "final_std": float(finals.std()), "seeds": int(finals.size),
            "mean_over_training": float(mean_curve["quality"].mean())}


def summarise(curves: pd.DataFrame, ctx: dict, name: str, loss: str, levels) -> dict:
    sub = curves[(curves.dataset == name) & (curves.loss == loss)]
    mean = sub.groupby(["method", "iteration"]).agg(quality=("quality", "mean"),
                                                    wall_clock_s=("wall_clock_s", "mean")).reset_index()
    base = mean[mean.method == "baseline"]
    target = float(base["quality"].iloc[-1])
    b_it = first_reaching(base, "quality", target, "iteration")
    b_wc = first_reaching(base, "quality", target, "wall_clock_s")
    finals = sub.sort_values("iteration").groupby(["method", "seed"])["quality"].last()
    arms = list(dict.fromkeys(sub["method"]))
    per_level = {}
    for level in levels:
        for method in arms:
            its = [first_reaching(g, "quality", level, "iteration")
                   for _, g in sub[sub.method == method].groupby("seed")]
            reached = [i for i in its if not math.isnan(i)]
            per_level[f"{method}@{level:g}"] = {"median_iterations": float(np.median(reached)) if reached else None,
                                                "seeds_reached": len(reached), "seeds": len(its)}
    ablation = {}
    for arm in arms:
        mism = sub[sub.method == arm].groupby("iteration")["score_mismatch"].mean()
        ablation[arm] = {**arm_summary(mean[mean.method == arm], finals[arm], target, b_it, b_wc),
                         "score_mismatch": {str(int(i)): float(mism.loc[i]) for i in _spread(mism.index)}}
    base_s, dis_s = ablation["baseline"], ablation["disback"]
    return {
        "metric": ctx["metric"], "target_quality": target, "arms": ablation,
        "speedup_iterations": dis_s["speedup_iterations"], "speedup_wallclock": dis_s["speedup_wallclock"],
        "final_quality_baseline": base_s["final_mean"], "final_quality_baseline_std": base_s["final_std"],
        "final_quality_disback": dis_s["final_mean"], "final_quality_disback_std": dis_s["final_std"],
        "teacher_quality": ctx["teacher_quality"],
        "levels": per_level,
    }


def _spread(index, k: int = 5) -> list:
    """``k`` evaluation iterations spread over the run (first, ..., last)."""
    idx = list(index)
    return sorted({idx[round(i * (len(idx) - 1) / (k - 1))] for i in range(k)}) if idx else []


def add_run_options(ap: argparse.ArgumentParser, teacher_cache: str) -> None:
    """The options that :func:`setup` and :func:`run_one` read (shared with longrun.py)."""
    ap.add_argument("--budget", type=int, default=0, help="override backtracking.budget (0 = env value)")
    ap.add_argument("--eval-every", type=int, default=0, help="override backtracking.eval_every (0 = env value)")
    ap.add_argument("--proxy-samples", type=int, default=0, help="override backtracking.proxy_samples (0 = env value)")
    ap.add_argument("--teacher-steps", type=int, default=0, help="override teacher.training.steps (smoke runs)")
    ap.add_argument("--teacher-cache", default=teacher_cache, help="folder to keep/reuse each data set's teacher")
    ap.add_argument("--set", action="append", default=[], help="stage.key=value on top of conf for every run")
    ap.add_argument("--device", default="cpu", help="cpu or cuda: teacher pre-training, stage 1 and stage 2")
    ap.add_argument("--select", action="store_true",
                    help="also evaluate on held-out latents (seed 1) at every evaluation, to report the generator "
                         "a keep-best run would hand on (scored on the evaluation's own latents)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--datasets", default="ring,grid,digits")
    ap.add_argument("--losses", default="di,dmd")
    ap.add_argument("--seeds", type=int, default=5)
    add_run_options(ap, teacher_cache="")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    ap.add_argument("--arms", default="baseline,disback,disback_n1",
                    help="comma-separated: baseline, disback, disback_n1 (ablation: fake score from P_N, N = 1)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks"))
    ap.add_argument("--merge", default="", help="comma-separated folders of parallel runs to combine into --out")
    ap.add_argument("--merge-commands", default="", help="';'-separated commands of the merged runs")
    ap.add_argument("--merge-minutes", type=float, default=0.0, help="wall time of the merged runs")
    args = ap.parse_args(argv)
    if args.merge:
        merge(Path(args.out), [Path(p) for p in args.merge.split(",")],
              [c.strip() for c in args.merge_commands.split(";") if c.strip()], args.merge_minutes * 60)
        return 0
    arms = args.arms.split(",")
    if "baseline" not in arms or "disback" not in arms or any(a not in ARMS for a in arms):
        ap.error(f"--arms needs baseline and disback, from {list(ARMS)}; got {arms}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    frames, results, settings = [], {}, {}
    for name in args.datasets.split(","):
        ctx = setup(name, args)
        for loss in args.losses.split(","):
            for seed in range(args.seeds):
                for arm in arms:
                    t = time.perf_counter()
                    enabled, overrides = ARMS[arm]
                    rows = run_one(ctx, loss, seed, enabled, args, soft_merge(parse_set(args.set), overrides),
                                   device=args.device)
                    rows.insert(0, "dataset", name)
                    rows.insert(1, "loss", loss)
                    rows.insert(2, "method", arm)
                    rows.insert(3, "seed", seed)
                    frames.append(rows)
                    pd.concat(frames, ignore_index=True).to_csv(out / "curves.csv", index=False)
                    log.info("%s %s seed %d %s: final %s %.4g (%.0f s)", name, loss, seed, arm, ctx["metric"],
                             rows["quality"].iloc[-1], time.perf_counter() - t)
            curves = pd.concat(frames, ignore_index=True)
            levels = sorted({round(ctx["teacher_quality"] * f, 4) for f in (1.5, 3.0, 10.0)})
            s = summarise(curves, ctx, name, loss, levels)
            # one-step throughput vs the teacher, same batch, same process
            x, tps_student = sample_generator(ctx["teacher"].net, ctx["source"], ctx["n_eval"], 0,
                                              float(ctx["params"]["shared"]["s_init"]), batch_size=ctx["n_eval"])
            s["throughput_ratio"] = tps_student / ctx["teacher_samples_per_s"]
            results.setdefault(name, {})[loss] = s
            settings[name] = describe(name, ctx, args)
            (out / "results.json").write_text(json.dumps(results, indent=2))
            (out / "settings.json").write_text(json.dumps(settings, indent=2))
    write_report(out, results, settings, command(args), time.perf_counter() - started)
    return 0


def describe(name: str, ctx: dict, args) -> str:
    p = ctx["params"]
    return (f"{name}: teacher trained in {ctx['teacher_s']:.0f} s (teacher {ctx['metric']} "
            f"{ctx['teacher_quality']:.4g} at NFE {p['shared']['sampler']['nfe']}); settings from conf "
            f"(`{DATASETS[name][0]}` env): budget {args.budget or p['backtracking']['budget']}, "
            f"K2 {p['backtracking']['k2']}, N {p['degradation']['n_nodes']}, K1 {p['degradation']['k1']}, "
            f"spacing {p['degradation']['spacing']}, lr {p['backtracking']['lr_generator']}, "
            f"batch {p['backtracking']['batch_size']}, r {p['backtracking']['fake_steps']}, "
            f"s_init {p['shared']['s_init']}, eval every {args.eval_every or p['backtracking']['eval_every']} "
            f"iterations on {ctx['n_eval']} samples.")


def command(args) -> str:
    return " ".join(["python benchmarks/convergence.py", f"--datasets {args.datasets}", f"--losses {args.losses}",
                     f"--seeds {args.seeds}"] + ([f"--budget {args.budget}"] if args.budget else [])
                    + ([f"--eval-every {args.eval_every}"] if args.eval_every else [])
                    + ([f"--threads {args.threads}"] if args.threads else []))


def merge(out: Path, parts: list[Path], commands: list[str], total_s: float) -> None:
    """Combine the outputs of runs made in parallel (one folder each) into one report."""
    results, settings = {}, {}
    frames = []
    for part in parts:
        for name, per_loss in json.loads((part / "results.json").read_text()).items():
            results.setdefault(name, {}).update(per_loss)
        settings.update(json.loads((part / "settings.json").read_text()))
        frames.append(pd.read_csv(part / "curves.csv"))
    pd.concat(frames, ignore_index=True).to_csv(out / "curves.csv", index=False)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    write_report(out, results, settings, "`; `".join(commands), total_s)


def _fmt(v, nd=3):
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{nd}g}"


def write_report(out: Path, results: dict, settings: dict, cmd: str, total_s: float) -> None:
    lines = ["# Convergence benchmark: DisBack vs baseline", "",
             f"Command(s): `{cmd}`  ", f"Machine: {platform.machine()}, {os.cpu_count()} cores, CPU only, Python "
             f"{platform.python_version()}, torch {torch.__version__}. Wall time {total_s / 60:.0f} min.",
             "", "Speed-up = baseline iterations (or wall-clock, stage 1 counted) to reach its own final "
             "mean quality / DisBack's to reach the same; quality is the mean over seeds at each evaluation "
             "(lower is better); n/a = DisBack never reached it.", "",
             "| data | loss | metric | teacher | baseline final (mean +- std) | DisBack final | speed-up (it) | "
             "speed-up (wall, stage 1 counted) | one-step / teacher throughput |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, per_loss in results.items():
        for loss, s in per_loss.items():
            lines.append(f"| {name} | {loss} | {s['metric']} | {_fmt(s['teacher_quality'])} | "
                         f"{_fmt(s['final_quality_baseline'])} +- {_fmt(s['final_quality_baseline_std'], 2)} | "
                         f"{_fmt(s['final_quality_disback'])} +- {_fmt(s['final_quality_disback_std'], 2)} | "
                         f"{_fmt(s['speedup_iterations'])} | {_fmt(s['speedup_wallclock'])} | "
                         f"{_fmt(s['throughput_ratio'])}x |")
    lines += ["", "Iterations each method needs to reach fixed quality levels (median over the seeds that got "
              "there; seeds reached / seeds):", "",
              "| data | loss | level | baseline | DisBack | DisBack N = 1 (ablation) |", "|---|---|---|---|---|---|"]
    for name, per_loss in results.items():
        for loss, s in per_loss.items():
            levels = sorted({float(k.split("@")[1]) for k in s["levels"]})
            for level in levels:
                cells = []
                for arm in ("baseline", "disback", "disback_n1"):
                    c = s["levels"].get(f"{arm}@{level:g}")
                    cells.append("-" if c is None else
                                 f"{_fmt(c['median_iterations'])} ({c['seeds_reached']}/{c['seeds']})")
                lines.append(f"| {name} | {loss} | {level:g} | " + " | ".join(cells) + " |")
    lines += ["", "Ablation: (a) the baseline; (b) `disback_n1`, the fake score initialised from the end of the "
              "degradation path (N = 1) with the teacher as the only target; (c) `disback`, the full walk down the "
              "path (conf N and K2; other N and K2 in the sweep). Speed-up against the baseline's final mean "
              "quality, as above; mean over training = the mean curve averaged over all evaluations (lower = good "
              "sooner).", "",
              "| data | loss | arm | final (mean +- std) | mean over training | speed-up (it) | speed-up (wall) |",
              "|---|---|---|---|---|---|---|"]
    for name, per_loss in results.items():
        for loss, s in per_loss.items():
            for arm, a in s.get("arms", {}).items():
                lines.append(f"| {name} | {loss} | {arm} | {_fmt(a['final_mean'])} +- {_fmt(a['final_std'], 2)} | "
                             f"{_fmt(a['mean_over_training'])} | {_fmt(a['speedup_iterations'])} | "
                             f"{_fmt(a['speedup_wallclock'])} |")
    lines += ["", "Score mismatch ||D_fake - D_target||^2 on generated samples (mean over seeds) at five points of "
              "the run (iteration: value):", "", "| data | loss | arm | score mismatch |", "|---|---|---|---|"]
    for name, per_loss in results.items():
        for loss, s in per_loss.items():
            for arm, a in s.get("arms", {}).items():
                pts = ", ".join(f"{k}: {_fmt(v)}" for k, v in a["score_mismatch"].items())
                lines.append(f"| {name} | {loss} | {arm} | {pts} |")
    lines += ["", "Per-evaluation curves (every seed, every arm, score mismatch included): `curves.csv`; "
              "machine-readable summary: `results.json`.", ""]
    lines += [f"- {text}" for text in settings.values()]
    (out / "RESULTS.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
