"""Write a one-step student of a diffusers teacher as a diffusers model folder.

    python -m disback_pipeline.export_diffusers data/base/06_models/generator_ema.pt student/ --teacher FOLDER
    python -m disback_pipeline.export_diffusers generator_ema.pt student-lora/ --teacher FOLDER --lora

The folder holds the student's UNet (``unet/``, safetensors) and an ``EulerDiscreteScheduler`` for the one step
(``scheduler/``); the teacher folder's other components (VAE, text encoder, tokenizer) are copied beside them.
The student maps z to D_G(s_init z; s_init): one Euler step from sigma = s_init to 0 is exactly that, so with a
text-conditioned teacher and its VAE, diffusers' ``StableDiffusionPipeline`` loads the folder and draws the
student's images with

    pipe(prompt, sigmas=[s_init, 0.0], guidance_scale=1.0)   # s_init is in the folder's disback.json

(guidance is distilled into the student: the pipeline must not guide again). A student of an SDXL-class teacher
loads in ``StableDiffusionXLPipeline`` the same way (with ``add_watermarker=False`` where the invisible-watermark
package is installed). The same latents give the same images as ``python -m disback_pipeline.generate``
(tests/test_diffusers_teacher.py).

With ``--lora`` a student trained through LoRA adapters (``shared.trained_nets.lora_rank``) is written as LoRA
weights in diffusers' format instead (``pytorch_lora_weights.safetensors``), for the teacher's own pipeline:
``pipe.load_lora_weights(folder)``, then the same one-step call. The student holds its adapters folded in; each
adapted layer's difference from the teacher has the adapters' rank, so its truncated SVD gives them back exactly
(up to float32 rounding, at scale 1).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from pathlib import Path

from .diffusion.checkpoint import CheckpointError, load_checkpoint

log = logging.getLogger("disback_pipeline.export_diffusers")

COPIED = ("vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2")
SD = {"text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"]}
SDXL = {**SD, "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
        "tokenizer_2": ["transformers", "CLIPTokenizer"]}


def export(checkpoint: str | Path, out: str | Path, teacher: str | Path) -> Path:
    """Write ``checkpoint`` (a student of a diffusers teacher) to the folder ``out``; returns it."""
    import diffusers

    ckpt = load_checkpoint(checkpoint)
    if ckpt.config.get("backbone") != "diffusers" or ckpt.metadata.get("role") != "generator":
        raise CheckpointError(f"{checkpoint}: a {ckpt.metadata.get('role')} with backbone "
                              f"{ckpt.config.get('backbone')!r}; only one-step students of a diffusers teacher "
                              "(teacher.mode: diffusers) export as diffusers folders")
    teacher, out = Path(teacher), Path(out)
    if not (teacher / "scheduler/scheduler_config.json").is_file():
        raise CheckpointError(f"{teacher}: not the teacher's diffusers folder (no scheduler/scheduler_config.json)")
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty; name a new folder")
    s_init = float(ckpt.metadata["s_init"])
    out.mkdir(parents=True, exist_ok=True)
    ckpt.net.unet.save_pretrained(out / "unet")
    teacher_scheduler = json.loads((teacher / "scheduler/scheduler_config.json").read_text())
    # the teacher's schedule (betas), one Euler step: "trailing" spacing makes the initial noise sigmas.max(),
    # which is s_init when the pipeline is given sigmas=[s_init, 0]
    scheduler = diffusers.EulerDiscreteScheduler.from_config(
        teacher_scheduler, prediction_type=ckpt.net.prediction_type, timestep_spacing="trailing")
    scheduler.save_pretrained(out / "scheduler")
    for part in COPIED:
        if (teacher / part).is_dir():
            shutil.copytree(teacher / part, out / part)
    index = json.loads((teacher / "model_index.json").read_text()) if (teacher / "model_index.json").is_file() \
        else {}
    sdxl = getattr(ckpt.net, "text_time", None) is not None
    parts = SDXL if sdxl else SD
    if ckpt.net.null_condition is not None and all((out / p).is_dir() for p in ("vae", *parts)):
        index = {"_class_name": "StableDiffusionXLPipeline" if sdxl else "StableDiffusionPipeline",
                 "_diffusers_version": diffusers.__version__,
                 **{k: v for k, v in index.items() if not k.startswith("_")},
                 "vae": ["diffusers", "AutoencoderKL"], "unet": ["diffusers", "UNet2DConditionModel"], **parts,
                 "feature_extractor": [None, None], "image_encoder": [None, None]}
        index.update({"force_zeros_for_empty_prompt": index.get("force_zeros_for_empty_prompt", True)} if sdxl else
                     {"safety_checker": [None, None], "requires_safety_checker": False})
    index["scheduler"] = ["diffusers", "EulerDiscreteScheduler"]
    (out / "model_index.json").write_text(json.dumps(index, indent=2))
    (out / "disback.json").write_text(json.dumps({
        "s_init": s_init, "call": f"pipe(prompt, sigmas=[{s_init}, 0.0], guidance_scale=1.0)",
        "method": ckpt.metadata.get("method"), "loss": ckpt.metadata.get("loss"),
        "step": ckpt.metadata.get("step")}, indent=2))
    log.info("wrote %s (one step at sigma %g)", out, s_init)
    return out


def export_lora(checkpoint: str | Path, out: str | Path, teacher: str | Path) -> Path:
    """Write ``checkpoint`` (a student trained through LoRA) as LoRA weights in diffusers' format on top of the
    teacher folder's UNet; returns the folder."""
    import diffusers
    import torch
    from peft import LoraConfig
    from peft.tuners.lora import LoraLayer
    from peft.utils import get_peft_model_state_dict

    from .diffusion.diffusers_teacher import load_diffusers_teacher

    ckpt = load_checkpoint(checkpoint)
    rank, targets = ckpt.metadata.get("lora_rank"), ckpt.metadata.get("lora_targets")
    if ckpt.config.get("backbone") != "diffusers" or not rank:
        raise CheckpointError(f"{checkpoint}: not a student trained through LoRA adapters (no lora_rank in its "
                              "metadata); export the whole UNet (without --lora)")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty; name a new folder")
    unet = load_diffusers_teacher(teacher).unet
    student = ckpt.net.unet.state_dict()
    moved = [k for k, v in unet.state_dict().items() if not torch.equal(v, student[k])]
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=list(targets), init_lora_weights=True))
    adapted = {name: m for name, m in unet.named_modules() if isinstance(m, LoraLayer)}
    stray = [k for k in moved if k.rsplit(".", 1)[0] not in adapted]
    if stray:
        raise CheckpointError(f"{checkpoint}: its UNet differs from {teacher}'s outside the adapted layers ({stray[:3]}"
                              f"{' ...' if len(stray) > 3 else ''}); is --teacher the folder it was distilled from?")
    with torch.no_grad():
        for name, layer in adapted.items():
            base = layer.get_base_layer().weight
            u, s, vh = torch.linalg.svd((student[f"{name}.weight"] - base).double(), full_matrices=False)
            root = s[:rank].sqrt()
            layer.lora_B["default"].weight.copy_(u[:, :rank] * root)
            layer.lora_A["default"].weight.copy_(root[:, None] * vh[:rank])
    pipeline = diffusers.StableDiffusionXLPipeline if getattr(ckpt.net, "text_time", None) is not None \
        else diffusers.StableDiffusionPipeline
    pipeline.save_lora_weights(out, unet_lora_layers=get_peft_model_state_dict(unet))
    (out / "disback.json").write_text(json.dumps({
        "s_init": float(ckpt.metadata["s_init"]), "lora_rank": rank, "lora_targets": targets,
        "call": f"pipe.load_lora_weights(folder); pipe(prompt, sigmas=[{float(ckpt.metadata['s_init'])}, 0.0], "
                "guidance_scale=1.0) with an EulerDiscreteScheduler of timestep_spacing='trailing'",
        "method": ckpt.metadata.get("method"), "loss": ckpt.metadata.get("loss"),
        "step": ckpt.metadata.get("step")}, indent=2))
    log.info("wrote %s (LoRA rank %d on %d layers)", out, rank, len(adapted))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m disback_pipeline.export_diffusers",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("checkpoint", help="the student (.pt), e.g. data/base/06_models/generator_ema.pt")
    ap.add_argument("out", help="a new folder")
    ap.add_argument("--teacher", required=True, help="the teacher's diffusers folder (teacher.checkpoint_path)")
    ap.add_argument("--lora", action="store_true", help="LoRA weights in diffusers' format (a student trained "
                    "through LoRA) instead of a whole model folder")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        (export_lora if args.lora else export)(args.checkpoint, args.out, args.teacher)
    except (CheckpointError, FileExistsError) as exc:
        log.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
