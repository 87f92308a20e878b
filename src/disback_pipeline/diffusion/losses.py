"""Losses, EDM style: small classes with hyper-parameters in the constructor.

- :class:`EDMLoss`: denoising score matching (teacher pre-training, stage 1 and
  the fake-score update). ``loss(net, x0, labels)`` returns the per-sample loss.
- Generator losses of score distillation, one call signature for all:
  ``loss(x0, fake, target, labels)`` with ``x0 = G(z)`` carrying the generator's
  gradient returns a :class:`GeneratorLossOutput` (per-sample loss, and both
  denoisers' outputs for the score-mismatch diagnostic). Each owns its
  noise-level sampling.

  * :class:`DILoss`: Diff-Instruct / VSD, gradient on x0 = D_fake - D_target.
  * :class:`DMDLoss`: the same difference normalised per sample by mean |x0 - D_target|.
  * :class:`SiDLoss`: Score identity Distillation; gradients flow through the
    noised sample into both denoisers' inputs.

:func:`make_generator_loss` builds one from its name and keyword arguments.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from . import distributed


def _sum_per_sample(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1).sum(dim=1)


def _mean_per_sample(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1).mean(dim=1)


def _per_sample(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape a (B,) tensor to broadcast against ``like`` (B, ...)."""
    return v.reshape((-1,) + (1,) * (like.ndim - 1))


@contextlib.contextmanager
def weights_frozen(net: torch.nn.Module):
    """Gradients reach ``net``'s input but not its weights; each weight's requires_grad is restored after."""
    flags = [p.requires_grad for p in net.parameters()]
    net.requires_grad_(False)
    try:
        yield net
    finally:
        for p, flag in zip(net.parameters(), flags):
            p.requires_grad_(flag)


def lognormal_sigma(n: int, P_mean: float, P_std: float, device="cpu") -> torch.Tensor:
    """Noise levels with ln(sigma) ~ Normal(P_mean, P_std) (global RNG; this rank's slice of the global batch)."""
    return (distributed.randn(n, device=device) * float(P_std) + float(P_mean)).exp()


def loguniform_sigma(n: int, sigma_min: float, sigma_max: float, device="cpu") -> torch.Tensor:
    """Noise levels with ln(sigma) ~ Uniform(ln sigma_min, ln sigma_max) (global RNG)."""
    lo, hi = torch.tensor([float(sigma_min), float(sigma_max)]).log()
    return (distributed.rand(n, device=device) * (hi - lo) + lo).exp()


def karras_sigma(n: int, t_max: float = 0.8, sigma_min: float = 0.002, sigma_max: float = 80.0,
                 rho: float = 7.0, device="cpu") -> torch.Tensor:
    """Noise levels on EDM's schedule (sigma_min^(1/rho) .. sigma_max^(1/rho), to the power rho)
    at a uniform position t in [0, t_max]: t = 0 is sigma_min and t = 1 is sigma_max, so
    t_max < 1 leaves out the largest noise levels (global RNG)."""
    t = distributed.rand(n, device=device) * float(t_max)
    lo, hi = float(sigma_min) ** (1 / rho), float(sigma_max) ** (1 / rho)
    return (lo + t * (hi - lo)) ** rho


class EDMLoss:
    """EDM denoising score-matching loss.

    sigma ~ LogNormal(P_mean, P_std); weight = (sigma^2 + sd^2) / (sigma sd)^2;
    per-sample loss = weight * ||D(x0 + sigma eps, sigma) - x0||^2 (summed over
    the sample's elements). The caller reduces over the batch.

    Args:
        P_mean: mean of ln(sigma).
        P_std: standard deviation of ln(sigma).
        sigma_data: data standard deviation assumed by the weighting (data units).
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
            noise = distributed.randn_like(x0)
        denoised = net(x0 + _per_sample(sigma, x0) * noise, sigma, labels)
        return self.weight(sigma) * _sum_per_sample((denoised - x0) ** 2)


@dataclass
class GeneratorLossOutput:
    """Per-sample generator loss (with gradient) and the denoisers' outputs (detached)."""

    loss: torch.Tensor      # (B,)
    d_fake: torch.Tensor    # D_fake(x_s, sigma), no gradient
    d_target: torch.Tensor  # D_target(x_s, sigma), no gradient

    def score_mismatch(self) -> torch.Tensor:
        """Mean over the batch of ||D_fake - D_target||^2 (a 0-d tensor; no host sync)."""
        return _sum_per_sample((self.d_fake.float() - self.d_target.float()) ** 2).mean()


class DILoss:
    """Diff-Instruct / VSD generator loss.

    x_s = x0 + sigma eps; both denoisers are evaluated at x_s without gradient;
    per-sample loss = sum(diff * x0) with diff = D_fake(x_s) - D_target(x_s), so
    the gradient on x0 is ``diff`` and descent moves samples towards the
    target's high density.

    Args:
        sigma_dist: ``lognormal`` (P_mean, P_std) or ``loguniform`` (sigma_min, sigma_max).
        P_mean: mean of ln(sigma) for ``lognormal``.
        P_std: standard deviation of ln(sigma) for ``lognormal``.
        sigma_min: lowest noise level for ``loguniform`` (data units).
        sigma_max: highest noise level for ``loguniform`` (data units).
    """

    name = "di"

    def __init__(self, sigma_dist: str = "lognormal", P_mean: float = -1.2, P_std: float = 1.2,
                 sigma_min: float = 0.002, sigma_max: float = 80.0):
        if sigma_dist not in ("lognormal", "loguniform"):
            raise ValueError(f"generator sigma distribution must be 'lognormal' or 'loguniform', got {sigma_dist!r}")
        self.sigma_dist = sigma_dist
        self.P_mean, self.P_std = float(P_mean), float(P_std)
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)

    def sample_sigma(self, n: int, device) -> torch.Tensor:
        if self.sigma_dist == "lognormal":
            return lognormal_sigma(n, self.P_mean, self.P_std, device)
        return loguniform_sigma(n, self.sigma_min, self.sigma_max, device)

    def direction(self, x0: torch.Tensor, d_fake: torch.Tensor, d_target: torch.Tensor) -> torch.Tensor:
        """The gradient this loss puts on x0."""
        return d_fake - d_target

    def __call__(self, x0: torch.Tensor, fake, target, labels=None) -> GeneratorLossOutput:
        sigma = self.sample_sigma(x0.shape[0], x0.device)
        x_s = x0.detach() + _per_sample(sigma, x0) * distributed.randn_like(x0)
        with torch.no_grad():
            d_fake = fake(x_s, sigma, labels)
            d_target = target(x_s, sigma, labels)
        x0 = x0.float()
        diff = self.direction(x0.detach(), d_fake, d_target).detach()
        return GeneratorLossOutput(_sum_per_sample(diff * x0), d_fake, d_target)


class DMDLoss(DILoss):
    """DMD's distribution-matching loss (no regression or GAN term): the
    Diff-Instruct difference divided per sample by mean |x0 - D_target|.
    Same arguments as :class:`DILoss`."""

    name = "dmd"

    def direction(self, x0, d_fake, d_target):
        scale = _mean_per_sample((x0 - d_target).abs()).clamp_min(1e-8)
        return (d_fake - d_target) / _per_sample(scale, x0)


class SiDLoss:
    """Score identity Distillation generator loss (Zhou et al. 2024, arXiv 2404.04057).

    x_t = x_g + sigma eps with the generator's gradient kept; D_T (target) and
    D_F (fake score) are evaluated at x_t with gradient through their input
    (their parameters are not updated by this loss). Per-sample loss =
    sum over elements of (D_T - D_F) * ((D_T - x_g) - alpha (D_T - D_F)) / w,
    w = mean |x_g - D_T| over the sample's elements (no gradient) when
    ``normalise``.

    Args:
        alpha: weight of the ||D_T - D_F||^2 term (1.2 in the paper's image runs).
        t_max: sigma is drawn at a uniform position t in [0, t_max] of EDM's
            schedule from sigma_min (t = 0) to sigma_max (t = 1); 0.8 leaves out
            the largest noise levels (the cap on the generator-loss noise level).
        sigma_min: lowest noise level of the schedule (data units).
        sigma_max: highest noise level of the schedule (data units).
        rho: the schedule's exponent (dimensionless).
        normalise: divide per sample by mean |x_g - D_T|.
    """

    name = "sid"

    def __init__(self, alpha: float = 1.2, t_max: float = 0.8, sigma_min: float = 0.002, sigma_max: float = 80.0,
                 rho: float = 7.0, normalise: bool = True):
        if not 0.0 < t_max <= 1.0:
            raise ValueError(f"sid t_max must be in (0, 1], got {t_max}")
        self.alpha, self.t_max, self.rho, self.normalise = float(alpha), float(t_max), float(rho), bool(normalise)
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)

    def sample_sigma(self, n: int, device) -> torch.Tensor:
        return karras_sigma(n, self.t_max, self.sigma_min, self.sigma_max, self.rho, device)

    def __call__(self, x0: torch.Tensor, fake, target, labels=None) -> GeneratorLossOutput:
        sigma = self.sample_sigma(x0.shape[0], x0.device)
        x_t = x0 + _per_sample(sigma, x0) * distributed.randn_like(x0)
        with weights_frozen(fake):  # only the input carries gradient; the fake score is trained elsewhere
            d_fake = fake(x_t, sigma, labels).float()
            d_target = target(x_t, sigma, labels).float()
        x0 = x0.float()
        gap = d_target - d_fake
        per_elem = gap * ((d_target - x0) - self.alpha * gap)
        if self.normalise:
            w = _mean_per_sample((x0 - d_target).detach().abs()).clamp_min(1e-8)
            per_elem = per_elem / _per_sample(w, x0)
        return GeneratorLossOutput(_sum_per_sample(per_elem), d_fake.detach(), d_target.detach())


GENERATOR_LOSSES = {"di": DILoss, "dmd": DMDLoss, "sid": SiDLoss}


def make_generator_loss(kind: str, **kwargs):
    """The generator loss named ``kind`` (di | dmd | sid) with its hyper-parameters."""
    if kind not in GENERATOR_LOSSES:
        raise ValueError(f"unknown score-distillation loss {kind!r}; choose one of {sorted(GENERATOR_LOSSES)}")
    return GENERATOR_LOSSES[kind](**kwargs)


def _feature_module(denoiser: torch.nn.Module) -> torch.nn.Module:
    """The module whose output is the backbone's deepest encoder feature: the MLP's last block, the small
    UNet's last middle block, or the last encoder block of an EDM UNet."""
    backbone = getattr(denoiser, "net", denoiser)
    if hasattr(backbone, "mid"):
        return backbone.mid[-1]
    if hasattr(backbone, "blocks"):
        return backbone.blocks[-1]
    if hasattr(backbone, "enc"):
        return list(backbone.enc.values())[-1]
    raise ValueError(f"no encoder feature known for backbone {type(backbone).__name__}; use gan_weight: 0")


class AdversarialTerm:
    """An adversarial term on real data (as in DMD2, arXiv 2405.14867, and SiDA, arXiv 2410.14919).

    A small head on the fake score's deepest encoder feature tells noised real data from noised generator
    samples (noise level sigma ~ LogNormal(P_mean, P_std), the same for both). The head is trained with the
    logistic loss (:meth:`discriminator_loss`, fake score's weights untouched); the generator gets the
    non-saturating loss softplus(-logit) through the fake score's input (:meth:`generator_loss`), to be
    added to the distillation loss at a small weight.

    Args:
        fake: the fake-score denoiser whose features the head reads.
        example: one batch of data, to size the head.
        hidden: width of the head's hidden layer (units).
        P_mean: mean of ln(sigma) at which both batches are noised.
        P_std: standard deviation of ln(sigma).
    """

    def __init__(self, fake: torch.nn.Module, example: torch.Tensor, hidden: int = 64, P_mean: float = -1.2,
                 P_std: float = 1.2):
        self.P_mean, self.P_std = float(P_mean), float(P_std)
        self._module = _feature_module(fake)
        with torch.no_grad():
            width = self._features(fake, example, torch.ones(len(example), device=example.device), None).shape[1]
        self.head = torch.nn.Sequential(torch.nn.Linear(width, hidden), torch.nn.SiLU(),
                                        torch.nn.Linear(hidden, 1)).to(example.device)

    def _features(self, fake, x, sigma, labels) -> torch.Tensor:
        captured = []
        handle = self._module.register_forward_hook(lambda _m, _i, out: captured.append(out))
        try:
            fake(x, sigma, labels)
        finally:
            handle.remove()
        h = captured[-1].float()
        return h.mean(dim=(2, 3)) if h.ndim == 4 else h.reshape(h.shape[0], -1)

    def _logits(self, fake, x, labels) -> torch.Tensor:
        sigma = lognormal_sigma(x.shape[0], self.P_mean, self.P_std, x.device)
        x_s = x + _per_sample(sigma, x) * distributed.randn_like(x)
        return self.head(self._features(fake, x_s, sigma, labels)).squeeze(1)

    def discriminator_loss(self, fake, real, real_labels, generated, generated_labels) -> torch.Tensor:
        """Logistic loss of the head: real -> 1, generated -> 0 (features without gradient)."""
        with torch.no_grad():
            sigma_r = lognormal_sigma(real.shape[0], self.P_mean, self.P_std, real.device)
            f_real = self._features(fake, real + _per_sample(sigma_r, real) * distributed.randn_like(real), sigma_r,
                                    real_labels)
            sigma_g = lognormal_sigma(generated.shape[0], self.P_mean, self.P_std, generated.device)
            noised = generated + _per_sample(sigma_g, generated) * distributed.randn_like(generated)
            f_gen = self._features(fake, noised, sigma_g, generated_labels)
        logits_real, logits_gen = self.head(f_real).squeeze(1), self.head(f_gen).squeeze(1)
        return torch.nn.functional.softplus(-logits_real).mean() + torch.nn.functional.softplus(logits_gen).mean()

    def generator_loss(self, fake, x0: torch.Tensor, labels=None) -> torch.Tensor:
        """Non-saturating loss of generator samples ``x0`` (with gradient); the fake score is not updated."""
        with weights_frozen(fake):
            return torch.nn.functional.softplus(-self._logits(fake, x0, labels)).mean()
