"""Cost of one step of each stage in FLOPs and seconds, from an environment's settings.

    python benchmarks/step_cost.py --env base --repeats 20 [--threads 1] [--out benchmarks/STEP_COST.md]

FLOPs are counted by torch.utils.flop_counter (matrix products and convolutions, forward and
backward); seconds are the median over ``--repeats`` timed steps after one warm-up. A machine's
seconds per step follow from its sustained FLOP/s, so the FLOPs tell how a default will fare on
a slower machine than the one that measured it.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from convergence import env_params  # noqa: E402

from disback_pipeline.diffusion.backbones import build_network  # noqa: E402
from disback_pipeline.diffusion.config import DistillConfig, from_dict  # noqa: E402
from disback_pipeline.diffusion.data import make_data_source  # noqa: E402
from disback_pipeline.diffusion.disback import _build_nets, fake_score_step, generator_step  # noqa: E402
from disback_pipeline.diffusion.losses import EDMLoss  # noqa: E402
from disback_pipeline.diffusion.sampling import heun_sampler  # noqa: E402
from disback_pipeline.diffusion.teacher import network_config_for  # noqa: E402
from disback_pipeline.diffusion.training import make_adam, mean_loss, train_step  # noqa: E402
from disback_pipeline.evaluation.features import DomainClassifier  # noqa: E402


def count_flops(step) -> float:
    """FLOPs of one call of ``step`` (forward and backward), by torch.utils.flop_counter."""
    with FlopCounterMode(display=False) as counter:
        step()
    return float(counter.get_total_flops())


def teacher_step(source, network: dict, batch: int):
    """One teacher DSM step at ``batch`` (Adam on a fresh network of ``network``), as a closure."""
    net = build_network(network_config_for(source, network)).train()
    opt = make_adam(net.parameters(), 1e-4)
    x, labels = source.sample(batch)
    return lambda: train_step(opt, mean_loss, EDMLoss(), net, x, labels, device=torch.device("cpu"))


def stage2_iteration(p: dict, source, teacher_net, overrides: dict):
    """(config, closure) of one stage-2 iteration (r fake-score steps, one generator step) with the environment's
    ``backtracking`` settings and ``overrides`` on top."""
    from disback_pipeline.diffusion.checkpoint import Checkpoint

    cfg = from_dict(DistillConfig, {**p["backtracking"], "s_init": p["shared"]["s_init"], "device": "cpu",
                                     **overrides}, "backtracking")
    dev = torch.device("cpu")
    nets = _build_nets(Checkpoint(teacher_net, {}, {}), source, None, cfg, dev)
    fake_loss, gen_loss = EDMLoss(), cfg.generator_loss()

    def iteration():
        for _ in range(cfg.fake_steps):
            fake_score_step(nets, fake_loss, source, cfg, dev)
        generator_step(nets, gen_loss, nets.teacher, source, cfg, dev)

    return cfg, iteration


def measure(step, repeats: int) -> tuple[float, float]:
    """(FLOPs of one call, median seconds over ``repeats`` calls after a warm-up)."""
    step()
    flops = count_flops(step)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return flops, statistics.median(times)


def evaluation_rows(p: dict, source, teacher_net, repeats: int) -> list[tuple]:
    """The evaluation's own compute: the teacher's Heun samples (final metrics and the report) and, for
    extractor = domain, the classifier behind domain-FID."""
    rows = []
    sampler = p["shared"]["sampler"]
    nb = 256
    noise = torch.randn(nb, *source.shape)
    sample_labels = source.sample(nb)[1]
    teacher_eval = copy.deepcopy(teacher_net).eval()
    n_draw = int(p["evaluation"]["n_samples"]) + int(p["teacher"]["report"]["num_samples"])

    def heun(net=teacher_eval):
        with torch.no_grad():
            heun_sampler(net, noise, sample_labels, nfe=int(sampler["nfe"]), sigma_min=sampler["sigma_min"],
                         sigma_max=sampler["sigma_max"], rho=sampler["rho"])

    rows.append((f"teacher Heun sampling (NFE {sampler['nfe']})", nb, *measure(heun, max(1, repeats // 5)),
                 math.ceil(n_draw / nb), True))
    if p["evaluation"]["extractor"] == "domain" and source.labels is not None:
        dom = DomainClassifier(source.shape[0], source.num_classes)
        dom_opt = torch.optim.Adam(dom.parameters(), lr=float(p["evaluation"]["domain"]["lr"]))
        db_ = int(p["evaluation"]["domain"]["batch_size"])
        xd, yd = source.take(torch.arange(db_))[0], source.labels[:db_]  # take(): streamed folders too

        def dom_step():
            loss = torch.nn.functional.cross_entropy(dom(xd), yd)
            dom_opt.zero_grad(set_to_none=True)
            loss.backward()
            dom_opt.step()

        rows.append(("domain classifier step", db_, *measure(dom_step, repeats),
                     int(p["evaluation"]["domain"]["steps"]), True))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--env", default="base")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", default="")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    p = env_params(args.env)
    source = make_data_source(p["data"])
    teacher_net = build_network(network_config_for(source, p["teacher"]["network"]))
    rows = []

    # rows: (step, batch, FLOPs, seconds, steps in the default run, whether the default run takes it)
    tb = int(p["teacher"]["training"]["batch_size"])
    rows.append(("teacher DSM step", tb, *measure(teacher_step(source, p["teacher"]["network"], tb), args.repeats),
                 int(p["teacher"]["training"]["steps"]), True))
    db = int(p["degradation"]["batch_size"])  # stage 1 fine-tunes the same network with the same loss
    rows.append(("stage-1 step", db, *measure(teacher_step(source, p["teacher"]["network"], db), args.repeats),
                 int(p["degradation"]["k1"]), True))
    for loss in ("di", "sid"):
        cfg, iteration = stage2_iteration(p, source, teacher_net, {"loss": loss})
        rows.append((f"stage-2 iteration ({loss}, r = {cfg.fake_steps})", cfg.batch_size,
                     *measure(iteration, args.repeats), cfg.budget, loss == p["backtracking"]["loss"]))
    rows += evaluation_rows(p, source, teacher_net, args.repeats)
    total_flops = sum(flops * n for _, _, flops, _, n, in_run in rows if in_run)
    total_s = sum(sec * n for _, _, _, sec, n, in_run in rows if in_run)
    lines = [f"Step cost, `--env {args.env}` ({p['data']['source']}, backbone "
             f"{p['teacher']['network']['backbone']}): {platform.machine()}, {os.cpu_count()} cores, "
             f"torch {torch.__version__}, {torch.get_num_threads()} threads; median of {args.repeats} steps.", "",
             "| step | batch | GFLOP per step | s per step (median) | steps in the default run | GFLOP in the run | "
             "minutes here |", "|---|---|---|---|---|---|---|"]
    for name, batch, flops, sec, n, _ in rows:
        lines.append(f"| {name} | {batch} | {flops / 1e9:.3g} | {sec:.4f} | {n} | {flops * n / 1e9:.4g} | "
                     f"{sec * n / 60:.2f} |")
    loss = p["backtracking"]["loss"]
    lines.append(f"| **the default run** (stage 2 with {loss}) | | | | | **{total_flops / 1e9:.4g}** | "
                 f"**{total_s / 60:.2f}** |")
    lines += ["", f"At 50 GFLOP/s (the slower 2-core machine) the run's {total_flops / 1e12:.1f} TFLOP take about "
              f"{total_flops / 50e9 / 60:.1f} minutes, plus Kedro's start and the FID arithmetic."]
    text = "\n".join(lines) + "\n"
    sys.stdout.write(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
