"""Stage 2's step on a text-to-image UNet: an SD-1.5-size or SDXL-size UNet2DConditionModel with random weights,
whole or through LoRA, with or without gradient checkpointing: generated images/s and peak memory.

    python benchmarks/t2i_step.py --size sd15 --lanes full,lora --batch 4,8,16      # CUDA, bf16
    python benchmarks/t2i_step.py --size sdxl --lanes lora+gc --batch 4             # does SDXL fit one card?
    python benchmarks/t2i_step.py --size tiny --lanes full,lora,lora+gc --batch 2   # the code path on the CPU

The UNets are built from their published configs (benchmarks/t2i_memory.py) with random weights and wrapped as the
project's denoiser on SD's schedule; the prompts are random embeddings of the text encoders' shape (SDXL: packed
with a pooled embedding and the size ids), guidance 1.75 on the target. A step is the project's own
``fake_score_step`` and ``generator_step`` (DMD loss, bf16 autocast on CUDA), as stage 2 runs them, with the
networks ``_build_nets`` makes (LoRA copies sharing the teacher's tensors). One JSON line a lane and batch; a lane
that runs out of memory says so in its line (``"oom": true``) and the next one runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import t2i_memory  # noqa: E402

SIZES = {  # UNet config, latent side, tokens, text width, pooled width (SDXL)
    "sd15": (t2i_memory.SD15, 64, 77, 768, None),
    "sdxl": (t2i_memory.SDXL, 128, 77, 2048, 1280),
    "tiny": ({"sample_size": 8, "in_channels": 4, "out_channels": 4, "layers_per_block": 1,
              "block_out_channels": (8, 16), "norm_num_groups": 4, "cross_attention_dim": 8, "attention_head_dim": 2,
              "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
              "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D")}, 8, 4, 8, None),
}
LANES = {"full": {}, "full+gc": {"gradient_checkpointing": True}, "lora": {"lora_rank": 64},
         "lora+gc": {"lora_rank": 64, "gradient_checkpointing": True}}


def build(size: str, device: str):
    """The teacher (random weights) and a source of random prompt embeddings of the size's shapes."""
    import diffusers

    from disback_pipeline.diffusion.checkpoint import Checkpoint
    from disback_pipeline.diffusion.data import DataSource
    from disback_pipeline.diffusion.diffusers_teacher import VPDenoiser, network_config, pack_text_time
    from disback_pipeline.tiny_t2i import SD_BETAS

    config, side, tokens, width, pooled = SIZES[size]
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(**config)
    g = torch.Generator().manual_seed(1)
    prompts = torch.randn(8, tokens, width, generator=g)
    text_time = None
    if pooled:
        ids = torch.tensor([[side * 8, side * 8, 0, 0, side * 8, side * 8]], dtype=torch.float32)
        prompts = pack_text_time(prompts, torch.randn(8, pooled, generator=g), ids)
        text_time = (tokens, pooled)
    null = torch.zeros_like(prompts[:1])
    net = VPDenoiser(unet, diffusers.DDPMScheduler(**SD_BETAS).alphas_cumprod, "epsilon", null_condition=null,
                     text_time=text_time).to(device)

    class RandomPrompts(DataSource):
        """Only shapes and prompt embeddings matter: the step never reads real images."""

        def __init__(self):
            self.name, self.shape = "random-prompts", (4, side, side)
            self.with_prompts([f"prompt {i}" for i in range(len(prompts))], prompts)

    return Checkpoint(net, network_config(net), {}), RandomPrompts()


def run_lane(size: str, lane: str, batch: int, iterations: int, device: str, guidance: float = 1.75) -> dict:
    from disback_pipeline.diffusion import disback, losses, training
    from disback_pipeline.diffusion.config import DistillConfig, TrainedNetsConfig, from_dict
    from disback_pipeline.diffusion.diffusers_teacher import guided

    cfg = from_dict(DistillConfig, {"loss": "dmd", "s_init": 14.6146, "k2": 0, "lr_generator": 1e-5,
                                    "lr_fake": 1e-5, "batch_size": batch, "device": device,
                                    "bf16": device == "cuda", "guidance_scale": guidance}, "backtracking")
    cfg = dataclasses.replace(cfg, trained_nets=TrainedNetsConfig(**LANES[lane]))
    out = {"size": size, "lane": lane, "batch": batch, "device": torch.cuda.get_device_name() if device == "cuda"
           else "cpu", "torch": torch.__version__, "guidance_scale": guidance}
    nets = None
    try:
        teacher, source = build(size, device)
        out["unet_parameters"] = sum(p.numel() for p in teacher.net.unet.parameters())
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        dev = training.select_device(device)
        nets = disback._build_nets(teacher, source, None, cfg, dev)
        out["trained_parameters"] = sum(p.numel() for p in nets.generator.parameters() if p.requires_grad)
        fake_loss = losses.EDMLoss(cfg.fake_P_mean, cfg.fake_P_std, nets.fake.sigma_data)
        gen_loss, target = cfg.generator_loss(), guided(nets.teacher, guidance)

        def step():
            disback.fake_score_step(nets, fake_loss, source, cfg, dev)
            disback.generator_step(nets, gen_loss, target, source, cfg, dev)

        step()  # warm-up: allocations, cuDNN's algorithm search
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(iterations):
            step()
        if device == "cuda":
            torch.cuda.synchronize()
        it_s = iterations / (time.perf_counter() - start)
        out.update(iterations=iterations, iterations_per_s=it_s, generated_images_per_s=it_s * batch * 2, oom=False)
    except torch.OutOfMemoryError:
        out.update(oom=True)
    finally:
        nets = None  # the networks freed before the next lane
    if device == "cuda":
        out["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
        torch.cuda.empty_cache()
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="sd15")
    ap.add_argument("--lanes", default="full,lora", help=f"comma list of {', '.join(LANES)}")
    ap.add_argument("--batch", default="4,8,16", help="comma list of per-step batch sizes")
    ap.add_argument("--iterations", type=int, default=5)
    ap.add_argument("--label", default="", help="a name for the code timed (e.g. its commit), copied to every line")
    args = ap.parse_args(argv)
    unknown = [lane for lane in args.lanes.split(",") if lane not in LANES]
    if unknown:
        ap.error(f"unknown lane(s) {unknown}; choose from {', '.join(LANES)}")
    device = "cuda" if torch.cuda.is_available() and args.size != "tiny" else "cpu"
    for lane in args.lanes.split(","):
        for batch in (int(b) for b in args.batch.split(",")):
            row = {"label": args.label, **run_lane(args.size, lane, batch, args.iterations, device)}
            sys.stdout.write(json.dumps(row) + "\n")
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
