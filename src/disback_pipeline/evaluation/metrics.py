"""Exact metrics for 2-D Gaussian mixtures."""

from __future__ import annotations

import math

import numpy as np
import torch

from ..diffusion.data import GaussianMixture2D


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
    """Precision (share of samples within ``radius_std`` std of a mode), its
    complement the off-mode mass, mode coverage (share of modes holding at least
    ``min_share`` of their expected count of near samples) and the within-mode
    spread (:func:`within_mode_std`)."""
    idx, near = mode_assignment(gmm, x, radius_std)
    k = len(gmm.means)
    counts = torch.bincount(idx[near], minlength=k).double()
    expected = len(x) / k
    return {
        "precision": float(near.double().mean()),
        "mode_coverage": float((counts >= min_share * expected).double().mean()),
        "off_mode_mass": float(1.0 - near.double().mean()),
        "mode_std": within_mode_std(gmm, x, idx, near),
    }


def within_mode_std(gmm: GaussianMixture2D, x: torch.Tensor, idx: torch.Tensor, near: torch.Tensor) -> float:
    """Per-axis standard deviation of the near samples around their own mode's sample mean
    (the data's is ``gmm.std``); NaN when no sample is near a mode."""
    x = torch.as_tensor(x, dtype=torch.float64)[near]
    idx = idx[near]
    if len(x) < 2:
        return float("nan")
    k = len(gmm.means)
    counts = torch.bincount(idx, minlength=k).double().clamp_min(1)
    centres = torch.zeros(k, x.shape[1], dtype=torch.float64).index_add_(0, idx, x) / counts[:, None]
    return float(((x - centres[idx]) ** 2).mean().sqrt())


def _knn_radius(points: np.ndarray, queries: np.ndarray, k: int, exclude_self: bool) -> np.ndarray:
    from scipy.spatial import cKDTree

    dist, _ = cKDTree(points).query(queries, k=k + 1 if exclude_self else k)
    return np.maximum(dist[:, -1], 1e-12)


def knn_log_density(points: np.ndarray, queries: np.ndarray, k: int = 5, exclude_self: bool = False) -> np.ndarray:
    """Kozachenko-Leonenko k-NN estimate of log p at ``queries`` from samples ``points``."""
    from scipy.special import digamma, gammaln

    n, d = points.shape
    log_unit_ball = d / 2 * math.log(math.pi) - gammaln(d / 2 + 1)
    r = _knn_radius(points, queries, k, exclude_self)
    return digamma(k) - math.log(n - 1 if exclude_self else n) - log_unit_ball - d * np.log(r)


def exact_kl(gmm: GaussianMixture2D, samples: torch.Tensor, k: int = 5, seed: int = 0) -> dict[str, float]:
    """Reverse KL(p_gen || p_data) and forward KL(p_data || p_gen), in nats.

    The data density is exact; the generator's density is a k-NN estimate from
    ``samples`` (its bias shrinks as the sample count grows). Forward KL uses
    as many true samples as generated ones.
    """
    x = samples.detach().double().cpu().numpy()
    true, _ = gmm.sample_with_components(len(x), torch.Generator().manual_seed(seed))
    y = true.double().numpy()
    log_p_gen_at_x = knn_log_density(x, x, k, exclude_self=True)
    log_p_gen_at_y = knn_log_density(x, y, k)
    reverse = float(np.mean(log_p_gen_at_x - gmm.log_prob(torch.from_numpy(x)).numpy()))
    forward = float(np.mean(gmm.log_prob(torch.from_numpy(y)).numpy() - log_p_gen_at_y))
    return {"reverse_kl": reverse, "forward_kl": forward}


def frechet_distance_of(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between Gaussian fits of two feature sets (clean-fid's formula)."""
    from .quality import frechet_distance

    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    return float(frechet_distance(mu_a, np.atleast_2d(cov_a), mu_b, np.atleast_2d(cov_b)))


def gmm_metrics(gmm: GaussianMixture2D, samples: torch.Tensor, seed: int = 0) -> dict[str, float]:
    """All exact 2-D metrics: NLL, mode coverage, precision, off-mode mass, within-mode std, Frechet
    distance, reverse/forward KL."""
    true, _ = gmm.sample_with_components(len(samples), torch.Generator().manual_seed(seed + 1))
    out = {"nll": mean_nll(gmm, samples), **mode_stats(gmm, samples)}
    out["frechet_distance"] = frechet_distance_of(samples.double().cpu().numpy(), true.double().numpy())
    out.update(exact_kl(gmm, samples, seed=seed))
    return out
