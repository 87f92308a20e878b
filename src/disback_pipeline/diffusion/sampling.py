"""Samplers: the EDM Heun sampler (deterministic) and the one-step generator."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from . import distributed

if TYPE_CHECKING:
    from .data import DataSource


def steps_for_nfe(nfe: int) -> int:
    """Number of Heun steps giving ``nfe`` evaluations (NFE = 2 * steps - 1)."""
    if not isinstance(nfe, int) or nfe < 1 or nfe % 2 == 0:
        raise ValueError(f"Heun NFE must be a positive odd integer (2*steps-1), got {nfe!r}")
    return (nfe + 1) // 2


def edm_sigma_schedule(num_steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0,
                       rho: float = 7.0) -> torch.Tensor:
    """EDM time steps sigma_0 > ... > sigma_{N-1} followed by a final 0 (float64)."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
    i = torch.arange(num_steps, dtype=torch.float64)
    denom = max(num_steps - 1, 1)
    t = (sigma_max ** (1 / rho) + i / denom * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return torch.cat([t, torch.zeros(1, dtype=torch.float64)])


def latents(n: int, shape, seed: int, device="cpu") -> torch.Tensor:
    """Standard normal latents of shape (n, *shape), reproducible per seed."""
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    return torch.randn((n, *shape), generator=gen).to(device)


@torch.no_grad()
def heun_sampler(net, noise: torch.Tensor, class_labels=None, nfe: int = 35,
                 sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0) -> torch.Tensor:
    """Deterministic EDM Heun sampler (2nd order, no churn).

    Args:
        net: denoiser D(x, sigma, labels).
        noise: unit-variance latents (scaled by sigma_max here).
        nfe: network evaluations (odd): 2 * steps - 1.
        sigma_min, sigma_max, rho: schedule of :func:`edm_sigma_schedule`.
    """
    t_steps = edm_sigma_schedule(steps_for_nfe(nfe), sigma_min, sigma_max, rho)
    x = noise.to(torch.float64) * t_steps[0]

    def denoise(x, t):  # the noise level as a tensor: a compiled network keeps one graph for every level
        return net(x.float(), torch.full((x.shape[0],), float(t), device=x.device), class_labels).double()

    for i, (t_cur, t_next) in enumerate(zip(t_steps[:-1], t_steps[1:])):
        d_cur = (x - denoise(x, t_cur)) / t_cur
        x_next = x + (t_next - t_cur) * d_cur
        if i < len(t_steps) - 2:
            d_next = (x_next - denoise(x_next, t_next)) / t_next
            x_next = x + (t_next - t_cur) * (0.5 * d_cur + 0.5 * d_next)
        x = x_next
    return x.float()


def one_step_generate(generator, z: torch.Tensor, s_init: float, class_labels=None) -> torch.Tensor:
    """One-step generator G(z) = D_G(s_init * z, s_init).

    The noise level goes in as a tensor, as every other call of the denoisers passes it: a compiled network
    (``compile: true``) then needs no graph of its own for a Python-number noise level.
    """
    sigma = torch.full((z.shape[0],), float(s_init), device=z.device)
    return generator(z * s_init, sigma, class_labels)


def draw_generator_batch(generator, source: DataSource, n: int, s_init: float, device, grad: bool = False):
    """One-step samples x0 = G(z) and the labels they were generated with."""
    z = distributed.randn(n, *source.shape, device=device)  # this rank's slice of the global batch
    labels = source.random_labels(distributed.global_size(n))
    labels = None if labels is None else distributed.local(labels).to(device)
    with torch.set_grad_enabled(grad):
        return one_step_generate(generator, z, s_init, labels), labels
