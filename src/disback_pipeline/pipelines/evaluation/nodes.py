"""Nodes of the ``evaluation`` pipeline."""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd

from ...diffusion.checkpoint import Checkpoint
from ...diffusion.data import make_data_source
from ...diffusion.evaluation import FeatureSpec, headline_metric, quality, sample_generator, sample_teacher
from ...diffusion.teacher import check_teacher_fits
from ...diffusion.training import select_device
from ...reporting import curves_figure, samples_figure
from ...tracking import log_metrics

log = logging.getLogger(__name__)


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer (samples per batch), got {value!r}")
    return value


def evaluate_models(teacher_model: Checkpoint, generator_ema_model: Checkpoint, feature_extractor: FeatureSpec,
                    reference_stats: dict, backtracking_history: pd.DataFrame, data: dict[str, Any],
                    teacher: dict[str, Any], evaluation: dict[str, Any]):
    """Teacher (Heun, NFE from params) and student (one step, EMA weights) side by side.

    Returns metrics ({"teacher", "student", "initial_generator"}), three sample
    figures and the proxy-quality-vs-iteration curve of the run.
    """
    source = make_data_source(data)
    check_teacher_fits(teacher_model.config, source)
    n, seed = int(evaluation["n_samples"]), int(evaluation.get("seed", 0))
    batch = _positive_int(evaluation.get("batch_size", n), "evaluation.batch_size")
    device = select_device(evaluation.get("device", "auto"))
    s_init = float(generator_ema_model.metadata["s_init"])
    teacher_net, student_net = teacher_model.net.to(device), generator_ema_model.net.to(device)
    # the same batch for both, so the throughput ratio compares like with like
    x_teacher, tps_teacher = sample_teacher(teacher_net, source, n, seed, teacher["sampler"], batch_size=batch)
    x_student, tps_student = sample_generator(student_net, source, n, seed, s_init, batch_size=batch)
    x_init, _ = sample_generator(teacher_net, source, n, seed, s_init, batch_size=batch)
    teacher_model.net.cpu()  # the checkpoints stay where they were loaded
    generator_ema_model.net.cpu()
    metrics = {
        "teacher": {**quality(x_teacher, source, feature_extractor, reference_stats, seed),
                    "samples_per_s": tps_teacher, "nfe": int(teacher["sampler"]["nfe"])},
        "student": {**quality(x_student, source, feature_extractor, reference_stats, seed),
                    "samples_per_s": tps_student, "nfe": 1, "weights": "ema",
                    "method": generator_ema_model.metadata.get("method"),
                    "iterations": generator_ema_model.metadata.get("step")},
        "initial_generator": quality(x_init, source, feature_extractor, reference_stats, seed),
        "seed": seed,
        "headline_metric": headline_metric(source),
    }
    if feature_extractor.test_accuracy is not None:
        metrics["extractor_test_accuracy"] = feature_extractor.test_accuracy
    metrics["throughput_ratio"] = tps_student / tps_teacher
    head = metrics["headline_metric"]
    log.info("%s: teacher %.4g (%.0f samples/s) | student %.4g (%.0f samples/s) | initial generator %.4g",
             head, metrics["teacher"][head], tps_teacher, metrics["student"][head], tps_student,
             metrics["initial_generator"][head])
    for role in ("teacher", "student", "initial_generator"):
        log_metrics({k: v for k, v in metrics[role].items() if isinstance(v, float)}, prefix=f"evaluation/{role}/")
    ref = None
    if x_teacher.ndim == 2:
        ref = source.sample(min(n, 4096))[0]
    k = 4096 if x_teacher.ndim == 2 else 64
    figs = [samples_figure(x[:k], title, ref) for x, title in (
        (x_teacher, f"teacher (Heun, NFE {teacher['sampler']['nfe']})"),
        (x_init, f"initial generator (one step, s_init {s_init:g})"),
        (x_student, f"student (one step, {metrics['student']['method']})"))]
    curve = curves_figure({metrics["student"]["method"] or "student": backtracking_history}, f"proxy_{head}",
                          title="proxy quality during distillation (EMA generator)")
    return (metrics, *figs, curve)
