"""DisBack: degradation recording (stage 1) and distribution backtracking (stage 2).

The baseline (Diff-Instruct / DMD without regression or GAN terms) is the
same loop with no path: the fake score starts from the teacher and the
teacher is the target throughout.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .checkpoint import Checkpoint
from .data import DataSource
from .losses import EDMLoss, lognormal_sigma, score_distillation_loss
from .path import DegradationPath, PathNode, step_key
from .sampling import one_step_generate
from .schedule import TEACHER, backtracking_schedule, reaches_teacher
from .teacher import check_teacher_fits
from .training import EMA, autocast, make_adam, progress, seed_everything, select_device

log = logging.getLogger(__name__)

RecordCallback = Callable[[dict], None]


def _frozen(net: torch.nn.Module) -> torch.nn.Module:
    return net.eval().requires_grad_(False)


def draw_generator_batch(generator, source: DataSource, n: int, s_init: float, device, grad: bool = False):
    """One-step samples x0 = G(z) and the labels they were generated with."""
    z = torch.randn((n, *source.shape), device=device)
    labels = source.random_labels(n)
    labels = None if labels is None else labels.to(device)
    with torch.set_grad_enabled(grad):
        return one_step_generate(generator, z, s_init, labels), labels


@dataclass
class Probe:
    """A fixed noised batch on which denoisers are compared."""

    x: torch.Tensor
    sigma: torch.Tensor
    labels: torch.Tensor | None

    @torch.no_grad()
    def distance(self, a: torch.nn.Module, b: torch.nn.Module) -> float:
        """Mean squared difference of the two denoisers' outputs (per element)."""
        return float(((a(self.x, self.sigma, self.labels) - b(self.x, self.sigma, self.labels)) ** 2).mean())


def make_probe(generator, source: DataSource, s_init: float, n: int, seed: int, device,
               P_mean: float = -1.2, P_std: float = 1.2) -> Probe:
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    x0, labels = draw_generator_batch(generator, source, n, s_init, device)
    sigma = lognormal_sigma(n, P_mean, P_std, device)
    x = x0 + sigma.reshape((-1,) + (1,) * (x0.ndim - 1)) * torch.randn_like(x0)
    torch.random.set_rng_state(state)
    return Probe(x, sigma, labels)


def _candidate_steps(k1: int, n_nodes: int, spacing: str, candidates: int) -> list[int]:
    if spacing == "iterations":
        return sorted({round(i * k1 / n_nodes) for i in range(n_nodes + 1)})
    return sorted({round(i * k1 / candidates) for i in range(candidates + 1)})


def _pick_by_distance(steps: list[int], dist_final: dict[int, float], n_nodes: int) -> list[int]:
    """P_0, P_N and N-1 nodes where the distance to P_N has dropped by equal shares."""
    total = dist_final[steps[0]]
    chosen = [steps[0]]
    for i in range(1, n_nodes):
        level = total * (1 - i / n_nodes)
        pool = [s for s in steps if chosen[-1] < s < steps[-1]]
        remaining = n_nodes - i  # nodes still to place after this one, P_N included
        pool = pool[: max(0, len(pool) - (remaining - 1))]
        if not pool:
            break
        chosen.append(min(pool, key=lambda s: abs(dist_final[s] - level)))
    chosen.append(steps[-1])
    return chosen


def record_degradation(teacher: Checkpoint, source: DataSource, *, s_init: float, k1: int, n_nodes: int,
                       lr: float, batch_size: int, seed: int, spacing: str = "iterations",
                       betas=(0.9, 0.999), candidates: int = 64, probe_size: int = 512,
                       P_mean: float = -1.2, P_std: float = 1.2, device: str = "auto", bf16: bool = False,
                       log_every: int = 100, record_every: int = 1,
                       on_record: RecordCallback | None = None) -> tuple[DegradationPath, list[dict]]:
    """Stage 1: fine-tune a teacher copy on samples of the frozen initial generator.

    Returns the path P_0 (unmodified teacher) ... P_N (end of fine-tuning) and a
    history of DSM losses. ``spacing`` = ``iterations`` places the nodes evenly
    in steps; ``distance`` places them where the denoiser distance to P_N has
    dropped by equal shares (among ``candidates`` evenly spaced snapshots).
    """
    if spacing not in ("iterations", "distance"):
        raise ValueError(f"degradation spacing must be 'iterations' or 'distance', got {spacing!r}")
    if not isinstance(n_nodes, int) or n_nodes < 1:
        raise ValueError(f"N (path nodes after the teacher) must be an integer >= 1, got {n_nodes!r}")
    if not isinstance(k1, int) or k1 < n_nodes:
        raise ValueError(f"K1 (degradation iterations) must be an integer >= N = {n_nodes}, got {k1!r}")
    check_teacher_fits(teacher.config, source)
    dev = select_device(device)
    seed_everything(seed)
    generator = _frozen(copy.deepcopy(teacher.net).to(dev))
    degraded = copy.deepcopy(teacher.net).to(dev).train().requires_grad_(True)
    loss_fn = EDMLoss(P_mean, P_std, degraded.sigma_data)
    opt = make_adam(degraded.parameters(), lr, betas)
    snap_steps = _candidate_steps(k1, n_nodes, spacing, max(candidates, n_nodes))
    snapshots = {0: {k: v.detach().cpu().clone() for k, v in degraded.state_dict().items()}}
    history: list[dict] = []
    start = last = time.perf_counter()
    with progress(k1, "degradation") as bar:
        for step in range(1, k1 + 1):
            x0, labels = draw_generator_batch(generator, source, batch_size, s_init, dev)
            with autocast(dev, bf16):
                loss = loss_fn(degraded, x0, labels).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if step in snap_steps:
                snapshots[step] = {k: v.detach().cpu().clone() for k, v in degraded.state_dict().items()}
            if step % record_every == 0 or step == k1:
                rec = {"iteration": step, "wall_clock_s": time.perf_counter() - start, "stage": "degradation",
                       "target": "-", "loss_generator": float("nan"), "loss_fake_score": loss.item(),
                       "score_mismatch": float("nan")}
                history.append(rec)
                if on_record is not None:
                    on_record(rec)
            bar.update(1)
            if log_every and step % log_every == 0:
                now = time.perf_counter()
                log.info("degradation step %d/%d | %.4f s/step | dsm loss %.4f", step, k1,
                         (now - last) / log_every, loss.item())
                last = now
    probe = make_probe(generator, source, s_init, probe_size, seed + 1, dev, P_mean, P_std)
    scratch = _frozen(copy.deepcopy(teacher.net).to(dev))
    final = _frozen(copy.deepcopy(teacher.net).to(dev))
    final.load_state_dict(snapshots[k1])
    teacher_net = _frozen(copy.deepcopy(teacher.net).to(dev))
    dist_teacher, dist_final = {}, {}
    for step, state in snapshots.items():
        scratch.load_state_dict(state)
        dist_teacher[step] = probe.distance(scratch, teacher_net)
        dist_final[step] = probe.distance(scratch, final)
    steps = sorted(snapshots)
    chosen = steps if spacing == "iterations" else _pick_by_distance(steps, dist_final, n_nodes)
    stage1_seconds = time.perf_counter() - start  # fine-tuning and node selection: all of stage 1's cost
    width = max(6, len(str(k1)))
    nodes = [PathNode(step_key(s, width), s, dist_teacher[s], dist_final[s], state_dict=snapshots[s])
             for s in chosen]
    meta = {"s_init": float(s_init), "k1": k1, "n_nodes": len(nodes) - 1, "spacing": spacing, "seed": seed,
            "stage1_iterations": k1, "stage1_seconds": stage1_seconds, "dataset": source.name}
    log.info("degradation path: %s", ", ".join(f"{n.key} (to teacher {n.distance_to_teacher:.4g}, "
                                                f"to end {n.distance_to_final:.4g})" for n in nodes))
    return DegradationPath(dict(teacher.config), nodes, meta), history


def sample_sigma(n: int, cfg: dict[str, Any], device) -> torch.Tensor:
    """Noise levels for the generator loss: ``lognormal`` (P_mean, P_std) or
    ``loguniform`` (sigma_min, sigma_max)."""
    kind = cfg.get("dist", "lognormal")
    if kind == "lognormal":
        return lognormal_sigma(n, cfg.get("P_mean", -1.2), cfg.get("P_std", 1.2), device)
    if kind == "loguniform":
        lo, hi = torch.tensor([float(cfg["sigma_min"]), float(cfg["sigma_max"])]).log()
        return (torch.rand(n, device=device) * (hi - lo) + lo).exp()
    raise ValueError(f"generator sigma distribution must be 'lognormal' or 'loguniform', got {kind!r}")


def generator_loss(x0: torch.Tensor, fake, target, sigma: torch.Tensor, labels=None, kind: str = "di"):
    """Score-distillation loss of generator samples ``x0`` (with gradient).

    x_s = x0 + sigma eps; both denoisers are evaluated at x_s without gradient;
    the gradient on x0 is proportional to D_fake(x_s) - D_target(x_s).
    Returns (mean loss, D_fake, D_target).
    """
    x_s = x0.detach() + sigma.reshape((-1,) + (1,) * (x0.ndim - 1)) * torch.randn_like(x0)
    with torch.no_grad():
        d_fake = fake(x_s, sigma, labels)
        d_target = target(x_s, sigma, labels)
    return score_distillation_loss(x0.float(), d_fake, d_target, kind=kind).mean(), d_fake, d_target


@dataclass
class DistillResult:
    generator: Checkpoint
    generator_ema: Checkpoint
    history: list[dict]
    schedule: list


def distill(teacher: Checkpoint, source: DataSource, path: DegradationPath | None, cfg: dict[str, Any],
            time_offset: float = 0.0, on_record: RecordCallback | None = None,
            evaluate: Callable[[torch.nn.Module], dict] | None = None,
            on_switch: Callable[[int, str, torch.nn.Module], None] | None = None) -> DistillResult:
    """Stage 2: score distillation of a one-step generator.

    With a path (backtracking enabled) the fake score starts from P_N and the
    targets walk P_{N-1} ... P_0 = teacher per :func:`backtracking_schedule`;
    without one (the baseline) the fake score starts from the teacher, which is
    the target throughout. ``cfg`` keys: loss (di | dmd), s_init, k2, budget,
    fake_steps, lr_generator, lr_fake, betas, batch_size, sigma, fake_P_mean,
    fake_P_std, ema_decay, seed, device, bf16, log_every, record_every,
    eval_every. ``evaluate(generator)`` (optional) returns extra history columns
    every ``eval_every`` iterations (on the EMA generator; its time is not counted
    in ``wall_clock_s``). ``on_switch(iteration,
    new_target, ema_generator)`` is called at every change of target and once
    at the end (target ``"final"``), e.g. to draw sample grids.
    """
    check_teacher_fits(teacher.config, source)
    dev = select_device(cfg.get("device", "auto"))
    bf16 = bool(cfg.get("bf16", False))
    seed_everything(int(cfg["seed"]))
    s_init, budget, k2 = float(cfg["s_init"]), cfg["budget"], cfg.get("k2", 0)
    kind = cfg.get("loss", "di")
    r = int(cfg.get("fake_steps", 1))
    if r < 1:
        raise ValueError(f"fake_steps (r) must be >= 1, got {r}")
    batch = int(cfg["batch_size"])
    use_path = path is not None and len(path.nodes) >= 2
    keys = path.keys if use_path else []
    schedule = backtracking_schedule(keys, k2 if use_path else 0, budget)
    if use_path and not reaches_teacher(schedule):
        log.warning("budget %d ends before the walk reaches the teacher (%d path nodes x K2=%d)",
                    budget, len(keys) - 1, k2)

    teacher_net = _frozen(teacher.net.to(dev))
    generator = copy.deepcopy(teacher.net).to(dev).train().requires_grad_(True)
    fake = copy.deepcopy(teacher.net).to(dev)
    if use_path:
        path.load_into(fake, keys[-1])
        log.info("fake score initialised from the end of the path (%s)", keys[-1])
    fake.train().requires_grad_(True)
    target_scratch = _frozen(copy.deepcopy(teacher.net).to(dev))
    ema = EMA(generator, float(cfg.get("ema_decay", 0.999)))
    betas = cfg.get("betas", (0.0, 0.999))
    opt_g = make_adam(generator.parameters(), float(cfg["lr_generator"]), betas)
    opt_f = make_adam(fake.parameters(), float(cfg["lr_fake"]), betas)
    fake_loss = EDMLoss(cfg.get("fake_P_mean", -1.2), cfg.get("fake_P_std", 1.2), fake.sigma_data)
    sigma_cfg = cfg.get("sigma", {"dist": "lognormal"})
    log_every, record_every = int(cfg.get("log_every", 100)), int(cfg.get("record_every", 1))
    eval_every = int(cfg.get("eval_every", 0))

    history: list[dict] = []
    switches = {seg.start: seg.target for seg in schedule}
    target, target_key = teacher_net, TEACHER
    eval_seconds = 0.0
    start = last = time.perf_counter()
    with progress(budget, "backtracking" if use_path else "baseline") as bar:
        for it in range(1, budget + 1):
            if it in switches:
                target_key = switches[it]
                if target_key == TEACHER:
                    target = teacher_net
                else:
                    path.load_into(target_scratch, target_key)
                    target = target_scratch
                log.info("iteration %d: target is now %s", it,
                         target_key if target_key == TEACHER else f"path node {target_key}")
                if on_switch is not None:
                    on_switch(it, target_key, ema.net)
            loss_f_sum = 0.0
            for _ in range(r):
                x0, labels = draw_generator_batch(generator, source, batch, s_init, dev)
                with autocast(dev, bf16):
                    loss_f = fake_loss(fake, x0.detach(), labels).mean()
                opt_f.zero_grad(set_to_none=True)
                loss_f.backward()
                opt_f.step()
                loss_f_sum += loss_f.item()
            with autocast(dev, bf16):
                x0, labels = draw_generator_batch(generator, source, batch, s_init, dev, grad=True)
                sigma = sample_sigma(batch, sigma_cfg, dev)
                loss_g, d_fake, d_target = generator_loss(x0, fake, target, sigma, labels, kind)
            opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            opt_g.step()
            ema.update(generator)
            bar.update(1)
            eval_due = evaluate is not None and eval_every > 0 and (it % eval_every == 0 or it == budget)
            record_due = it % record_every == 0 or it == budget or it in switches or eval_due
            log_due = log_every and it % log_every == 0
            if record_due or log_due:
                mismatch = ((d_fake - d_target) ** 2).reshape(batch, -1).sum(1).mean().item()
            if record_due:
                rec = {"iteration": it, "wall_clock_s": time_offset + time.perf_counter() - start - eval_seconds,
                       "stage": "backtracking", "target": target_key, "loss_generator": loss_g.item(),
                       "loss_fake_score": loss_f_sum / r, "score_mismatch": mismatch}
                if eval_due:  # evaluation time is kept out of the training clock
                    t_eval = time.perf_counter()
                    rec.update(evaluate(ema.net))
                    eval_seconds += time.perf_counter() - t_eval
                history.append(rec)
                if on_record is not None:
                    on_record(rec)
            if log_due:
                now = time.perf_counter()
                log.info("iteration %d/%d | %.4f s/it | target %s | loss_g %.4g | loss_fake %.4g | mismatch %.4g",
                         it, budget, (now - last) / log_every, target_key, loss_g.item(), loss_f_sum / r, mismatch)
                last = now

    if on_switch is not None:
        on_switch(budget, "final", ema.net)
    meta = {"role": "generator", "s_init": s_init, "step": budget, "dataset": source.name,
            "seed": int(cfg["seed"]), "method": "disback" if use_path else "baseline", "loss": kind}
    gen_ckpt = Checkpoint(_frozen(generator).cpu(), dict(teacher.config), {**meta, "weights": "raw"})
    ema_ckpt = Checkpoint(ema.net.cpu(), dict(teacher.config), {**meta, "weights": "ema"})
    teacher.net.cpu()
    return DistillResult(gen_ckpt, ema_ckpt, history, schedule)
