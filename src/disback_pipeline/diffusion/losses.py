"""Losses: EDM denoising score matching and the score-distillation generator losses."""

from __future__ import annotations

import torch


def _sum_per_sample(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1).sum(dim=1)


def lognormal_sigma(n: int, P_mean: float, P_std: float, device="cpu") -> torch.Tensor:
    """Noise levels with ln(sigma) ~ Normal(P_mean, P_std) (global RNG)."""
    return (torch.randn(n, device=device) * float(P_std) + float(P_mean)).exp()


class EDMLoss:
    """EDM denoising score-matching loss.

    sigma ~ LogNormal(P_mean, P_std); weight = (sigma^2 + sd^2) / (sigma sd)^2;
    per-sample loss = weight * ||D(x0 + sigma eps, sigma) - x0||^2 (summed over
    the sample's elements). The caller reduces over the batch.

    Args:
        P_mean: mean of ln(sigma).
        P_std: standard deviation of ln(sigma).
        sigma_data: data standard deviation assumed by the weighting.
    """

    def __init__(self, P_mean: float = -1.2, P_std: float = 1.2, sigma_data: float = 0.5):
        self.P_mean = float(P_mean)
        self.P_std = float(P_std)
        self.sigma_data = float(sigma_data)

    def weight(self, sigma: torch.Tensor) -> torch.Tensor:
        return (sigma**2 + self.sigma_data**2) / (sigma * self.sigma_data) ** 2

    def __call__(self, net, x0: torch.Tensor, labels=None, sigma=None, noise=None) -> torch.Tensor:
        if sigma is None:
            sigma = lognormal_sigma(x0.shape[0], self.P_mean, self.P_std, x0.device)
        if noise is None:
            noise = torch.randn_like(x0)
        view = (-1,) + (1,) * (x0.ndim - 1)
        denoised = net(x0 + sigma.reshape(view) * noise, sigma, labels)
        return self.weight(sigma) * _sum_per_sample((denoised - x0) ** 2)


def score_distillation_loss(x0: torch.Tensor, d_fake: torch.Tensor, d_target: torch.Tensor,
                            x_noisy: torch.Tensor | None = None, kind: str = "di") -> torch.Tensor:
    """Per-sample generator loss whose gradient on ``x0`` is the score difference.

    ``d_fake`` and ``d_target`` are the fake-score and target denoisers at the
    noised generator samples, computed without gradient. The gradient on x0 is
    proportional to ``D_fake - D_target`` (i.e. s_target - s_fake with the
    opposite sign), so gradient descent moves samples towards the target's
    high-density regions.

    Args:
        kind: ``di`` (Diff-Instruct / VSD: sum(diff * x0)) or ``dmd`` (the
            difference normalised per sample by mean |x0 - D_target|, which
            needs only x0 and d_target).
    """
    diff = (d_fake - d_target).detach()
    if kind == "dmd":
        scale = (x0.detach() - d_target).abs().reshape(x0.shape[0], -1).mean(dim=1)
        diff = diff / scale.clamp_min(1e-8).reshape((-1,) + (1,) * (x0.ndim - 1))
    elif kind != "di":
        raise ValueError(f"unknown score-distillation loss {kind!r}; choose 'di' or 'dmd'")
    return _sum_per_sample(diff * x0)
