"""`compile: true`: how many graphs a compiled network needs.

Each graph of the ADM ImageNet-64 network took minutes to compile on the GPU machine, and torch stops compiling
a function after its recompile limit (8) and runs it eagerly from then on. A Python-number noise level is a
constant to the compiler, so every new value made a new graph: the one-step generator's s_init and each of the
Heun sampler's noise levels. Both now pass the level as a tensor. Traced here with a counting backend (no
code generation, so it runs in seconds); the real compiler's graphs are the same ones."""

import pytest
import torch
from torch._dynamo.testing import CompileCounter

from disback_pipeline.diffusion.backbones import build_network
from disback_pipeline.diffusion.checkpoint import Checkpoint
from disback_pipeline.diffusion.config import DistillConfig, from_dict
from disback_pipeline.diffusion.data import GaussianMixture2D
from disback_pipeline.diffusion.disback import _build_nets, fake_score_step, generator_step
from disback_pipeline.diffusion.losses import EDMLoss
from disback_pipeline.diffusion.sampling import heun_sampler

NET = {"backbone": "mlp", "dim": 2, "width": 32, "num_blocks": 1, "emb_dim": 8}


@pytest.fixture(autouse=True)
def _fresh_compiler():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_a_stage2_step_compiles_three_graphs_and_reuses_them():
    """The DMD step runs the shared forward in three states: without gradient with trainable weights (the
    generator's draw for the fake-score step), with gradient (the fake-score step, the generator step), and
    without gradient with frozen weights (teacher, fake score in the generator loss). Five before s_init went in
    as a tensor. Later steps compile nothing new."""
    torch.manual_seed(0)
    source = GaussianMixture2D.ring(4, 1.0, 0.1)
    teacher = Checkpoint(build_network(NET), dict(NET), {})
    cfg = from_dict(DistillConfig, {"loss": "dmd", "s_init": 2.5, "k2": 0, "batch_size": 16, "device": "cpu"},
                    "backtracking")
    dev = torch.device("cpu")
    nets = _build_nets(teacher, source, None, cfg, dev)
    counter = CompileCounter()
    for net in (nets.teacher, nets.generator, nets.fake, nets.scratch):
        net.compile(backend=counter)
    fake_loss, gen_loss = EDMLoss(cfg.fake_P_mean, cfg.fake_P_std, nets.fake.sigma_data), cfg.generator_loss()
    fake_score_step(nets, fake_loss, source, cfg, dev)
    generator_step(nets, gen_loss, nets.teacher, source, cfg, dev)
    assert counter.frame_count == 3
    for _ in range(2):
        fake_score_step(nets, fake_loss, source, cfg, dev)
        generator_step(nets, gen_loss, nets.teacher, source, cfg, dev)
    assert counter.frame_count == 3


def test_heun_sampling_compiles_one_graph_for_every_noise_level():
    torch.manual_seed(0)
    net, noise = build_network(NET).eval(), torch.randn(8, 2)
    eager = heun_sampler(net, noise, nfe=9)
    counter = CompileCounter()
    net.compile(backend=counter)
    compiled = heun_sampler(net, noise, nfe=9)
    assert counter.frame_count == 1  # nine evaluations at five noise levels, one graph
    torch.testing.assert_close(compiled, eager)
