import pytest
import torch

from disback_pipeline.diffusion.backbones import build_network
from disback_pipeline.diffusion.config import ConfigError
from disback_pipeline.diffusion.data import GaussianMixture2D
from disback_pipeline.diffusion.losses import EDMLoss
from disback_pipeline.diffusion.teacher import network_config_for, pretrain_teacher
from disback_pipeline.diffusion.training import EMA, select_device

NET = {"backbone": "mlp", "width": 32, "num_blocks": 1, "emb_dim": 16}
TRAIN = {"steps": 15, "batch_size": 32, "lr": 1e-3, "ema_decay": 0.9, "log_every": 5, "lr_schedule": "constant",
         "warmup_steps": 0, "grad_clip": None}


def test_same_seed_gives_bit_identical_weights():
    src = GaussianMixture2D.ring(8, 1.0, 0.05)
    a, hist_a = pretrain_teacher(src, NET, TRAIN, seed=3)
    b, hist_b = pretrain_teacher(src, NET, TRAIN, seed=3)
    c, _ = pretrain_teacher(src, NET, TRAIN, seed=4)
    for (k, va), vb in zip(a.net.state_dict().items(), b.net.state_dict().values()):
        assert torch.equal(va, vb), k
    assert [h["loss"] for h in hist_a] == [h["loss"] for h in hist_b]
    assert not torch.equal(a.net.backbone.out.weight, c.net.backbone.out.weight)
    assert a.metadata == {"role": "teacher", "step": 15, "dataset": "gmm2d", "seed": 3}
    assert a.config["dim"] == 2 and a.config["label_dim"] == 0


def _held_out_loss(net, src):
    torch.manual_seed(123)
    x0, _ = src.sample(4096)
    with torch.no_grad():
        return EDMLoss()(net, x0).mean().item()


def test_training_reduces_held_out_dsm_loss():
    src = GaussianMixture2D.ring(8, 1.0, 0.05)
    untrained = build_network(network_config_for(src, NET))
    trained, _ = pretrain_teacher(src, NET, {**TRAIN, "steps": 200, "batch_size": 256, "ema_decay": 0.0}, seed=0)
    # much of the DSM loss is irreducible (about 2 per 2-D sample here), so the gap is modest but clear
    assert _held_out_loss(trained.net, src) < 0.9 * _held_out_loss(untrained, src)


def test_ema_update_is_a_convex_step():
    net = build_network({**NET, "dim": 2})
    ema = EMA(net, 0.75)
    before = ema.net.backbone.out.bias.clone()
    with torch.no_grad():
        net.backbone.out.bias.add_(1.0)
    ema.update(net)
    torch.testing.assert_close(ema.net.backbone.out.bias, before + 0.25)
    with pytest.raises(ValueError, match="EMA decay"):
        EMA(net, 1.0)


def test_ema_rampup_caps_the_half_life_at_a_share_of_the_steps_so_far():
    net = build_network({**NET, "dim": 2})
    ema = EMA(net, 0.999, rampup=0.1)
    assert ema.decay_at(None) == 0.999
    assert ema.decay_at(1) == pytest.approx(0.5 ** 10)  # half-life 0.1 steps: the EMA is the network
    assert ema.decay_at(100) == pytest.approx(0.5 ** 0.1)  # half-life 10 steps
    assert ema.decay_at(10_000) == 0.999  # the configured decay's half-life (693 steps) is shorter than 1000
    assert EMA(net, 0.99).decay_at(1) == 0.99  # rampup 0: the configured decay from the start
    before = ema.net.backbone.out.bias.clone()
    with torch.no_grad():
        net.backbone.out.bias.add_(1.0)
    ema.update(net, step=10)  # half-life 1 step: halfway
    torch.testing.assert_close(ema.net.backbone.out.bias, before + 0.5)
    with pytest.raises(ValueError, match="EMA rampup"):
        EMA(net, 0.9, rampup=-1.0)


def test_teacher_ema_rampup_follows_the_network_early_in_a_short_run():
    """``teacher.training.ema_rampup`` reaches the teacher's EMA: with a half-life of at most 1% of the steps so
    far, a 15-step teacher is the trained network itself (decay 0); without it, decay 0.999 keeps it near the
    initialisation."""
    src = GaussianMixture2D.ring(8, 1.0, 0.05)
    plain, _ = pretrain_teacher(src, NET, {**TRAIN, "ema_decay": 0.0}, seed=1)
    ramped, _ = pretrain_teacher(src, NET, {**TRAIN, "ema_decay": 0.999, "ema_rampup": 0.01}, seed=1)
    slow, _ = pretrain_teacher(src, NET, {**TRAIN, "ema_decay": 0.999, "ema_rampup": 0.0}, seed=1)

    def gap(a, b):
        return max((va - vb).abs().max().item() for va, vb in zip(a.net.parameters(), b.net.parameters()))

    # the last step's decay is 0.5 ** (1 / 0.15) ~ 0.01, so the EMA lags by about 1% of one Adam step (lr 1e-3)
    assert gap(ramped, plain) < 1e-4
    assert gap(slow, plain) > 100 * gap(ramped, plain)
    with pytest.raises(ConfigError, match="ema_rampup"):
        pretrain_teacher(src, NET, {**TRAIN, "ema_rampup": -0.1}, seed=1)


def test_device_choice():
    assert select_device("cpu").type == "cpu"
    assert select_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            select_device("cuda")


def test_network_config_checks_data_shape():
    src = GaussianMixture2D.ring(4, 1.0, 0.1, conditional=True)
    assert network_config_for(src, NET)["label_dim"] == 4
    with pytest.raises(ValueError, match="use backbone 'unet'"):
        network_config_for(type("Img", (), {"shape": (1, 8, 8), "label_dim": 0, "name": "x"})(), NET)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bf16_training_step():
    src = GaussianMixture2D.ring(8, 1.0, 0.05)
    ckpt, hist = pretrain_teacher(src, NET, TRAIN, seed=0, device="cuda", bf16=True)
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in hist)
