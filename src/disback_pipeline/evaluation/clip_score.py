"""CLIP score of text-conditioned samples: 100 x the cosine of a CLIP model's image and text embeddings, floored at
0 and averaged over the samples (Hessel et al. 2021, as torchmetrics' ``CLIPScore`` reports it), with a local
CLIP model (a transformers ``CLIPModel`` folder holding its tokenizer; nothing is downloaded)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

# CLIP's input normalisation (the values its processor applies)
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


class ClipScoreError(FileNotFoundError):
    """No CLIP model where evaluation.clip_path points."""


def load_clip(path: str | Path):
    """The CLIP model and tokenizer of a local folder (``config.json`` of a CLIPModel, its tokenizer files)."""
    import transformers

    path = check_clip(path)
    model = transformers.CLIPModel.from_pretrained(path, local_files_only=True).eval()
    tokenizer = transformers.CLIPTokenizer.from_pretrained(path, local_files_only=True)
    return model, tokenizer


def check_clip(path: str | Path) -> Path:
    """``path`` when it holds a model, else the error that says how to provide one (checked before training)."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise ClipScoreError(f"evaluation.clip_path: no CLIP model at {path} (no config.json). Save one on a machine "
                             "with network access (transformers' CLIPModel.from_pretrained('openai/clip-vit-large-"
                             "patch14').save_pretrained(FOLDER), and its CLIPTokenizer likewise), copy the folder here "
                             "and set evaluation.clip_path to it; without it the CLIP score is left out, the FID runs")
    return path


@torch.no_grad()
def clip_score(model, tokenizer, images: torch.Tensor, prompts: list[str], batch_size: int = 64) -> float:
    """Mean CLIP score of ``images`` (N, C, H, W) in [-1, 1] against their ``prompts`` (N texts)."""
    if len(images) != len(prompts):
        raise ValueError(f"{len(images)} images and {len(prompts)} prompts: one prompt an image")
    size = int(model.config.vision_config.image_size)
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    scores = []
    for i in range(0, len(images), batch_size):
        x = (images[i:i + batch_size].float().clamp(-1, 1) + 1) / 2
        x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x  # grey images as RGB
        x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False)
        # CLIP's embeddings: each tower's pooled output through its projection
        image = model.visual_projection(model.vision_model(pixel_values=(x - mean) / std).pooler_output)
        ids = tokenizer(prompts[i:i + batch_size], padding="max_length", truncation=True,
                        max_length=tokenizer.model_max_length, return_tensors="pt")
        text = model.text_projection(model.text_model(input_ids=ids.input_ids,
                                                      attention_mask=ids.attention_mask).pooler_output)
        scores.append((100 * F.cosine_similarity(image, text, dim=-1)).clamp_min(0))
    return float(torch.cat(scores).mean())
