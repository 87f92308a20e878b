"""Nodes of the ``reference`` pipeline."""

from __future__ import annotations

import logging

import torch

from ...diffusion.config import EvaluationConfig
from ...diffusion.data import GaussianMixture2D, iterate
from ...evaluation.clip_score import check_clip
from ...evaluation.features import FeatureSpec, inception_extractor, train_domain_classifier
from ...evaluation.quality import CHUNK, Moments, reference_statistics
from ...parameters import Data, as_data, reference_source, typed
from ...tracking import log_metrics

log = logging.getLogger(__name__)


def build_feature_extractor(data: Data, evaluation) -> FeatureSpec:
    """Train the ``domain`` classifier, or check the local Inception file; 2-D data need none."""
    source = as_data(data).source.pixels  # latents: the features are of the decoded images
    if isinstance(source, GaussianMixture2D):
        return FeatureSpec("none")
    cfg = typed(evaluation, EvaluationConfig, "evaluation")
    if cfg.clip_path is not None:
        check_clip(cfg.clip_path)  # before anything trains, not after
    if cfg.extractor == "inception":
        inception_extractor(cfg.inception_path, cfg.inception_mode)  # fails early with the fix if absent
        return FeatureSpec("inception", inception_path=str(cfg.inception_path), mode=cfg.inception_mode)
    d = cfg.domain
    trained = train_domain_classifier(source, steps=d.steps, batch_size=d.batch_size, lr=d.lr, seed=d.seed)
    log_metrics({"domain_extractor_test_accuracy": trained.test_accuracy}, prefix="reference/")
    return FeatureSpec("domain", trained.net, trained.config, trained.test_accuracy)


def build_reference_stats(feature_extractor: FeatureSpec, data: Data, evaluation) -> dict:
    """Mean/covariance of the real data's features (2-D: of exact samples) and their hash; with
    ``evaluation.reference_path`` of that folder's images instead of the training data."""
    cfg = typed(evaluation, EvaluationConfig, "evaluation")
    source = reference_source(as_data(data), cfg).pixels
    n = cfg.reference_samples
    if isinstance(source, GaussianMixture2D):
        n = n or 10000  # exact samples: 0 (the whole set) has no meaning for a density
        x, _ = source.sample(n, torch.Generator().manual_seed(cfg.seed + 1000))
        stats = reference_statistics(feature_extractor.extract(x))
    else:
        if n > len(source):
            raise ValueError(f"evaluation.reference_samples = {n}, but the data ({source.name}) hold only "
                             f"{len(source)} images; set it to {len(source)} or fewer (0 = the whole set)")
        moments = Moments()  # the images stream through in batches; only their features' sums are kept
        for x in iterate(source, n if n > 0 else len(source), CHUNK):
            moments.add(feature_extractor.extract(x))
        stats = moments.statistics()
    log.info("reference statistics of %d samples, hash %s", int(stats["n"]), str(stats["hash"])[:12])
    return stats
