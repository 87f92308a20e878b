"""Self-attention in every image backbone goes through torch's fused attention kernel.

The fused kernels (flash / memory-efficient on CUDA, flash on the CPU) take only 4-D inputs with contiguous
channels; any other layout silently falls back to the unfused math path (two batched matmuls and a softmax),
which on an H200 took 16% of the bf16 stage-2 step's device time (benchmarks/gpu/). The CPU takes the same
dispatch decision, so this is checked here."""

import pytest
import torch
from torch.profiler import profile

from disback_pipeline.diffusion.backbones import build_network

CONFIGS = {
    "unet": {"backbone": "unet", "img_resolution": 8, "in_channels": 1, "label_dim": 0, "model_channels": 16,
             "channel_mult": [1, 2], "num_blocks": 1, "attn_resolutions": [4]},
    "songunet": {"backbone": "songunet", "img_resolution": 8, "in_channels": 3, "out_channels": 3, "label_dim": 0,
                 "model_channels": 16, "channel_mult": [1, 2], "num_blocks": 1, "attn_resolutions": [4]},
    "dhariwalunet": {"backbone": "dhariwalunet", "img_resolution": 8, "in_channels": 3, "out_channels": 3,
                     "label_dim": 0, "model_channels": 32, "channel_mult": [1, 2], "num_blocks": 1,
                     "attn_resolutions": [4]},
}


@pytest.mark.parametrize("name", CONFIGS)
def test_attention_takes_the_fused_kernel(name):
    cfg = CONFIGS[name]
    torch.manual_seed(0)
    net = build_network(cfg).eval()
    x = torch.randn(2, cfg["in_channels"], cfg["img_resolution"], cfg["img_resolution"])
    with torch.no_grad(), profile() as prof:
        net(x, torch.full((2,), 1.0))
    ops = {e.key for e in prof.key_averages()}
    assert "aten::scaled_dot_product_attention" in ops, f"{name}: no attention ran"
    assert "aten::_scaled_dot_product_attention_math" not in ops, f"{name}: attention fell back to the math path"
    assert any("flash_attention" in op or "efficient_attention" in op for op in ops), sorted(ops)
