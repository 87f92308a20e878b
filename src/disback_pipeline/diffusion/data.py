"""Data sources. Each yields training batches (x, labels) with x scaled to about
[-1, 1] and labels one-hot (B, num_classes) or None when unconditional.

- ``gmm2d``: 2-D Gaussian mixtures with an exact sampler and exact log-density.
- ``digits``: scikit-learn's bundled 8x8 digits (1797 images, offline).
- ``image_folder``: a folder of PNG/JPEG files, resized and centre-cropped.
- ``torchvision``: MNIST, Fashion-MNIST or CIFAR-10 from a local root.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from . import distributed

log = logging.getLogger(__name__)


def _sha256(*parts) -> str:
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, torch.Tensor):
            h.update(str((part.dtype, tuple(part.shape))).encode())
            h.update(part.detach().cpu().contiguous().numpy().tobytes())
        elif part is not None:
            h.update(str(part).encode())
        h.update(b"\0")
    return h.hexdigest()


class DataSourceError(ValueError):
    """A data source is misconfigured or its files are missing."""


class DataSource:
    """Common interface: ``shape``, ``num_classes`` and ``sample(n, generator)``."""

    name: str = ""
    shape: tuple[int, ...] = ()
    num_classes: int = 0
    conditional: bool = False
    prompts: tuple[str, ...] = ()  # text-to-image: what generated samples are conditioned on (:meth:`with_prompts`)
    prompt_embeddings: torch.Tensor | None = None  # ... as the text encoder embeds them, one row a prompt

    def content_sha256(self) -> str:
        """A hash of what the source holds (part of every training state's fingerprint: other data under the
        same settings are never resumed onto)."""
        text = () if self.prompt_embeddings is None else ("\n".join(self.prompts), self.prompt_embeddings)
        return _sha256(self.name, *self._content(), *text)

    def with_prompts(self, prompts: list[str], embeddings: torch.Tensor) -> DataSource:
        """Condition generated samples on text: each draws one of ``prompts`` from the seeded stream and carries its
        embedding ``embeddings[i]`` (tokens, width) where class labels would go. The images stay uncaptioned."""
        if len(prompts) != len(embeddings) or not prompts:
            raise DataSourceError(f"{len(prompts)} prompts and {len(embeddings)} embeddings: need one embedding a "
                                  "prompt, and at least one prompt")
        self.prompts, self.prompt_embeddings = tuple(prompts), embeddings.float()
        return self

    def _content(self) -> tuple:
        raise NotImplementedError

    @property
    def label_dim(self) -> int:
        return self.num_classes if self.conditional else 0

    def sample(self, n: int, generator: torch.Generator | None = None):
        raise NotImplementedError

    def to_float(self, x: torch.Tensor) -> torch.Tensor:
        """A batch as stored, in [-1, 1] float32 (images kept as uint8 convert here; others are float already)."""
        return x

    @property
    def pixels(self) -> DataSource:
        """The source whose images the features and the reference statistics see (itself, but for latents)."""
        return self

    def to_pixels(self, x: torch.Tensor) -> torch.Tensor:
        """Generated samples as images (the identity, but for latents, which are decoded)."""
        return x

    def one_hot(self, labels: torch.Tensor | None):
        if not self.conditional or labels is None:
            return None
        return F.one_hot(labels.long(), self.num_classes).float()

    def prompt_indices(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Which prompt each of ``n`` generated samples gets (the draw :meth:`random_labels` makes)."""
        return torch.randint(len(self.prompts), (n,), generator=generator)

    def random_labels(self, n: int, generator: torch.Generator | None = None):
        """Class labels for generated samples (one-hot), prompt embeddings (text), or None if unconditional."""
        if self.prompt_embeddings is not None:
            return self.prompt_embeddings[self.prompt_indices(n, generator)]
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

    def _content(self) -> tuple:
        return self.means, torch.tensor([self.std, float(self.conditional)])

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

    def _content(self) -> tuple:
        return self.images, self.labels

    def raw(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Images ``idx`` as stored (float here; uint8 for the streamed sets) and their integer labels."""
        return self.images[idx], None if self.labels is None else self.labels[idx]

    def take(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Images ``idx`` in [-1, 1] and their one-hot labels (None when unconditional)."""
        x, labels = self.raw(idx)
        return self.to_float(x), self.one_hot(labels)

    def sample(self, n, generator=None):
        return self.take(torch.randint(len(self), (n,), generator=generator))


class UInt8Images(TensorImages):
    """Images held in memory as uint8 (N, C, H, W), a quarter of float32's size; batches become float in
    [-1, 1] only when drawn (``x / 127.5 - 1``, as the in-memory float path computes them)."""

    def __init__(self, name: str, images: torch.Tensor, labels=None, num_classes: int = 0,
                 conditional: bool = False):
        super().__init__(name, images[:1].float(), labels, num_classes, conditional)
        self.images = images.contiguous()

    def to_float(self, x: torch.Tensor) -> torch.Tensor:
        return x.float() / 127.5 - 1


class ImageFolderImages(UInt8Images):
    """An image folder read file by file (never whole): each drawn image is decoded, converted and resized
    when it is asked for. Batches for training come through a DataLoader with worker processes
    (:class:`BatchStream`); the reference statistics stream through :func:`iterate`."""

    workers: int = 2  # DataLoader processes that decode files (0 = the main process); data.workers

    def __init__(self, name: str, files: list[Path], resolution: int, channels: int, labels=None,
                 num_classes: int = 0, conditional: bool = False):
        DataSource.__init__(self)
        if conditional and (labels is None or num_classes < 1):
            raise DataSourceError(f"{name}: conditional=true but the data set has no class labels "
                                  "(image_folder: put the images in one sub-folder per class)")
        self.name, self.files, self.resolution = name, list(files), int(resolution)
        self.mode = "L" if channels == 1 else "RGB"
        self.labels = None if labels is None else torch.as_tensor(labels).long()
        self.num_classes, self.conditional = int(num_classes), bool(conditional)
        self.shape = (int(channels), self.resolution, self.resolution)

    @property
    def images(self):
        raise AttributeError(f"{self.name} is streamed from its files; draw batches with take() or iterate()")

    def __len__(self):
        return len(self.files)

    def _content(self) -> tuple:
        """The file list with each file's size (not the pixels: reading every file would cost a pass over the
        folder), the labels and the decoding settings."""
        root = Path(os.path.commonpath([str(f) for f in self.files])) if len(self.files) > 1 else self.files[0].parent
        listing = "\n".join(f"{f.relative_to(root)}\t{f.stat().st_size}" for f in self.files)
        return listing, f"{self.mode} {self.resolution}", self.labels

    def decode(self, i: int) -> torch.Tensor:
        """File ``i`` as a uint8 (C, H, W) tensor."""
        from PIL import Image

        file = self.files[i]
        try:
            with Image.open(file) as img:
                array = np.asarray(_resize_center_crop(img.convert(self.mode), self.resolution))
        except (OSError, ValueError) as exc:  # PIL's UnidentifiedImageError is an OSError
            raise _not_an_image(file, exc) from exc
        t = torch.from_numpy(array.copy())
        return t[None] if t.ndim == 2 else t.permute(2, 0, 1)

    def raw(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = torch.stack([self.decode(int(i)) for i in idx])
        return x, None if self.labels is None else self.labels[idx]


class _SeededBatches(torch.utils.data.Dataset):
    """Item ``step`` is the batch of that step: indices from a generator seeded by (seed, step) alone, so a
    stream can start at any step (resume) and several ranks can each take a slice of the same batch."""

    def __init__(self, source: DataSource, batch_size: int, seed: int, rank: int = 0, world: int = 1):
        self.source, self.batch_size, self.seed = source, int(batch_size), int(seed)
        self.part = slice(rank * self.batch_size, (rank + 1) * self.batch_size)  # this rank's rows
        self.global_size = self.batch_size * world

    def __len__(self):
        return 2**62

    def __getitem__(self, step: int):
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + int(step))
        if isinstance(self.source, TensorImages):  # only this rank's images are decoded
            x, labels = self.source.raw(torch.randint(len(self.source), (self.global_size,), generator=gen)[self.part])
            return _plain(x), None if labels is None else labels.numpy()
        x, labels = self.source.sample(self.global_size, gen)
        return x[self.part], None if labels is None else labels[self.part].argmax(1).numpy()


def _plain(x: torch.Tensor):
    """What a DataLoader worker hands over: a decoded uint8 batch as a NumPy array, so it travels pickled
    through the worker's pipe and is freed like any array (torch tensors travel through shared-memory
    segments, and with them the main process's resident memory kept growing: 200 MiB per pass over
    20,000 images of 32x32, measured); in-memory float images stay tensors."""
    return x.numpy() if x.dtype == torch.uint8 else x


def _as_is(batch):
    return batch


class BatchStream:
    """Training batches of one seeded global stream, from a given step on.

    ``stream(n)`` returns the next batch (float in [-1, 1], one-hot labels or None). Files are decoded in
    the folder's ``workers`` DataLoader processes (uint8 until the batch reaches the training loop); in-memory data use
    none. Batch ``k`` is the same however the stream was started, so a resumed run draws what an
    uninterrupted one drew.
    """

    def __init__(self, source: DataSource, batch_size: int, seed: int, start: int = 1):
        self.source, self.batch_size = source, int(batch_size)
        self.step = int(start)
        r = distributed.ranks()  # each rank takes its slice of the one global stream
        self._batches = _SeededBatches(source, batch_size, seed, r.rank, r.world)
        self._workers = source.workers if isinstance(source, ImageFolderImages) else 0
        self._iter = None

    def start(self, step: int) -> BatchStream:
        """Continue the stream at ``step`` (1-based)."""
        self.step, self._iter = int(step), None
        return self

    def _loader(self):
        return iter(torch.utils.data.DataLoader(
            self._batches, sampler=range(self.step, 2**62), batch_size=None, num_workers=self._workers,
            collate_fn=_as_is,
            prefetch_factor=2 if self._workers else None, persistent_workers=False,
            generator=torch.Generator().manual_seed(0)))  # its own seed draw: the global RNG is left alone

    def __call__(self, n: int | None = None):
        if n is not None and n != self.batch_size:
            raise ValueError(f"this stream draws batches of {self.batch_size}, not {n}")
        if self._iter is None:
            self._iter = self._loader() if self._workers else None
        x, labels = next(self._iter) if self._iter is not None else self._batches[self.step]
        self.step += 1
        return self.source.to_float(torch.as_tensor(x)), self.source.one_hot(None if labels is None
                                                                             else torch.as_tensor(labels))


def iterate(source: TensorImages, n: int, batch_size: int = 500):
    """The first ``n`` images in order, in float batches (streamed sets through a DataLoader)."""
    from torch.utils.data import DataLoader

    starts = range(0, n, batch_size)

    class _Chunks(torch.utils.data.Dataset):
        def __len__(self):
            return len(starts)

        def __getitem__(self, i):
            return _plain(source.raw(torch.arange(starts[i], min(starts[i] + batch_size, n)))[0])

    use = source.workers if isinstance(source, ImageFolderImages) else 0
    for x in DataLoader(_Chunks(), batch_size=None, num_workers=use, prefetch_factor=2 if use else None,
                        collate_fn=_as_is, generator=torch.Generator().manual_seed(0)):  # global RNG left alone
        yield source.to_float(torch.as_tensor(x))


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


def _folder_files(root: Path, resolution: int, channels: int):
    """The image files under ``root`` and their class labels (first-level sub-folders), after the checks."""
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
    labels, num_classes = None, 0
    if all(len(f.relative_to(root).parts) >= 2 for f in files):
        classes = sorted({f.relative_to(root).parts[0] for f in files})
        labels = torch.tensor([classes.index(f.relative_to(root).parts[0]) for f in files])
        num_classes = len(classes)
    return files, labels, num_classes


def _not_an_image(file: Path, exc: Exception) -> DataSourceError:
    return DataSourceError(f"image_folder: {file} is not a readable image ({exc}); remove it from {file.parent} "
                           "or replace it with a PNG/JPEG file")


def _check_headers(root: Path, files: list[Path], resolution: int, mode: str) -> None:
    """Open every file's header (no pixels): a non-image fails now, naming it; log what will be converted."""
    from PIL import Image

    converted = resized = 0
    for f in files:
        try:
            with Image.open(f) as img:
                converted += img.mode != mode
                resized += img.size != (resolution, resolution)
        except (OSError, ValueError) as exc:  # PIL's UnidentifiedImageError is an OSError
            raise _not_an_image(f, exc) from exc
    if converted or resized:
        log.info("image_folder %s: %d of %d images converted to %s, %d resized/cropped to %dx%d", root, converted,
                 len(files), mode, resized, resolution, resolution)


def open_image_folder(path: str | Path, resolution: int, channels: int = 3, conditional: bool = False,
                      workers: int = 2) -> ImageFolderImages:
    """All PNG/JPEG files under ``path`` (recursively), streamed: read when drawn, never held whole.

    Accepted: any size (the short side is resized to ``resolution``, then the
    centre is cropped) and any colour mode (grey, RGB, RGBA, palette: converted
    to ``channels``). Every file's header is checked first, so a file with an
    image suffix that is not an image fails at once, naming it. When every image
    sits in a first-level sub-folder, the sorted sub-folder names are the
    classes (needed for ``conditional`` and the ``domain`` extractor).
    """
    root = Path(path)
    files, labels, num_classes = _folder_files(root, resolution, channels)
    _check_headers(root, files, resolution, "L" if channels == 1 else "RGB")
    folder = ImageFolderImages(f"image_folder:{root.name}", files, resolution, channels, labels, num_classes,
                               conditional)
    folder.workers = int(workers)
    return folder


def load_image_folder(path: str | Path, resolution: int, channels: int = 3, conditional: bool = False) -> TensorImages:
    """The same images as :func:`open_image_folder`, decoded whole into memory as float32 (small folders;
    the streamed source gives the same values)."""
    folder = open_image_folder(path, resolution, channels, conditional)
    x = folder.take(torch.arange(len(folder)))[0]
    return TensorImages(folder.name, x, folder.labels, folder.num_classes, conditional)


TORCHVISION_SETS = {
    "mnist": ("MNIST", 28, 1),
    "fashion_mnist": ("FashionMNIST", 28, 1),
    "cifar10": ("CIFAR10", 32, 3),
}


def load_torchvision(name: str, root: str | Path, resolution: int | None = None,
                     download: bool = False, conditional: bool = False) -> UInt8Images:
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
    x = torch.as_tensor(np.asarray(ds.data), dtype=torch.uint8)
    x = x[:, None] if x.ndim == 3 else x.permute(0, 3, 1, 2)
    if x.shape[1] != channels:
        raise DataSourceError(f"torchvision: {name} has {x.shape[1]} channels, expected {channels}")
    labels = torch.as_tensor(np.asarray(ds.targets))
    return UInt8Images(name, x, labels, 10, conditional)


@torch.no_grad()
def decode_latents(vae: torch.nn.Module, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Latents (scaled by the VAE's ``scaling_factor``) decoded to images in [-1, 1], ``batch_size`` at a time."""
    scaling = float(vae.config.scaling_factor)
    return torch.cat([vae.decode(x[i:i + batch_size].float() / scaling).sample.clamp(-1, 1)
                      for i in range(0, len(x), batch_size)])


class LatentImages(DataSource):
    """Images seen through a diffusers VAE (``AutoencoderKL``): generated samples live in its latent space
    (``shape``), real images are encoded when drawn (the posterior's mean times the VAE's ``scaling_factor``), and
    :meth:`to_pixels` decodes for whatever looks at images (features, FID, grids). :attr:`pixels` is the image
    source itself, which the feature extractor and the reference statistics are built on."""

    def __init__(self, pixels: DataSource, vae: torch.nn.Module, scaling_factor: float, batch_size: int = 256):
        DataSource.__init__(self)
        self._pixels, self.vae, self.scaling, self.batch_size = pixels, vae.eval(), float(scaling_factor), batch_size
        factor = 2 ** (len(vae.config.block_out_channels) - 1)
        c, h, w = pixels.shape
        if h % factor or w % factor:
            raise DataSourceError(f"{pixels.name}: images of {h}x{w} pixels do not divide by the VAE's downsampling "
                                  f"factor {factor}; set data.resolution to a multiple of {factor}")
        self.name, self.num_classes, self.conditional = pixels.name, pixels.num_classes, pixels.conditional
        self.shape = (int(vae.config.latent_channels), h // factor, w // factor)

    @property
    def pixels(self) -> DataSource:
        return self._pixels

    def __len__(self):
        return len(self._pixels)

    def _content(self) -> tuple:
        return (self._pixels.content_sha256(), self.scaling,
                *(t.detach() for t in self.vae.state_dict().values()))

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.vae.encode(x[i:i + self.batch_size].float()).latent_dist.mean * self.scaling
                          for i in range(0, len(x), self.batch_size)])

    def to_pixels(self, x: torch.Tensor) -> torch.Tensor:
        return decode_latents(self.vae, x, self.batch_size)

    def sample(self, n: int, generator: torch.Generator | None = None):
        x, labels = self._pixels.sample(n, generator)
        return self.encode(x), labels

    def one_hot(self, labels):
        return self._pixels.one_hot(labels)


@dataclasses.dataclass(frozen=True)
class SourceOnEachMachine:
    """The data source as it travels to the ranks of a stage on several machines: each machine builds it from its
    own files (``data.path``) instead of receiving the images, and refuses content other than the primary's."""

    config: Any        # the ``data`` block (a DataConfig or its dict)
    sha256: str        # the primary's :meth:`DataSource.content_sha256`

    def build_here(self) -> DataSource:
        source = make_data_source(self.config)
        here = source.content_sha256()
        if here != self.sha256:
            cfg = self.config if isinstance(self.config, dict) else dataclasses.asdict(self.config)
            where = cfg.get("path") or cfg.get("root")
            at = f"data.path {where!r} (here {Path(where).resolve()})" if where else f"data {cfg}"
            raise DataSourceError(f"{at} holds other data than on the primary machine (content sha256 {here[:12]} "
                                  f"here, {self.sha256[:12]} there); give every machine the same files there")
        return source


def read_prompts(path: str | Path) -> list[str]:
    """Prompts from a file: .txt one a line (blank lines skipped), .csv or .parquet a `prompt` column."""
    path = Path(path)
    if not path.is_file():
        raise DataSourceError(f"data.prompts: {path} does not exist; give a .txt file (one prompt a line) or a "
                              ".csv/.parquet file with a `prompt` column")
    if path.suffix in (".csv", ".parquet"):
        import pandas as pd

        table = pd.read_csv(path) if path.suffix == ".csv" else pd.read_parquet(path)
        if "prompt" not in table.columns:
            raise DataSourceError(f"data.prompts: {path} has no `prompt` column (columns: {list(table.columns)})")
        prompts = [str(p) for p in table["prompt"].dropna()]
    else:
        prompts = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not prompts:
        raise DataSourceError(f"data.prompts: {path} holds no prompt")
    return prompts


def make_data_source(cfg) -> DataSource:
    """Build the data source described by the ``data`` parameters (a dict, or a built DataConfig); with
    ``prompts``, its generated samples are conditioned on their text (:meth:`DataSource.with_prompts`)."""
    if dataclasses.is_dataclass(cfg):
        cfg = {k: v for k, v in dataclasses.asdict(cfg).items() if v is not None}
    cfg = dict(cfg)
    if cfg.get("prompts"):
        from .diffusers_teacher import encode_prompts

        prompts = read_prompts(cfg["prompts"])
        embeddings = encode_prompts(cfg["text_encoder"], prompts)
        return make_data_source({k: v for k, v in cfg.items() if k not in ("prompts", "text_encoder")}) \
            .with_prompts(prompts, embeddings)
    if cfg.get("vae"):
        from .diffusers_teacher import load_vae

        vae = load_vae(cfg["vae"])
        return LatentImages(make_data_source({k: v for k, v in cfg.items() if k != "vae"}), vae,
                            vae.config.scaling_factor)
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
        return open_image_folder(cfg["path"], int(cfg["resolution"]), int(cfg.get("channels", 3)), conditional,
                                 int(cfg.get("workers", 2)))
    if kind == "torchvision":
        if "name" not in cfg or "root" not in cfg:
            raise DataSourceError("torchvision needs data.name and data.root")
        return load_torchvision(cfg["name"], cfg["root"], cfg.get("resolution"),
                                bool(cfg.get("download", False)), conditional)
    raise DataSourceError(
        f"unknown data.source {kind!r}; choose gmm2d, digits, image_folder or torchvision"
    )
