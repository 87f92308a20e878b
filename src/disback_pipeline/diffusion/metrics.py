"""Exact metrics for 2-D Gaussian mixtures."""

from __future__ import annotations

import torch

from .data import GaussianMixture2D


def mean_nll(gmm: GaussianMixture2D, x: torch.Tensor) -> float:
    """Mean negative log-likelihood (nats) of samples under the true mixture."""
    return float(-gmm.log_prob(x).mean())


def mode_assignment(gmm: GaussianMixture2D, x: torch.Tensor, radius_std: float = 3.0):
    """Index of the nearest mode for each sample and whether it lies within
    ``radius_std`` component standard deviations of it."""
    x = torch.as_tensor(x, dtype=torch.float64)
    dist = torch.cdist(x, gmm.means.to(torch.float64))
    d_min, idx = dist.min(dim=1)
    return idx, d_min <= radius_std * gmm.std


def mode_stats(gmm: GaussianMixture2D, x: torch.Tensor, radius_std: float = 3.0,
               min_share: float = 0.2) -> dict[str, float]:
    """Precision (share of samples within ``radius_std`` std of a mode) and mode
    coverage (share of modes holding at least ``min_share`` of their expected
    count of near samples)."""
    idx, near = mode_assignment(gmm, x, radius_std)
    k = len(gmm.means)
    counts = torch.bincount(idx[near], minlength=k).double()
    expected = len(x) / k
    return {
        "precision": float(near.double().mean()),
        "mode_coverage": float((counts >= min_share * expected).double().mean()),
    }
