"""Data sources. Each yields training batches (x, labels) with x scaled to about
[-1, 1] and labels one-hot (B, num_classes) or None when unconditional.

- ``gmm2d``: 2-D Gaussian mixtures with an exact sampler and exact log-density.
- ``digits``: scikit-learn's bundled 8x8 digits (1797 images, offline).
- ``image_folder``: a folder of PNG/JPEG files, resized and centre-cropped.
- ``torchvision``: MNIST, Fashion-MNIST or CIFAR-10 from a local root.
"""

from __future__ import annotations

import logging

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F


log = logging.getLogger(__name__)


class DataSourceError(ValueError):
    """A data source is misconfigured or its files are missing."""


class DataSource:
    """Common interface: ``shape``, ``num_classes`` and ``sample(n, generator)``."""

    name: str = ""
    shape: tuple[int, ...] = ()
    num_classes: int = 0
    conditional: bool = False

    @property
    def label_dim(self) -> int:
        return self.num_classes if self.conditional else 0

    def sample(self, n: int, generator: torch.Generator | None = None):
        raise NotImplementedError

    def one_hot(self, labels: torch.Tensor | None):
        if not self.conditional or labels is None:
            return None
        return F.one_hot(labels.long(), self.num_classes).float()

    def random_labels(self, n: int, generator: torch.Generator | None = None):
        """Class labels for generated samples (one-hot), or None if unconditional."""
        if not self.conditional:
            return None
        return self.one_hot(torch.randint(self.num_classes, (n,), generator=generator))


class GaussianMixture2D(DataSource):
    """Equal-weight isotropic 2-D Gaussian mixture.

    Args:
        means: (K, 2) component means (data units).
        std: per-axis standard deviation of every component (data units).
        conditional: treat the component index as a class label.
    """

    name = "gmm2d"
    shape = (2,)

    def __init__(self, means, std: float, conditional: bool = False):
        self.means = torch.as_tensor(np.asarray(means, dtype=np.float32))
        if self.means.ndim != 2 or self.means.shape[1] != 2 or len(self.means) == 0:
            raise DataSourceError(f"gmm2d means must have shape (K, 2), got {tuple(self.means.shape)}")
        if not std > 0:
            raise DataSourceError(f"gmm2d std must be > 0, got {std}")
        self.std = float(std)
        self.num_classes = len(self.means)
        self.conditional = bool(conditional)

    @classmethod
    def ring(cls, num_modes: int = 8, radius: float = 1.0, std: float = 0.05, conditional=False):
        angles = torch.arange(num_modes, dtype=torch.float64) * 2 * math.pi / num_modes
        means = torch.stack([angles.cos(), angles.sin()], dim=1) * radius
        return cls(means.numpy(), std, conditional)

    @classmethod
    def grid(cls, size: int = 5, spacing: float = 0.5, std: float = 0.05, conditional=False):
        ticks = (torch.arange(size, dtype=torch.float64) - (size - 1) / 2) * spacing
        means = torch.cartesian_prod(ticks, ticks)
        return cls(means.numpy(), std, conditional)

    def sample_with_components(self, n: int, generator=None):
        comp = torch.randint(len(self.means), (n,), generator=generator)
        x = self.means[comp] + self.std * torch.randn(n, 2, generator=generator)
        return x, comp

    def sample(self, n, generator=None):
        x, comp = self.sample_with_components(n, generator)
        return x, self.one_hot(comp)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Exact log-density of the mixture at points x (N, 2), in nats."""
        x = torch.as_tensor(x, dtype=torch.float64)
        means = self.means.to(torch.float64)
        sq = ((x[:, None, :] - means[None]) ** 2).sum(-1)
        log_comp = -sq / (2 * self.std**2) - math.log(2 * math.pi * self.std**2)
        return torch.logsumexp(log_comp, dim=1) - math.log(len(means))


class TensorImages(DataSource):
    """Images held in memory: x (N, C, H, W) in [-1, 1] and integer labels (N,) or None."""

    def __init__(self, name: str, images: torch.Tensor, labels=None, num_classes: int = 0,
                 conditional: bool = False):
        if images.ndim != 4 or len(images) == 0:
            raise DataSourceError(f"{name}: expected a non-empty (N, C, H, W) image tensor")
        if conditional and (labels is None or num_classes < 1):
            raise DataSourceError(f"{name}: conditional=true but the data set has no class labels "
                                  "(image_folder: put the images in one sub-folder per class)")
        self.name = name
        self.images = images.float().contiguous()
        self.labels = None if labels is None else torch.as_tensor(labels).long()
        self.num_classes = int(num_classes)
        self.conditional = bool(conditional)
        self.shape = tuple(images.shape[1:])

    def __len__(self):
        return len(self.images)

    def sample(self, n, generator=None):
        idx = torch.randint(len(self.images), (n,), generator=generator)
        labels = None if self.labels is None else self.labels[idx]
        return self.images[idx], self.one_hot(labels)


def load_digits_source(conditional: bool = False) -> TensorImages:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.as_tensor(digits.images, dtype=torch.float32)[:, None] / 16.0 * 2 - 1
    return TensorImages("digits", images, digits.target, 10, conditional)


def _resize_center_crop(img, resolution: int):
    from PIL import Image

    w, h = img.size
    scale = resolution / min(w, h)
    img = img.resize((max(resolution, round(w * scale)), max(resolution, round(h * scale))),
                     Image.BICUBIC)
    w, h = img.size
    left, top = (w - resolution) // 2, (h - resolution) // 2
    return img.crop((left, top, left + resolution, top + resolution))


IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}


def load_image_folder(path: str | Path, resolution: int, channels: int = 3, conditional: bool = False) -> TensorImages:
    """All PNG/JPEG files under ``path`` (recursively), resized and centre-cropped.

    Accepted: any size (the short side is resized to ``resolution``, then the
    centre is cropped) and any colour mode (grey, RGB, RGBA, palette: converted
    to ``channels``). A file with an image suffix that is not an image fails,
    naming it. When every image sits in a first-level sub-folder, the sorted
    sub-folder names are the classes (needed for ``conditional`` and the
    ``domain`` extractor).
    """
    from PIL import Image

    root = Path(path)
    if not root.is_dir():
        raise DataSourceError(
            f"image_folder: {root} does not exist or is not a folder; set data.path to a folder "
            "of PNG/JPEG images"
        )
    if channels not in (1, 3):
        raise DataSourceError(f"image_folder: channels must be 1 or 3, got {channels}")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataSourceError(f"image_folder: no .png/.jpg/.jpeg files found under {root}; put the images there "
                              "(sub-folders become class labels) or set data.path to the folder that holds them")
    if resolution < 1:
        raise DataSourceError(f"image_folder: resolution must be >= 1, got {resolution}")
    mode = "L" if channels == 1 else "RGB"
    arrays, converted, resized = [], 0, 0
    for f in files:
        try:
            with Image.open(f) as img:
                converted += img.mode != mode
                resized += img.size != (resolution, resolution)
                arrays.append(np.asarray(_resize_center_crop(img.convert(mode), resolution)))
        except (OSError, ValueError) as exc:  # PIL's UnidentifiedImageError is an OSError
            raise DataSourceError(f"image_folder: {f} is not a readable image ({exc}); remove it from {root} "
                                  "or replace it with a PNG/JPEG file") from exc
    if converted or resized:
        log.info("image_folder %s: %d of %d images converted to %s, %d resized/cropped to %dx%d", root, converted,
                 len(files), mode, resized, resolution, resolution)
    x = torch.as_tensor(np.stack(arrays), dtype=torch.float32)
    x = x[:, None] if channels == 1 else x.permute(0, 3, 1, 2)
    labels, num_classes = None, 0
    if all(len(f.relative_to(root).parts) >= 2 for f in files):
        classes = sorted({f.relative_to(root).parts[0] for f in files})
        labels = torch.tensor([classes.index(f.relative_to(root).parts[0]) for f in files])
        num_classes = len(classes)
    return TensorImages(f"image_folder:{root.name}", x / 127.5 - 1, labels, num_classes, conditional)


TORCHVISION_SETS = {
    "mnist": ("MNIST", 28, 1),
    "fashion_mnist": ("FashionMNIST", 28, 1),
    "cifar10": ("CIFAR10", 32, 3),
}


def load_torchvision(name: str, root: str | Path, resolution: int | None = None,
                     download: bool = False, conditional: bool = False) -> TensorImages:
    """MNIST / Fashion-MNIST / CIFAR-10 training split from a local root.

    Downloads only when ``download`` is true; otherwise a missing data set is an
    error that says where the files are expected.
    """
    if name not in TORCHVISION_SETS:
        raise DataSourceError(f"torchvision: unknown data set {name!r}; choose one of {sorted(TORCHVISION_SETS)}")
    cls_name, native, channels = TORCHVISION_SETS[name]
    if resolution is not None and int(resolution) != native:
        raise DataSourceError(
            f"torchvision: {name} images are {native}x{native}, but data.resolution is {resolution}; "
            f"set data.resolution to {native}"
        )
    import torchvision

    try:
        ds = getattr(torchvision.datasets, cls_name)(root=str(root), train=True, download=download)
    except RuntimeError as exc:
        raise DataSourceError(
            f"torchvision: {name} not found under {root} ({exc}). Place the data set files there "
            f"(torchvision's layout, e.g. {root}/{cls_name}/raw for MNIST) or set data.download: true "
            "on a machine with network access"
        ) from exc
    x = torch.as_tensor(np.asarray(ds.data), dtype=torch.float32)
    x = x[:, None] if x.ndim == 3 else x.permute(0, 3, 1, 2)
    if x.shape[1] != channels:
        raise DataSourceError(f"torchvision: {name} has {x.shape[1]} channels, expected {channels}")
    labels = torch.as_tensor(np.asarray(ds.targets))
    return TensorImages(name, x / 127.5 - 1, labels, 10, conditional)


def make_data_source(cfg: dict[str, Any]) -> DataSource:
    """Build the data source described by the ``data`` parameters."""
    cfg = dict(cfg)
    kind = cfg.get("source")
    conditional = bool(cfg.get("conditional", False))
    if kind == "gmm2d":
        layout = cfg.get("layout", "ring")
        std = float(cfg.get("std", 0.05))
        if layout == "ring":
            return GaussianMixture2D.ring(int(cfg.get("num_modes", 8)), float(cfg.get("radius", 1.0)),
                                          std, conditional)
        if layout == "grid":
            return GaussianMixture2D.grid(int(cfg.get("size", 5)), float(cfg.get("spacing", 0.5)),
                                          std, conditional)
        if layout == "custom":
            return GaussianMixture2D(cfg["means"], std, conditional)
        raise DataSourceError(f"gmm2d: unknown layout {layout!r}; choose ring, grid or custom")
    if kind == "digits":
        return load_digits_source(conditional)
    if kind == "image_folder":
        if "path" not in cfg or "resolution" not in cfg:
            raise DataSourceError("image_folder needs data.path and data.resolution")
        return load_image_folder(cfg["path"], int(cfg["resolution"]), int(cfg.get("channels", 3)), conditional)
    if kind == "torchvision":
        if "name" not in cfg or "root" not in cfg:
            raise DataSourceError("torchvision needs data.name and data.root")
        return load_torchvision(cfg["name"], cfg["root"], cfg.get("resolution"),
                                bool(cfg.get("download", False)), conditional)
    raise DataSourceError(
        f"unknown data.source {kind!r}; choose gmm2d, digits, image_folder or torchvision"
    )
