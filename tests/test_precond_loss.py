import math

import pytest
import torch

from disback_pipeline.diffusion.backbones import build_network
from disback_pipeline.diffusion.losses import EDMLoss, make_generator_loss
from disback_pipeline.diffusion.precond import EDMPrecond, edm_coefficients


class ConstBackbone(torch.nn.Module):
    """F(x, c_noise) = x_in + c_noise, so D can be computed by hand."""

    def forward(self, x, c_noise, labels=None):
        self.seen = (x.clone(), c_noise.clone())
        return x + c_noise.reshape(-1, *[1] * (x.ndim - 1))


def test_coefficients_by_hand():
    c_skip, c_out, c_in, c_noise = edm_coefficients(torch.tensor([1.0, 2.0]), 0.5)
    # sigma = 1: sd^2 / (1 + 0.25) = 0.2; 1*0.5/sqrt(1.25); 1/sqrt(1.25); ln 1 / 4 = 0
    assert c_skip[0].item() == pytest.approx(0.2)
    assert c_out[0].item() == pytest.approx(0.5 / math.sqrt(1.25))
    assert c_in[0].item() == pytest.approx(1 / math.sqrt(1.25))
    assert c_noise[0].item() == pytest.approx(0.0)
    assert c_skip[1].item() == pytest.approx(0.25 / 4.25)
    assert c_noise[1].item() == pytest.approx(math.log(2.0) / 4)


def test_precond_combines_skip_and_backbone():
    net = EDMPrecond(ConstBackbone(), sigma_data=0.5)
    x = torch.tensor([[1.0, -2.0]])
    out = net(x, 2.0)
    c_in = 1 / math.sqrt(4.25)
    expected = (0.25 / 4.25) * x + (2 * 0.5 / math.sqrt(4.25)) * (c_in * x + math.log(2) / 4)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(net.backbone.seen[0], c_in * x)


def test_edm_loss_matches_hand_value():
    net = EDMPrecond(ConstBackbone(), sigma_data=0.5)
    x0 = torch.tensor([[0.5, 0.0], [0.0, 1.0]])
    sigma = torch.tensor([1.0, 1.0])
    noise = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    loss = EDMLoss()(net, x0, sigma=sigma, noise=noise)
    assert loss.shape == (2,)
    xs = x0 + noise
    d = 0.2 * xs + (0.5 / math.sqrt(1.25)) * (xs / math.sqrt(1.25))
    weight = (1 + 0.25) / 0.25
    expected = weight * ((d - x0) ** 2).sum(1)
    torch.testing.assert_close(loss, expected)


def test_edm_loss_sigma_is_lognormal():
    torch.manual_seed(0)
    seen = []

    class Spy(torch.nn.Module):
        def forward(self, x, sigma, labels=None):
            seen.append(sigma)
            return x

    EDMLoss(P_mean=-1.2, P_std=1.2)(Spy(), torch.zeros(20000, 2))
    log_sigma = seen[0].log()
    assert log_sigma.mean().item() == pytest.approx(-1.2, abs=0.03)
    assert log_sigma.std().item() == pytest.approx(1.2, abs=0.03)


class _Fixed(torch.nn.Module):
    """A 'denoiser' that returns a fixed output whatever its input."""

    def __init__(self, out):
        super().__init__()
        self.out = out

    def forward(self, x, sigma, labels=None):
        return self.out.expand_as(x)


def test_score_distillation_gradient_is_score_difference():
    x0 = torch.tensor([[1.0, 2.0]], requires_grad=True)
    d_fake, d_target = torch.tensor([[0.5, 0.0]]), torch.tensor([[0.0, 1.0]])
    make_generator_loss("di")(x0, _Fixed(d_fake), _Fixed(d_target)).loss.sum().backward()
    torch.testing.assert_close(x0.grad, d_fake - d_target)
    x0.grad = None
    make_generator_loss("dmd")(x0, _Fixed(d_fake), _Fixed(d_target)).loss.sum().backward()
    scale = (x0.detach() - d_target).abs().mean()
    torch.testing.assert_close(x0.grad, (d_fake - d_target) / scale)
    with pytest.raises(ValueError, match="unknown score-distillation loss 'vsd'"):
        make_generator_loss("vsd")


def test_unknown_backbone_is_named():
    with pytest.raises(ValueError, match="unknown backbone 'resnet'"):
        build_network({"backbone": "resnet"})
    with pytest.raises(ValueError, match="bad arguments for backbone 'mlp'"):
        build_network({"backbone": "mlp", "depth": 3})


@pytest.mark.parametrize("label_dim", [0, 3])
def test_backbones_shapes_and_labels(label_dim):
    mlp = build_network({"backbone": "mlp", "dim": 2, "width": 16, "num_blocks": 1, "emb_dim": 8,
                         "label_dim": label_dim})
    unet = build_network({"backbone": "unet", "img_resolution": 8, "in_channels": 1, "model_channels": 8,
                          "channel_mult": [1, 2], "attn_resolutions": [4], "label_dim": label_dim})
    labels = torch.eye(3)[[0, 1]] if label_dim else None
    assert mlp(torch.randn(2, 2), torch.tensor([0.5, 2.0]), labels).shape == (2, 2)
    assert unet(torch.randn(2, 1, 8, 8), 1.0, labels).shape == (2, 1, 8, 8)
    if label_dim:  # labels change the output once the output layer is non-zero
        torch.nn.init.normal_(unet.backbone.conv_out.weight)
        x = torch.randn(1, 1, 8, 8)
        a = unet(x, 1.0, torch.eye(3)[[0]])
        b = unet(x, 1.0, torch.eye(3)[[2]])
        assert not torch.allclose(a, b)
