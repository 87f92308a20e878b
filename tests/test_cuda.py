"""The CUDA path end to end on a tiny problem (skipped without a GPU)."""

import pytest
import torch

from disback_pipeline.diffusion.backbones import build_network
from disback_pipeline.diffusion.checkpoint import Checkpoint
from disback_pipeline.diffusion.config import DegradationConfig, SamplerConfig
from disback_pipeline.diffusion.data import GaussianMixture2D
from disback_pipeline.diffusion.degradation import record_degradation
from disback_pipeline.diffusion.disback import Callbacks, distill
from disback_pipeline.evaluation.features import FeatureSpec
from disback_pipeline.evaluation.quality import quality, sample_generator, sample_teacher

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

TINY = {"backbone": "mlp", "dim": 2, "width": 32, "num_blocks": 1, "emb_dim": 8}
SRC = GaussianMixture2D.ring(4, 1.0, 0.1)
SAMPLER = SamplerConfig(nfe=5)


def _teacher():
    torch.manual_seed(0)
    return Checkpoint(build_network(TINY), dict(TINY), {"role": "teacher"})


def test_samplers_follow_the_network_device_and_return_cpu_tensors():
    net = _teacher().net.cuda()
    x_t, tps_t = sample_teacher(net, SRC, 64, 0, SAMPLER)
    x_g, tps_g = sample_generator(net, SRC, 64, 0, 2.5)
    assert x_t.device.type == "cpu" and x_g.device.type == "cpu"
    assert x_t.shape == x_g.shape == (64, 2)
    assert tps_t > 0 and tps_g > 0
    # same latents on either device: the CUDA samples match the CPU ones
    x_cpu, _ = sample_generator(net.cpu(), SRC, 64, 0, 2.5)
    torch.testing.assert_close(x_g, x_cpu, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("bf16", [False, True])
def test_disback_on_cuda_with_proxy_evaluation(bf16):
    teacher = _teacher()
    deg = DegradationConfig(k1=8, n_nodes=2, lr=1e-2, batch_size=32, seed=0, spacing="iterations",
                            device="cuda", bf16=bf16, log_every=0)
    path, _ = record_degradation(teacher, SRC, deg, 2.5)
    seen = []

    def evaluate(gen):
        assert next(gen.parameters()).device.type == "cuda"
        x, _ = sample_generator(gen, SRC, 256, 0, 2.5)
        seen.append(quality(x, SRC, FeatureSpec("none"), {})["reverse_kl"])
        return {"quality": seen[-1]}

    cfg = {"loss": "dmd", "s_init": 2.5, "budget": 10, "k2": 3, "fake_steps": 1, "lr_generator": 1e-3,
           "lr_fake": 1e-3, "batch_size": 32, "seed": 0, "device": "cuda", "bf16": bf16, "log_every": 0,
           "eval_every": 5}
    res = distill(teacher, SRC, path, cfg, callbacks=Callbacks(evaluate=evaluate))
    assert len(seen) == 2 and all(torch.isfinite(torch.tensor(seen)))
    targets = [r["target"] for r in res.history]
    assert targets[0] != "teacher" and targets[-1] == "teacher"
