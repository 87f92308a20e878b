"""Evaluation: samples of teacher and student, their throughput, and quality metrics.

Images: FID through clean-fid's Frechet distance on features of a chosen
extractor against reference statistics of the real data. 2-D mixtures: exact
metrics against the true density (see :mod:`.metrics`).
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import Any

import numpy as np
import torch

from ..diffusion.checkpoint import Checkpoint
from ..diffusion.config import EvaluationConfig, SamplerConfig
from ..diffusion.data import DataSource, GaussianMixture2D
from ..diffusion.diffusers_teacher import guided
from ..diffusion.sampling import heun_sampler, latents, one_step_generate
from ..diffusion.training import select_device
from .features import FeatureSpec
from .metrics import gmm_metrics

log = logging.getLogger(__name__)

CHUNK = 500  # rows per step of the moment sums (the reference images stream through in batches of this size)


class Moments:
    """Mean and covariance of feature rows added batch by batch (float64 sums), so that reference statistics
    of a data set larger than memory need only one batch of it at a time."""

    def __init__(self):
        self.n, self.total, self.outer = 0, 0.0, 0.0

    def add(self, features: np.ndarray) -> None:
        f = np.atleast_2d(np.asarray(features, dtype=np.float64))
        for i in range(0, len(f), CHUNK):
            part = f[i:i + CHUNK]
            self.n += len(part)
            self.total = self.total + part.sum(0)
            self.outer = self.outer + part.T @ part

    def statistics(self) -> dict[str, Any]:
        """Mean, covariance (n - 1 in the denominator) and a sha256 over both (the reference hash)."""
        if self.n < 2:
            raise ValueError(f"reference statistics need at least 2 samples, got {self.n}")
        mu = self.total / self.n
        sigma = np.atleast_2d((self.outer - self.n * np.outer(mu, mu)) / (self.n - 1))
        digest = hashlib.sha256(mu.tobytes() + sigma.tobytes()).hexdigest()
        return {"mu": mu, "sigma": sigma, "n": np.array(self.n), "hash": np.array(digest)}


def reference_statistics(features: np.ndarray) -> dict[str, Any]:
    """Mean, covariance and a sha256 over both (the reference hash) of in-memory features (the same sums as
    when they arrive in batches)."""
    moments = Moments()
    moments.add(features)
    return moments.statistics()


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Frechet distance of two Gaussians: |mu1 - mu2|^2 + tr(s1) + tr(s2) - 2 tr((s1 s2)^(1/2)).

    clean-fid's function is used when it is installed and works. clean-fid 0.1.35 passes ``disp=False`` to
    scipy.linalg.sqrtm, which scipy 1.18 removed; there the same formula is computed here, with the
    matrix square root from scipy without that argument (its tiny imaginary part from rounding is
    dropped; a non-finite root gets a small offset on the diagonals, as is usual for FID).
    """
    try:
        from cleanfid.fid import frechet_distance as clean

        return float(clean(mu1, sigma1, mu2, sigma2))
    except ImportError:  # a bare machine without the project's install (a GPU machine): the same formula below
        pass
    except TypeError as exc:
        if "disp" not in str(exc):
            raise
    from scipy import linalg

    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
    root = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(root).all():
        offset = np.eye(sigma1.shape[0]) * 1e-6
        root = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    root = np.real(root)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(root))


def fid_against(reference: dict[str, Any], features: np.ndarray) -> float:
    mu = features.mean(0)
    sigma = np.atleast_2d(np.cov(features, rowvar=False))
    return float(frechet_distance(mu, sigma, np.asarray(reference["mu"]), np.asarray(reference["sigma"])))


def sample_teacher(teacher, source: DataSource, n: int, seed: int, sampler: SamplerConfig,
                   batch_size: int | None = None, guidance: float = 1.0):
    """Heun samples (on the CPU) and samples/s, computed on the teacher's device in batches of ``batch_size``
    (None = all at once), under classifier-free guidance ``guidance`` where the samples have prompts. The latents
    depend on ``seed`` only, not on the batching."""
    device = _device_of(teacher)
    teacher = guided(teacher, guidance)
    z = latents(n, source.shape, seed, device)
    labels = _labels(source, n, seed, device)
    step = int(batch_size or n)
    _sync(device)
    start = time.perf_counter()
    out = [heun_sampler(teacher, z[i:i + step], None if labels is None else labels[i:i + step],
                        nfe=sampler.nfe, sigma_min=sampler.sigma_min, sigma_max=sampler.sigma_max,
                        rho=sampler.rho).cpu()
           for i in range(0, n, step)]
    _sync(device)
    return source.to_pixels(torch.cat(out)), n / (time.perf_counter() - start)  # latents decoded after the clock


@torch.no_grad()
def sample_generator(generator, source: DataSource, n: int, seed: int, s_init: float, batch_size: int = 4096):
    """One-step samples (on the CPU) and samples/s, computed on the generator's device."""
    device = _device_of(generator)
    z = latents(n, source.shape, seed, device)
    labels = _labels(source, n, seed, device)
    _sync(device)
    start = time.perf_counter()
    out = [one_step_generate(generator, z[i:i + batch_size], s_init,
                             None if labels is None else labels[i:i + batch_size]).cpu()
           for i in range(0, n, batch_size)]
    _sync(device)
    return source.to_pixels(torch.cat(out)), n / (time.perf_counter() - start)


@torch.no_grad()
def prompt_rows(generator, source: DataSource, s_init: float, prompts: int = 8, per_prompt: int = 8,
                seed: int = 0) -> list[tuple[str, torch.Tensor]]:
    """The one-step generator's samples for each of the first ``prompts`` prompts: the same ``per_prompt`` latents
    (``seed``) under every prompt, decoded; the rows of a prompt grid."""
    device = _device_of(generator)
    z = latents(per_prompt, source.shape, seed, device)
    rows = []
    for i, prompt in enumerate(source.prompts[:prompts]):
        condition = source.prompt_embeddings[i:i + 1].to(device).expand(per_prompt, -1, -1)
        rows.append((prompt, source.to_pixels(one_step_generate(generator, z, s_init, condition).cpu())))
    return rows


def _device_of(net) -> torch.device:
    """The device a network's weights live on (latents and labels follow it); CPU for a weightless one."""
    return next((p.device for p in net.parameters()), torch.device("cpu"))


def _labels(source: DataSource, n: int, seed: int, device) -> torch.Tensor | None:
    labels = source.random_labels(n, torch.Generator().manual_seed(seed))
    return None if labels is None else labels.to(device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":  # kernels run asynchronously: time them to completion
        torch.cuda.synchronize(device)


def quality(samples: torch.Tensor, source: DataSource, features: FeatureSpec, reference: dict[str, Any],
            seed: int = 0) -> dict[str, Any]:
    """Metrics of one sample set: exact ones for 2-D mixtures, FID for images."""
    if isinstance(source, GaussianMixture2D):
        return gmm_metrics(source, samples, seed=seed)
    feats = features.extract(samples)
    return {"fid": fid_against(reference, feats), "extractor": features.label,
            "mode": features.mode if features.kind == "inception" else "features",
            "n_samples": len(samples), "reference_hash": str(reference["hash"])}


HEADLINE = {"gmm2d": "reverse_kl", "images": "fid"}


def headline_metric(source: DataSource) -> str:
    return HEADLINE["gmm2d" if isinstance(source, GaussianMixture2D) else "images"]


def teacher_calls(sampler: SamplerConfig, source: DataSource, guidance: float) -> dict[str, Any]:
    """How the teacher samples: its Heun steps (NFE), its guidance and the network evaluations a sample costs
    (guidance runs each step on the prompt and on the empty prompt)."""
    guided_run = guidance != 1.0 and bool(source.prompts)
    return {"nfe": sampler.nfe, "guidance_scale": guidance if guided_run else 1.0,
            "network_evaluations": sampler.nfe * (2 if guided_run else 1)}


def teacher_vs_student(teacher: Checkpoint, student: Checkpoint, source: DataSource, features: FeatureSpec,
                       reference: dict[str, Any], cfg: EvaluationConfig, sampler: SamplerConfig,
                       guidance: float = 1.0):
    """Teacher (Heun, guided by ``guidance`` where there are prompts) and one-step student side by side on
    ``cfg.n_samples`` samples of the same seed.

    Returns the metrics ({"teacher", "student", "initial_generator", ...}) and the three sample sets.
    Both sample in batches of ``cfg.batch_size`` on ``cfg.device``, so the throughput ratio compares like
    with like; the checkpoints are back on the CPU afterwards.
    """
    device = select_device(cfg.device)
    s_init = float(student.metadata["s_init"])
    teacher_net, student_net = teacher.net.to(device), student.net.to(device)
    try:
        x_teacher, tps_teacher = sample_teacher(teacher_net, source, cfg.n_samples, cfg.seed, sampler,
                                                batch_size=cfg.batch_size, guidance=guidance)
        x_student, tps_student = sample_generator(student_net, source, cfg.n_samples, cfg.seed, s_init,
                                                  batch_size=cfg.batch_size)
        x_init, _ = sample_generator(teacher_net, source, cfg.n_samples, cfg.seed, s_init, batch_size=cfg.batch_size)
    finally:
        teacher.net.cpu()
        student.net.cpu()
    metrics = {
        "teacher": {**quality(x_teacher, source, features, reference, cfg.seed), "samples_per_s": tps_teacher,
                    **teacher_calls(sampler, source, guidance)},
        "student": {**quality(x_student, source, features, reference, cfg.seed), "samples_per_s": tps_student,
                    "nfe": 1, "weights": "ema", "method": student.metadata.get("method"),
                    "loss": student.metadata.get("loss"), "iterations": student.metadata.get("step")},
        "initial_generator": quality(x_init, source, features, reference, cfg.seed),
        "seed": cfg.seed,
        "headline_metric": headline_metric(source),
    }
    if features.test_accuracy is not None:
        metrics["extractor_test_accuracy"] = features.test_accuracy
    metrics["throughput_ratio"] = tps_student / tps_teacher
    if source.prompts and cfg.clip_path is None:
        log.info("text-conditioned samples: set evaluation.clip_path to a local CLIP model for the CLIP score")
    elif source.prompts:
        from .clip_score import clip_score, load_clip

        model, tokenizer = load_clip(cfg.clip_path)
        drawn = source.prompt_indices(cfg.n_samples, torch.Generator().manual_seed(cfg.seed))
        texts = [source.prompts[i] for i in drawn]
        for role, x in (("teacher", x_teacher), ("student", x_student)):  # the prompts each sample was drawn with
            metrics[role]["clip_score"] = clip_score(model, tokenizer, x, texts)
    return metrics, {"teacher": x_teacher, "student": x_student, "initial_generator": x_init}
