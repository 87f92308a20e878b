"""Nodes of the ``reference`` pipeline."""

from __future__ import annotations

import logging
from typing import Any

import torch

from ...diffusion.data import GaussianMixture2D, make_data_source
from ...diffusion.evaluation import FeatureSpec, reference_statistics
from ...diffusion.features import inception_extractor, train_domain_classifier
from ...tracking import log_metrics

log = logging.getLogger(__name__)

EXTRACTORS = ("domain", "inception")


def build_feature_extractor(data: dict[str, Any], evaluation: dict[str, Any]) -> FeatureSpec:
    """Train the ``domain`` classifier, or check the local Inception file; 2-D data need none."""
    source = make_data_source(data)
    if isinstance(source, GaussianMixture2D):
        return FeatureSpec("none")
    kind = evaluation.get("extractor")
    if kind not in EXTRACTORS:
        raise ValueError(f"evaluation.extractor must be one of {EXTRACTORS}, got {kind!r}")
    if kind == "inception":
        mode = evaluation.get("inception_mode", "clean")
        inception_extractor(evaluation.get("inception_path"), mode)  # fails early with the fix if absent
        return FeatureSpec("inception", inception_path=str(evaluation["inception_path"]), mode=mode)
    cfg = evaluation.get("domain", {})
    trained = train_domain_classifier(source, steps=int(cfg.get("steps", 1500)),
                                      batch_size=int(cfg.get("batch_size", 128)), lr=float(cfg.get("lr", 2e-3)),
                                      seed=int(cfg.get("seed", 0)))
    log_metrics({"domain_extractor_test_accuracy": trained.test_accuracy}, prefix="reference/")
    return FeatureSpec("domain", trained.net, trained.config, trained.test_accuracy)


def build_reference_stats(feature_extractor: FeatureSpec, data: dict[str, Any],
                          evaluation: dict[str, Any]) -> dict:
    """Mean/covariance of the real data's features (2-D: of exact samples) and their hash."""
    source = make_data_source(data)
    n = int(evaluation.get("reference_samples", 10000))
    if isinstance(source, GaussianMixture2D):
        x, _ = source.sample(n, torch.Generator().manual_seed(int(evaluation.get("seed", 0)) + 1000))
    else:
        x = source.images if n <= 0 or n >= len(source.images) else source.images[:n]
    stats = reference_statistics(feature_extractor.extract(x))
    log.info("reference statistics of %d samples, hash %s", int(stats["n"]), str(stats["hash"])[:12])
    return stats
