"""Nodes of the ``evaluation`` pipeline."""

from __future__ import annotations

import logging

import pandas as pd

from ...diffusion.checkpoint import Checkpoint
from ...diffusion.config import EvaluationConfig, SharedConfig
from ...diffusion.state import weights_sha256
from ...diffusion.teacher import check_teacher_fits
from ...evaluation.features import FeatureSpec
from ...evaluation.quality import prompt_rows, teacher_vs_student
from ...parameters import Data, as_data, typed
from ...reporting import curves_figure, prompt_grid_figure, samples_figure
from ...tracking import log_metrics

log = logging.getLogger(__name__)


def evaluate_models(teacher_model: Checkpoint, generator_ema_model: Checkpoint, feature_extractor: FeatureSpec,
                    reference_stats: dict, backtracking_history: pd.DataFrame, data: Data,
                    evaluation, shared):
    """Teacher (Heun, the shared sampler) and student (one step, EMA weights) side by side.

    Returns metrics ({"teacher", "student", "initial_generator"}), three sample
    figures and the proxy-quality-vs-iteration curve of the run.
    """
    source = as_data(data).source
    check_teacher_fits(teacher_model.config, source)
    cfg = typed(evaluation, EvaluationConfig, "evaluation")
    shared = typed(shared, SharedConfig, "shared")
    sampler = shared.sampler
    metrics, x = teacher_vs_student(teacher_model, generator_ema_model, source, feature_extractor, reference_stats,
                                    cfg, sampler, shared.guidance_scale)
    head = metrics["headline_metric"]
    log.info("%s: teacher %.4g (%.0f samples/s) | student %.4g (%.0f samples/s) | initial generator %.4g",
             head, metrics["teacher"][head], metrics["teacher"]["samples_per_s"], metrics["student"][head],
             metrics["student"]["samples_per_s"], metrics["initial_generator"][head])
    for role in ("teacher", "student", "initial_generator"):
        log_metrics({k: v for k, v in metrics[role].items() if isinstance(v, float)}, prefix=f"evaluation/{role}/")
    # the run's headline figures under stable names: columns to sort and chart in the MLflow runs table
    log_metrics({f"student_{head}": metrics["student"][head], f"teacher_{head}": metrics["teacher"][head],
                 "quality_ratio": metrics["student"][head] / metrics["teacher"][head],
                 "throughput_ratio": metrics["throughput_ratio"]}, prefix="headline/")
    ref = source.sample(min(cfg.n_samples, 4096))[0] if x["teacher"].ndim == 2 else None
    k = 4096 if x["teacher"].ndim == 2 else 64
    s_init = float(generator_ema_model.metadata["s_init"])
    figs = [samples_figure(x[role][:k], title, ref) for role, title in (
        ("teacher", f"teacher (Heun, NFE {sampler.nfe})"),
        ("initial_generator", f"initial generator (one step, s_init {s_init:g})"),
        ("student", f"student (one step, {metrics['student']['method']})"))]
    if source.prompts:  # text-to-image: the student's grid is one row a prompt, the same latents in every row
        figs[2] = prompt_grid_figure(prompt_rows(generator_ema_model.net, source, s_init, seed=cfg.seed),
                                     f"student (one step, {metrics['student']['method']}): one row a prompt")
    curve = curves_figure({metrics["student"]["method"] or "student": backtracking_history}, f"proxy_{head}",
                          title="proxy quality during distillation (EMA generator)")
    return (metrics, *figs, curve)


def package_student(generator_ema_model: Checkpoint) -> str:
    """The EMA student as an MLflow pyfunc model, defined as code (the file that ``student_model`` logs, with the
    checkpoint file as its artifact; predict takes [{n, seed, class}])."""
    from importlib.util import find_spec

    log.info("packaging the %s student (%d iterations) as an MLflow model", generator_ema_model.metadata.get("method"),
             generator_ema_model.metadata.get("step", 0))
    return find_spec("disback_pipeline.student_model").origin  # the file, not run here


def register_student(student_model, metrics: dict, teacher_model: Checkpoint, data: Data) -> dict:
    """Register the logged student as ``<data>-<method>-<loss>`` with its quality, loss, method and the
    teacher's hash as version tags; returns what was registered (empty without an MLflow run)."""
    from ...serving import register_logged_model
    from ...tracking import active

    if not active():
        log.info("no MLflow run: the student is not registered")
        return {}
    head, student = metrics["headline_metric"], metrics["student"]
    name = f"{as_data(data).name}-{student['method']}-{student['loss']}"
    tags = {head: f"{student[head]:.6g}", f"teacher_{head}": f"{metrics['teacher'][head]:.6g}",
            "loss": student["loss"], "method": student["method"], "teacher_sha256": weights_sha256(teacher_model.net)}
    registered = register_logged_model(name, tags)
    log.info("registered %s version %d (%s)", name, registered["version"], tags)
    return registered
