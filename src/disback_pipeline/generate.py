"""Draw samples from a checkpoint: each sample reproducible from its seed alone.

    python -m disback_pipeline.generate data/base/06_models/generator_ema.pt --seeds 0-49999 --out samples.npz
    python -m disback_pipeline.generate data/base/06_models/teacher.pt --nfe 35 --seeds 0-63 --out grid/
    python -m disback_pipeline.generate student.pt --seeds 0-9 --class 3 --out three/   # conditional

``--out`` ending in .npz writes one uint8 NHWC array (``arr_0``); a folder gets
one PNG per seed (``000042.png``); 2-D data go to a .npy of float32 (N, 2).
A one-step student (``role: generator``) samples in one step; a teacher runs
the Heun sampler with ``--nfe`` evaluations. A student of a diffusers teacher takes the teacher's folder
(``--diffusers``): its text encoder embeds ``--prompt`` (every sample) or ``--prompts FILE`` (the i-th seed takes
the i-th prompt, cycling; a folder output gets ``prompts.csv``, seed and prompt), its VAE decodes the latents.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .diffusion.checkpoint import CheckpointError, load_checkpoint
from .diffusion.config import SamplerConfig
from .diffusion.training import select_device
from .evaluation.samples import check_class, draw, parse_seeds, shape_of, to_uint8, write_pngs

log = logging.getLogger("disback_pipeline.generate")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m disback_pipeline.generate", description=__doc__.split("\n")[0])
    ap.add_argument("checkpoint", help="one of our checkpoints (.pt): a student or a teacher")
    ap.add_argument("--seeds", default="0-63", help="seeds: ranges and lists, e.g. 0-49999 or 0,5,10-19")
    ap.add_argument("--out", required=True, help="folder (PNG per seed), file.npz (uint8 NHWC) or file.npy (2-D)")
    ap.add_argument("--batch", type=int, default=256, help="samples per batch (does not change the samples)")
    ap.add_argument("--class", dest="class_label", type=int, default=None, help="class of every sample")
    ap.add_argument("--nfe", type=int, default=35, help="Heun evaluations when the checkpoint is a teacher")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--diffusers", default=None, help="a diffusers teacher's folder: its text encoder embeds "
                    "--prompt, its VAE (if any) decodes the latents")
    text = ap.add_mutually_exclusive_group()
    text.add_argument("--prompt", default=None, help="text for every sample (with --diffusers; default: the empty one)")
    text.add_argument("--prompts", default=None, help="a prompts file (.txt one a line, .csv/.parquet a `prompt` "
                      "column): the i-th seed takes the i-th prompt, cycling (with --diffusers)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        seeds = parse_seeds(args.seeds)
        if args.batch < 1:
            raise ValueError(f"--batch must be >= 1, got {args.batch}")
        ckpt = load_checkpoint(args.checkpoint)
        check_class(ckpt, args.class_label)
        sampler = SamplerConfig(nfe=args.nfe)
        prompts = [args.prompt] if args.prompt is not None else None
        if args.prompts is not None:
            from .diffusion.data import read_prompts

            prompts = read_prompts(args.prompts)
        condition, decode = diffusers_parts(ckpt, args.diffusers, prompts)
    except (CheckpointError, ValueError, FileNotFoundError) as exc:
        log.error("%s", exc)
        return 2
    out = Path(args.out)
    vector = len(shape_of(ckpt)) == 1
    if vector != (out.suffix == ".npy"):
        log.error("--out %s: 2-D data go to a .npy file, images to a folder or an .npz file", out)
        return 2
    start, parts = time.perf_counter(), []
    with tqdm(total=len(seeds), desc="generate", disable=not sys.stderr.isatty()) as bar:
        for x in draw(ckpt, seeds, args.batch, args.class_label, select_device(args.device), sampler, condition):
            x = decode(x)
            parts.append(x.numpy().astype(np.float32) if vector else to_uint8(x))
            bar.update(len(x))
    elapsed = time.perf_counter() - start
    arr = np.concatenate(parts)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".npy":
        np.save(out, arr)
    elif out.suffix == ".npz":
        np.savez(out, arr_0=arr)
    else:
        write_pngs(out, seeds, arr)
        if args.prompts is not None:
            import pandas as pd

            pd.DataFrame({"seed": seeds, "prompt": [prompts[i % len(prompts)] for i in range(len(seeds))]}).to_csv(
                out / "prompts.csv", index=False)
    log.info("%d samples (%s) -> %s in %.1f s (%.0f samples/s)", len(seeds),
             "one step" if ckpt.metadata.get("role") == "generator" else f"Heun NFE {args.nfe}", out, elapsed,
             len(seeds) / elapsed)
    return 0


def diffusers_parts(ckpt, folder: str | None, prompts: list[str] | None):
    """For a student of a diffusers teacher: the prompts' embeddings (the empty prompt's without prompts; None for
    an unconditional model) and the latents' decoder (the identity for pixel models)."""
    if folder is None:
        if prompts is not None:
            raise ValueError("--prompt/--prompts need --diffusers FOLDER, the teacher's folder whose text encoder "
                             "embeds them")
        return None, lambda x: x
    if ckpt.config.get("backbone") != "diffusers":
        raise ValueError(f"--diffusers is for students of a diffusers teacher; {ckpt.config.get('backbone')!r} is not")
    from .diffusion.data import decode_latents
    from .diffusion.diffusers_teacher import encode_prompts, load_vae

    condition = None
    if ckpt.net.null_condition is not None:
        condition = encode_prompts(folder, prompts or [""])
    elif prompts is not None:
        raise ValueError("--prompt/--prompts given, but the model is not text-conditioned")
    if not (Path(folder) / "vae").is_dir():
        return condition, lambda x: x
    vae = load_vae(folder)
    return condition, lambda x: decode_latents(vae, x)


if __name__ == "__main__":
    sys.exit(main())
