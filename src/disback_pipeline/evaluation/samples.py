"""Samples drawn seed by seed, and written or read as users of EDM expect.

Each sample depends on its seed alone: its latent (and, for a conditional
model without a fixed class, its label) come from a generator seeded with it,
so a seed range drawn in any batch size gives the same samples. Images are
written as PNG files or one .npz of uint8 NHWC (``arr_0``, like EDM's
reference batches); 2-D data as .npy.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from ..diffusion.checkpoint import Checkpoint
from ..diffusion.config import SamplerConfig
from ..diffusion.sampling import heun_sampler, one_step_generate


def parse_seeds(text: str) -> list[int]:
    """``"0-3,7,10-11"`` -> [0, 1, 2, 3, 7, 10, 11] (ranges inclusive, as EDM's generate)."""
    seeds: list[int] = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        try:
            seeds.extend(range(int(lo), int(hi) + 1) if sep else [int(lo)])
        except ValueError:
            raise ValueError(f"seeds must be integers or ranges like 0-49999, got {part!r}") from None
    if not seeds or min(seeds) < 0:
        raise ValueError(f"seeds must name at least one seed >= 0, got {text!r}")
    return seeds


def _latent_and_label(seed: int, shape, label_dim: int, fixed_class: int | None):
    gen = torch.Generator().manual_seed(int(seed))
    z = torch.randn(shape, generator=gen)
    if not label_dim:
        return z, None
    cls = fixed_class if fixed_class is not None else int(torch.randint(label_dim, (1,), generator=gen))
    return z, torch.nn.functional.one_hot(torch.tensor(cls), label_dim).float()


def shape_of(ckpt: Checkpoint) -> tuple[int, ...]:
    cfg = ckpt.config
    return (int(cfg["dim"]),) if "dim" in cfg else (int(cfg["in_channels"]), int(cfg["img_resolution"]),
                                                    int(cfg["img_resolution"]))


def check_class(ckpt: Checkpoint, class_label: int | None) -> int:
    """The model's number of classes, after checking that ``class_label`` fits it."""
    label_dim = int(ckpt.config.get("label_dim", 0))
    if class_label is not None and not 0 <= class_label < max(label_dim, 1):
        raise ValueError(f"--class {class_label} is out of range: the model has {label_dim} classes"
                         if label_dim else "--class given, but the model is unconditional")
    return label_dim


@torch.no_grad()
def draw(ckpt: Checkpoint, seeds: list[int], batch: int = 64, class_label: int | None = None,  # noqa: PLR0913
         device: str | torch.device = "cpu", sampler: SamplerConfig | None = None,
         condition: torch.Tensor | None = None) -> Iterator[torch.Tensor]:
    """Samples of ``ckpt`` for ``seeds``, ``batch`` at a time (CPU tensors in data units).

    ``condition`` (k, tokens, width), prompt embeddings, conditions the samples of a text-conditioned model: the
    i-th seed's sample takes row i mod k (one row: every sample the same prompt).

    A one-step generator (``role: generator``) maps each latent in one step at its ``s_init``; a teacher
    runs the Heun sampler (``sampler``, NFE 35 by default). Vector data are computed one sample at a time
    inside each batch, since a matrix product's rounding depends on the batch size; image networks give the
    same output per sample whatever the batch.
    """
    label_dim = check_class(ckpt, class_label)
    net = ckpt.net.to(device).eval()
    one_step = ckpt.metadata.get("role") == "generator"
    shape = shape_of(ckpt)
    for i in range(0, len(seeds), batch):
        pairs = [_latent_and_label(s, shape, label_dim, class_label) for s in seeds[i:i + batch]]
        z = torch.stack([p[0] for p in pairs]).to(device)
        labels = torch.stack([p[1] for p in pairs]).to(device) if label_dim else None
        if condition is not None:
            labels = condition[[(i + j) % len(condition) for j in range(len(z))]].to(device)
        chunks = [slice(j, j + 1) for j in range(len(z))] if len(shape) == 1 else [slice(0, len(z))]
        out = []
        for c in chunks:
            lab = None if labels is None else labels[c]
            if one_step:
                out.append(one_step_generate(net, z[c], float(ckpt.metadata["s_init"]), lab))
            else:
                s = sampler or SamplerConfig()
                out.append(heun_sampler(net, z[c], lab, nfe=s.nfe, sigma_min=s.sigma_min, sigma_max=s.sigma_max,
                                        rho=s.rho))
        yield torch.cat(out).cpu()


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] -> (N, H, W, C) uint8."""
    x = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


def write_pngs(folder: Path, seeds: list[int], images: np.ndarray) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for seed, img in zip(seeds, images):
        Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(folder / f"{seed:06d}.png")


def read_images(path: str | Path) -> torch.Tensor:
    """A folder of PNG/JPEG files (sorted by name) or an .npz (``arr_0`` uint8 NHWC) as (N, C, H, W) in [-1, 1]."""
    path = Path(path)
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as npz:
            if "arr_0" not in npz.files:
                raise ValueError(f"{path}: no arr_0 array (expected uint8 NHWC images, as EDM's .npz batches)")
            arr = npz["arr_0"]
    elif path.is_dir():
        from PIL import Image

        files = sorted(p for p in path.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
        if not files:
            raise ValueError(f"{path}: no .png or .jpg files")
        arr = np.stack([np.asarray(Image.open(f)) for f in files])
    else:
        raise FileNotFoundError(f"{path} is neither a folder of images nor an .npz file")
    if arr.dtype != np.uint8 or arr.ndim not in (3, 4):
        raise ValueError(f"{path}: expected uint8 images (N, H, W[, C]), got {arr.dtype} {arr.shape}")
    arr = arr[..., None] if arr.ndim == 3 else arr
    # the strides of a fresh NCHW tensor whatever the source (see features.standard_layout)
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float().clone(memory_format=torch.contiguous_format) \
        / 127.5 - 1.0
