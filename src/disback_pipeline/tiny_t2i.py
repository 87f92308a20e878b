"""Write a tiny, randomly initialised latent text-to-image model in diffusers' folder layout.

    python -m disback_pipeline.tiny_t2i data/01_raw/tiny_t2i      # what `--env tiny_t2i` reads
    kedro run --pipelines=distill --env tiny_t2i

The folder has what a Stable Diffusion folder has, at a size that trains in seconds on a CPU: ``unet/`` (a
``UNet2DConditionModel`` of 8 and 16 channels on 4x4x4 latents), ``vae/`` (an ``AutoencoderKL`` from 8x8 grey
images to those latents), ``text_encoder/`` (a 2-layer CLIP text model of width 8), ``tokenizer/`` (a CLIP
tokenizer whose vocabulary is the letters: each word becomes its letters), ``scheduler/`` (SD's DDPM betas,
epsilon prediction), plus ``clip/`` (a tiny CLIP model for the CLIP score) and ``prompts.txt``. The weights are
random: it exercises every mechanism of a latent text-to-image teacher (latents, prompts, guidance, LoRA, export,
resume) and says nothing about image quality. ``--sdxl`` writes SDXL's layout instead (two text encoders, the
pooled embedding and size conditions). Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import logging
import string
import sys
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SD_BETAS = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}
PROMPTS = ("a handwritten zero", "a handwritten seven", "a thin one", "a round eight")


def tiny_unet(conditional: bool = False, sample_size: int = 8):
    """A 2-level diffusers UNet (8 and 16 channels), 4 channels in and out; cross-attention on width-8 text when
    ``conditional``."""
    import diffusers

    torch.manual_seed(0)
    common = {"sample_size": sample_size, "in_channels": 4, "out_channels": 4, "layers_per_block": 1,
              "block_out_channels": (8, 16), "norm_num_groups": 4}
    if conditional:
        return diffusers.UNet2DConditionModel(**common, cross_attention_dim=8, attention_head_dim=2,
                                              down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                              up_block_types=("CrossAttnUpBlock2D", "UpBlock2D")).eval()
    return diffusers.UNet2DModel(**common, attention_head_dim=4, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                                 up_block_types=("AttnUpBlock2D", "UpBlock2D")).eval()


def tiny_vae(channels: int = 1):
    """A 2-level AutoencoderKL: 8x8 images of ``channels`` channels to 4x4x4 latents."""
    import diffusers

    torch.manual_seed(2)
    return diffusers.AutoencoderKL(in_channels=channels, out_channels=channels, latent_channels=4,
                                   down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
                                   up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
                                   block_out_channels=(8, 16), norm_num_groups=4, layers_per_block=1).eval()


def char_tokenizer(root: Path):
    """A CLIP tokenizer whose vocabulary is the letters (each word becomes its letters), written to ``root``;
    returns it and its vocabulary size."""
    import transformers

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in string.ascii_lowercase:
        vocab[c], vocab[c + "</w>"] = len(vocab), len(vocab) + 1
    root.mkdir(parents=True, exist_ok=True)
    (root / "vocab.json").write_text(json.dumps(vocab))
    (root / "merges.txt").write_text("#version: 0.2\n")
    return transformers.CLIPTokenizer(str(root / "vocab.json"), str(root / "merges.txt"), model_max_length=16,
                                      pad_token="<|endoftext|>", unk_token="<|endoftext|>"), len(vocab)


def text_config(vocab_size: int, hidden: int = 8, layers: int = 2) -> dict:
    return {"vocab_size": vocab_size, "hidden_size": hidden, "intermediate_size": 2 * hidden,
            "num_hidden_layers": layers, "num_attention_heads": 2, "max_position_embeddings": 16, "bos_token_id": 0,
            "eos_token_id": 1, "pad_token_id": 1}


def save_folder(root: Path, unet, scheduler) -> None:
    """A diffusers model folder; a text-conditioned UNet gets a tiny CLIP text encoder (2 layers, width 8) and the
    letters tokenizer."""
    import transformers

    root = Path(root)
    unet.save_pretrained(root / "unet")
    scheduler.save_pretrained(root / "scheduler")
    (root / "model_index.json").write_text(json.dumps({"_class_name": "DiffusionPipeline"}))
    if getattr(unet.config, "cross_attention_dim", None):
        tokenizer, vocab_size = char_tokenizer(root / "vocab")
        tokenizer.save_pretrained(root / "tokenizer")
        torch.manual_seed(1)
        transformers.CLIPTextModel(transformers.CLIPTextConfig(**text_config(vocab_size))).save_pretrained(
            root / "text_encoder")


def save_clip(root: Path) -> None:
    """A tiny CLIP model (vision: 8x8 images in 4x4 patches; text: the letters) and its tokenizer in ``root``."""
    import transformers

    root = Path(root)
    tokenizer, vocab_size = char_tokenizer(root / "vocab")
    torch.manual_seed(3)
    config = transformers.CLIPConfig(
        text_config=text_config(vocab_size, layers=1),
        vision_config={"hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "image_size": 8, "patch_size": 4},
        projection_dim=8)
    transformers.CLIPModel(config).save_pretrained(root)
    tokenizer.save_pretrained(root)


def save_latent_t2i(root: Path) -> None:
    """The tiny latent text-to-image folder: VAE (8x8 grey images to 4x4x4 latents), text-conditioned UNet,
    epsilon prediction on SD's betas."""
    import diffusers

    root = Path(root)
    save_folder(root, tiny_unet(conditional=True, sample_size=4),
                diffusers.DDPMScheduler(**SD_BETAS, prediction_type="epsilon"))
    tiny_vae().save_pretrained(root / "vae")


def save_sdxl(root: Path) -> None:
    """A tiny SDXL-layout folder: a UNet2DConditionModel with SDXL's added conditions (``text_time``: the pooled
    text embedding and six size ids, each id embedded in 4 dimensions), two CLIP text encoders of width 8 (the
    second with an 8-wide projection, the pooled embedding), their tokenizers, the tiny VAE and SD's betas."""
    import diffusers
    import transformers

    root = Path(root)
    torch.manual_seed(4)
    diffusers.UNet2DConditionModel(
        sample_size=4, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16), norm_num_groups=4,
        cross_attention_dim=16, attention_head_dim=2, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), addition_embed_type="text_time",
        addition_time_embed_dim=4, projection_class_embeddings_input_dim=8 + 6 * 4).save_pretrained(root / "unet")
    diffusers.DDPMScheduler(**SD_BETAS, prediction_type="epsilon").save_pretrained(root / "scheduler")
    tiny_vae().save_pretrained(root / "vae")
    for i, (tok, enc) in enumerate((("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2"))):
        tokenizer, vocab_size = char_tokenizer(root / f"vocab{i}")
        tokenizer.save_pretrained(root / tok)
        torch.manual_seed(5 + i)
        if i == 0:
            transformers.CLIPTextModel(transformers.CLIPTextConfig(**text_config(vocab_size))).save_pretrained(
                root / enc)
        else:
            transformers.CLIPTextModelWithProjection(transformers.CLIPTextConfig(
                **text_config(vocab_size), projection_dim=8)).save_pretrained(root / enc)
    (root / "model_index.json").write_text(json.dumps({  # loads in diffusers' StableDiffusionXLPipeline
        "_class_name": "StableDiffusionXLPipeline", "force_zeros_for_empty_prompt": True,
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
        "scheduler": ["diffusers", "DDPMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
        "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "tokenizer_2": ["transformers", "CLIPTokenizer"],
        "feature_extractor": [None, None], "image_encoder": [None, None]}, indent=2))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m disback_pipeline.tiny_t2i", description=__doc__.split("\n")[0])
    ap.add_argument("out", help="folder to write (replaced files inside it; a diffusers model folder)")
    ap.add_argument("--sdxl", action="store_true", help="the SDXL layout: two text encoders, pooled embedding and "
                                                        "size conditions")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = Path(args.out)
    (save_sdxl if args.sdxl else save_latent_t2i)(out)
    save_clip(out / "clip")
    (out / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    log.info("tiny latent text-to-image model -> %s (unet, vae, text_encoder, tokenizer, scheduler, clip, "
             "prompts.txt)", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
