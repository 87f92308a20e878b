"""Feature extractors for FID.

- ``domain``: a small CNN classifier trained on the data set itself; its
  penultimate activations are the features. Works offline on any labelled
  image source (e.g. digits), and reports its held-out accuracy.
- ``inception``: clean-fid's Inception torchscript, read from a local file
  (inception-2015-12-05.pt); never downloaded.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..diffusion.data import TensorImages

log = logging.getLogger(__name__)

INCEPTION_FILE = "inception-2015-12-05.pt"


class DomainClassifier(nn.Module):
    """Conv net: two conv stages, global average pool, ``feature_dim`` features, logits."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 32, feature_dim: int = 64):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.SiLU(),
            nn.Conv2d(width, width, 3, padding=1), nn.SiLU(), nn.AvgPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.SiLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(2 * width, feature_dim), nn.SiLU(),
        )
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@dataclass
class TrainedExtractor:
    net: DomainClassifier
    config: dict[str, Any]
    test_accuracy: float


def train_domain_classifier(source: TensorImages, steps: int = 1500, batch_size: int = 128, lr: float = 2e-3,
                            seed: int = 0, test_fraction: float = 0.2, width: int = 32,
                            feature_dim: int = 64) -> TrainedExtractor:
    """Train the domain classifier on a seeded split; report held-out accuracy."""
    if source.labels is None or source.num_classes < 2:
        raise ValueError(
            f"the 'domain' feature extractor needs class labels, and {source.name} has none; "
            "use extractor 'inception' with a local Inception file instead"
        )
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(source), generator=gen)
    n_test = max(1, int(len(perm) * test_fraction))
    test_idx, train_idx = perm[:n_test], perm[n_test:]
    torch.manual_seed(seed)
    config = {"in_channels": source.shape[0], "num_classes": source.num_classes, "width": width,
              "feature_dim": feature_dim}
    net = DomainClassifier(**config)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    y = source.labels  # images come from take(): in memory, or decoded from the files of a streamed folder
    for _ in range(steps):
        idx = train_idx[torch.randint(len(train_idx), (batch_size,), generator=gen)]
        xb = source.take(idx)[0] + 0.05 * torch.randn(len(idx), *source.shape, generator=gen)  # mild noise robustness
        loss = F.cross_entropy(net(xb), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        correct = sum(int((net(source.take(part)[0]).argmax(1) == y[part]).sum()) for part in test_idx.split(2000))
        acc = correct / len(test_idx)
    log.info("domain feature extractor: held-out accuracy %.4f on %d images", acc, n_test)
    return TrainedExtractor(net, config, acc)


def standard_layout(x: torch.Tensor) -> torch.Tensor:
    """``x`` with the strides of a freshly allocated tensor of its shape (a copy only when they differ).

    torch calls a tensor with a size-1 dimension contiguous whatever that dimension's stride, but the CPU's
    convolution kernels read the strides to pick a memory format: grey images permuted from NHWC (stride 1 on
    the channel) run as channels-last and round differently. Features of the same images must not depend on
    where they came from, so every extractor's input goes through here."""
    standard, step = [], 1
    for size in reversed(x.shape):  # a fresh tensor's strides, computed rather than allocated
        standard.insert(0, step)
        step *= size
    return x if x.stride() == tuple(standard) else x.clone(memory_format=torch.contiguous_format)


@torch.no_grad()
def domain_features(net: DomainClassifier, images: torch.Tensor, batch_size: int = 1000) -> np.ndarray:
    """Features of images in [-1, 1], shape (N, feature_dim), float64."""
    out = [net.features(standard_layout(images[i:i + batch_size].float())) for i in range(0, len(images), batch_size)]
    return torch.cat(out).double().numpy()


def inception_extractor(path: str | Path | None, mode: str = "clean", device: str = "cpu"):
    """clean-fid's Inception feature function from a local torchscript file.

    Returns ``f(images in [-1, 1]) -> (N, 2048) features``. ``mode`` is
    ``clean`` (PIL bicubic resize to 299) or ``legacy_tensorflow`` (resize
    inside the network, as TensorFlow's FID).
    """
    if mode not in ("clean", "legacy_tensorflow"):
        raise ValueError(f"inception mode must be 'clean' or 'legacy_tensorflow', got {mode!r}")
    file = Path(path) if path else None
    if file is not None and file.is_dir():
        file = file / INCEPTION_FILE
    if file is None or not file.is_file():
        raise FileNotFoundError(
            f"Inception weights not found at {file}. Download {INCEPTION_FILE} on a machine with network "
            "access (clean-fid's published file, or run `python -c \"from cleanfid import fid\"` there and copy it "
            "from /tmp), put it on this machine and set evaluation.inception_path to the file; or use extractor: "
            "domain, which needs no download."
        )
    from cleanfid.inception_torchscript import InceptionV3W
    from cleanfid.resize import make_resizer

    model = InceptionV3W(str(file.parent), download=False, resize_inside=(mode == "legacy_tensorflow")).to(device)
    model.eval()
    resize = make_resizer("PIL", False, "bicubic", (299, 299)) if mode == "clean" else None

    @torch.no_grad()
    def extract(images: torch.Tensor, batch_size: int = 64) -> np.ndarray:
        feats = []
        for i in range(0, len(images), batch_size):
            x = standard_layout((images[i:i + batch_size].clamp(-1, 1) + 1) * 127.5)
            if x.shape[1] == 1:
                x = x.repeat(1, 3, 1, 1)
            if resize is not None:
                arr = x.round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
                x = torch.stack([torch.from_numpy(resize(a)).permute(2, 0, 1) for a in arr]).float()
            feats.append(model(x.to(device)).double().cpu())
        return torch.cat(feats).numpy()

    return extract


@dataclass
class FeatureSpec:
    """What turns images into features: ``domain`` (with its trained net),
    ``inception`` (local file + mode) or ``none`` (2-D data: the points themselves)."""

    kind: str
    net: DomainClassifier | None = None
    config: dict[str, Any] | None = None
    test_accuracy: float | None = None
    inception_path: str | None = None
    mode: str = "clean"
    _inception: Any = field(default=None, repr=False, compare=False)

    def extract(self, images: torch.Tensor) -> np.ndarray:
        if self.kind == "domain":
            return domain_features(self.net, images)
        if self.kind == "inception":
            if self._inception is None:  # load the torchscript once, not at every evaluation
                self._inception = inception_extractor(self.inception_path, self.mode)
            return self._inception(images)
        if self.kind == "none":
            return images.detach().double().cpu().numpy()
        raise ValueError(f"unknown feature extractor {self.kind!r}; choose domain or inception")

    @property
    def label(self) -> str:
        return self.kind

    def __getstate__(self):  # travels to data-parallel ranks without the loaded TorchScript (reloaded there)
        return {**self.__dict__, "_inception": None}
