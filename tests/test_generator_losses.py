"""The generator losses on Gaussians, where every denoiser is exact in closed form.

Data N(mu, s^2 I) in 8 dimensions; generator x0 = m + g z. The target is the data's exact denoiser and
the fake score the generator's own (as a perfectly trained fake score would be). The
expected gradient on (m, g) must vanish when the generator equals the data, and point
its mean and scale towards the data's otherwise.
"""

import pytest
import torch

from disback_pipeline.diffusion.losses import GENERATOR_LOSSES, SiDLoss, karras_sigma, make_generator_loss

from .test_sampling import GaussianDenoiser

MU, S = 0.7, 0.5
N, DIM = 50_000, 8  # DIM i.i.d. coordinates: the per-sample normalisers (mean |.| over elements) stay away from 0


def expected_gradient(kind: str, m: float, g: float, seed: int = 0) -> tuple[float, float]:
    """Monte-Carlo gradient of the mean loss w.r.t. the generator's mean and scale."""
    torch.manual_seed(seed)
    mean = torch.tensor(m, dtype=torch.float64, requires_grad=True)
    scale = torch.tensor(g, dtype=torch.float64, requires_grad=True)
    x0 = mean + scale * torch.randn(N, DIM, dtype=torch.float64)
    fake, target = GaussianDenoiser(torch.tensor(m, dtype=torch.float64), g), GaussianDenoiser(
        torch.tensor(MU, dtype=torch.float64), S)
    make_generator_loss(kind)(x0, fake, target).loss.mean().backward()
    return float(mean.grad), float(scale.grad)


@pytest.mark.parametrize("kind", sorted(GENERATOR_LOSSES))
def test_gradient_vanishes_when_the_generator_is_the_data(kind):
    gm, gs = expected_gradient(kind, MU, S)
    assert abs(gm) < 1e-9 and abs(gs) < 1e-9  # exactly zero up to rounding: D_fake = D_target everywhere


@pytest.mark.parametrize("kind", sorted(GENERATOR_LOSSES))
@pytest.mark.parametrize("m, g", [(0.2, S), (1.2, S), (MU, 0.25), (MU, 1.0), (0.0, 1.2)])
def test_gradient_points_mean_and_scale_towards_the_data(kind, m, g):
    gm, gs = expected_gradient(kind, m, g)
    # gradient descent moves m towards MU and g towards S: the gradient has the sign of (m - MU), (g - S)
    if m != MU:
        assert gm * (m - MU) > 0 and abs(gm) > 1e-3, (gm, gs)
    else:
        assert abs(gm) < 0.05 * abs(gs), (gm, gs)  # only Monte-Carlo noise along the mean
    if g != S:
        assert gs * (g - S) > 0 and abs(gs) > 1e-3, (gm, gs)


def test_sid_gradient_flows_through_both_denoisers_inputs_not_their_weights():
    """SiD differentiates D_T and D_F at x_t w.r.t. x_t; the fake score's own weights get no gradient."""
    fake = torch.nn.Linear(1, 1)
    target = torch.nn.Linear(1, 1)

    class Wrap(torch.nn.Module):
        def __init__(self, lin):
            super().__init__()
            self.lin = lin

        def forward(self, x, sigma, labels=None):
            return self.lin(x)

    x0 = torch.randn(64, 1, requires_grad=True)
    f, t = Wrap(fake), Wrap(target)
    target.requires_grad_(False)
    out = SiDLoss(alpha=1.2, normalise=False)(x0, f, t)
    out.loss.mean().backward()
    assert x0.grad is not None and x0.grad.abs().sum() > 0
    assert fake.weight.grad is None and fake.weight.requires_grad  # untouched, and trainable again afterwards
    # with identity-slope denoisers the gradient differs from Diff-Instruct's detached one
    x1 = x0.detach().clone().requires_grad_(True)
    make_generator_loss("di")(x1, f, t).loss.mean().backward()
    assert not torch.allclose(x0.grad, x1.grad)


def test_sid_alpha_weighs_the_two_terms():
    torch.manual_seed(0)
    x0 = torch.randn(8, 2)
    fake, target = GaussianDenoiser(torch.zeros(2), 1.0), GaussianDenoiser(torch.ones(2), 0.5)
    losses = {}
    for alpha in (0.0, 1.0, 1.2):
        torch.manual_seed(1)
        losses[alpha] = SiDLoss(alpha=alpha, normalise=False)(x0, fake, target)
    gap2 = ((losses[0.0].d_target - losses[0.0].d_fake) ** 2).sum(1)
    # loss(alpha) = loss(0) - alpha ||D_T - D_F||^2, per sample
    torch.testing.assert_close(losses[1.2].loss, losses[0.0].loss - 1.2 * gap2)
    torch.testing.assert_close(losses[1.0].loss, losses[0.0].loss - gap2)


def test_sid_noise_cap_leaves_out_the_largest_levels():
    torch.manual_seed(0)
    full, capped = karras_sigma(20000, t_max=1.0), karras_sigma(20000, t_max=0.8)
    assert 79 < full.max() <= 80.0 and full.min() >= 0.002
    top = (0.002 ** (1 / 7) + 0.8 * (80 ** (1 / 7) - 0.002 ** (1 / 7))) ** 7  # about 24.2
    assert capped.max() <= top + 1e-4 and capped.max() > 0.95 * top
    with pytest.raises(ValueError, match="t_max"):
        SiDLoss(t_max=0.0)


def test_adversarial_head_separates_real_from_generated_and_guides_the_generator():
    from disback_pipeline.diffusion.backbones import build_network
    from disback_pipeline.diffusion.data import GaussianMixture2D
    from disback_pipeline.diffusion.losses import AdversarialTerm

    torch.manual_seed(0)
    ring = GaussianMixture2D.ring(8, 1.0, 0.05)
    fake = build_network({"backbone": "mlp", "dim": 2, "width": 32, "num_blocks": 1, "emb_dim": 16})
    before = [p.detach().clone() for p in fake.parameters()]
    gan = AdversarialTerm(fake, ring.sample(4)[0], hidden=32, P_mean=-2.0, P_std=0.5)
    opt = torch.optim.Adam(gan.head.parameters(), lr=3e-3)
    centre = lambda n: 0.1 * torch.randn(n, 2)  # noqa: E731 - a collapsed generator at the ring's centre
    first = None
    for _ in range(300):
        loss = gan.discriminator_loss(fake, ring.sample(256)[0], None, centre(256), None)
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = first if first is not None else loss.item()
    assert first == pytest.approx(2 * 0.6931, abs=0.1) and loss.item() < 0.5  # from chance to separated
    # the generator's adversarial loss is lower on real data than on the collapsed samples, and its gradient
    # on a sample at the centre points outwards, towards the ring
    assert gan.generator_loss(fake, ring.sample(512)[0]) < 0.5 * gan.generator_loss(fake, centre(512))
    x = torch.tensor([[0.3, 0.0], [0.0, -0.3], [-0.3, 0.0]], requires_grad=True)
    torch.manual_seed(1)
    gan.generator_loss(fake, x.repeat(200, 1)).backward()
    assert (-(x.grad * x.detach()).sum(1) > 0).all()  # descent direction has a positive outward component
    assert all(torch.equal(a, b) for a, b in zip(before, fake.parameters()))  # the fake score is not trained here
    assert all(p.requires_grad for p in fake.parameters())


def test_distill_with_adversarial_term_trains_the_head_and_keeps_the_default_unchanged():
    from disback_pipeline.diffusion.backbones import build_network
    from disback_pipeline.diffusion.checkpoint import Checkpoint
    from disback_pipeline.diffusion.data import GaussianMixture2D
    from disback_pipeline.diffusion.disback import distill

    ring = GaussianMixture2D.ring(4, 1.0, 0.1)
    tiny = {"backbone": "mlp", "dim": 2, "width": 16, "num_blocks": 1, "emb_dim": 8}
    torch.manual_seed(0)
    teacher = Checkpoint(build_network(tiny), dict(tiny), {})
    cfg = {"s_init": 1.0, "budget": 6, "batch_size": 16, "seed": 0, "log_every": 0, "device": "cpu",
           "lr_generator": 1e-3, "lr_fake": 1e-3, "keep": "last"}
    plain = distill(teacher, ring, None, cfg)
    off = distill(teacher, ring, None, {**cfg, "gan_weight": 0.0, "gan": {"hidden": 8}})
    on = distill(teacher, ring, None, {**cfg, "gan_weight": 0.1, "gan": {"hidden": 8}})
    same = [torch.equal(a, b) for a, b in zip(plain.generator.net.parameters(), off.generator.net.parameters())]
    moved = [torch.equal(a, b) for a, b in zip(plain.generator.net.parameters(), on.generator.net.parameters())]
    assert all(same) and not all(moved)
    assert all(torch.isfinite(torch.tensor(r["loss_generator"])) for r in on.history)
