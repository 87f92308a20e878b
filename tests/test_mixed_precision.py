"""What the GPU step relies on, checked where it can be here.

Under CUDA's bf16 autocast ``group_norm`` is an fp32 operator: every normalisation of a bf16 activation became
a cast up, an fp32 norm and SiLU, and a cast down before the next convolution. The networks' group norms now run
in the input's dtype under autocast. CPU autocast does not upcast ``group_norm``, so the dtype decision itself is
checked on CUDA (skipped here); what the CPU can check: the same values outside autocast, bf16-rounding-sized
differences inside it, for every backbone. Also here: Adam fused only on CUDA, cuDNN autotuning on CUDA."""

import pytest
import torch
from torch.nn import functional as F

from disback_pipeline.diffusion.backbones import build_network
from disback_pipeline.diffusion.edm_networks import GroupNorm, group_norm
from disback_pipeline.diffusion.training import make_adam, select_device

from .test_attention import CONFIGS

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def test_group_norm_outside_autocast_is_torchs():
    torch.manual_seed(0)
    x, w, b = torch.randn(4, 64, 8, 8), torch.randn(64), torch.randn(64)
    assert torch.equal(group_norm(x, 16, w, b, 1e-5), F.group_norm(x, 16, w, b, 1e-5))


def test_group_norm_under_autocast_keeps_bf16_and_fp32_statistics():
    """A bf16 input stays bf16 and matches the fp32 norm to bf16 rounding (the statistics are accumulated in
    fp32 by torch's kernels): no larger error than rounding the fp32 result to bf16 would make, times two."""
    torch.manual_seed(0)
    x = (torch.randn(4, 64, 8, 8) * 3 + 1).bfloat16()
    norm = GroupNorm(64)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
        exact = F.group_norm(x.float(), norm.num_groups, norm.weight, norm.bias, norm.eps)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = norm(x)
    assert y.dtype == torch.bfloat16
    rounding = (exact.bfloat16().float() - exact).abs().max()
    assert (y.float() - exact).abs().max() <= 2 * rounding + 1e-6


@pytest.mark.parametrize("name", CONFIGS)
def test_backbones_under_bf16_autocast_follow_fp32(name):
    """Every image backbone, forward and backward under bf16 autocast, against fp32: close at bf16's precision
    (relative error of the output and of the input gradient a few percent at most, over a whole network)."""
    cfg = CONFIGS[name]
    torch.manual_seed(0)
    net = build_network(cfg)
    for p in net.parameters():  # EDM-style zero-initialised output layers would make every output zero
        torch.nn.init.normal_(p, std=0.2) if p.dim() > 1 else torch.nn.init.normal_(p, mean=0.0, std=0.05)
    x = torch.randn(4, cfg["in_channels"], cfg["img_resolution"], cfg["img_resolution"])
    noise = torch.full((4,), 0.5)

    def run(bf16: bool):
        xi = x.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = net(xi, noise)
        out.float().square().mean().backward()
        return out.detach().float(), xi.grad

    (out32, grad32), (out16, grad16) = run(False), run(True)
    assert out32.abs().mean() > 0.01  # the check is not of zeros
    assert (out16 - out32).norm() / out32.norm() < 0.05
    assert (grad16 - grad32).norm() / grad32.norm() < 0.1


def test_adam_is_fused_only_on_cuda():
    opt = make_adam(torch.nn.Linear(2, 2).parameters(), 1e-3)
    assert not opt.defaults["fused"]
    with pytest.raises(ValueError, match="learning rate"):
        make_adam(torch.nn.Linear(2, 2).parameters(), 0.0)


@pytest.mark.gpu
@cuda
def test_cuda_group_norm_stays_bf16_and_fused_adam_matches():
    torch.manual_seed(0)
    x = torch.randn(4, 64, 8, 8, device="cuda").bfloat16()
    norm = GroupNorm(64).cuda()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        assert F.group_norm(x, 16, norm.weight, norm.bias).dtype == torch.float32  # autocast's own choice
        assert norm(x).dtype == torch.bfloat16
    assert select_device("cuda").type == "cuda" and torch.backends.cudnn.benchmark
    nets = [torch.nn.Linear(8, 8).cuda() for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    fused = make_adam(nets[0].parameters(), 1e-2)
    plain = torch.optim.Adam(nets[1].parameters(), lr=1e-2, foreach=False)
    assert fused.defaults["fused"]
    for _ in range(3):
        for net, opt in ((nets[0], fused), (nets[1], plain)):
            opt.zero_grad()
            net(torch.ones(2, 8, device="cuda")).square().sum().backward()
            opt.step()
    for a, b in zip(nets[0].parameters(), nets[1].parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
