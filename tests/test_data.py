import math

import numpy as np
import pytest
import torch

from disback_pipeline.diffusion.data import (
    DataSourceError,
    GaussianMixture2D,
    make_data_source,
)


def test_ring_and_grid_layouts():
    ring = make_data_source({"source": "gmm2d", "layout": "ring", "num_modes": 8, "radius": 2.0, "std": 0.1})
    assert ring.means.shape == (8, 2)
    torch.testing.assert_close(ring.means.norm(dim=1), torch.full((8,), 2.0))
    grid = make_data_source({"source": "gmm2d", "layout": "grid", "size": 5, "spacing": 0.5, "std": 0.05})
    assert grid.means.shape == (25, 2)
    assert grid.means.min().item() == pytest.approx(-1.0)
    assert grid.means.max().item() == pytest.approx(1.0)


def test_gmm_log_prob_is_exact_density():
    gmm = GaussianMixture2D([[0.0, 0.0], [3.0, 0.0]], std=0.5)
    x = torch.tensor([[0.0, 0.0]])
    # half of N(0; 0, 0.25 I) plus half of N(0; (3,0), 0.25 I)
    p = 0.5 / (2 * math.pi * 0.25) * (1 + math.exp(-9 / 0.5))
    assert gmm.log_prob(x).item() == pytest.approx(math.log(p), rel=1e-9)


def test_gmm_sampler_matches_moments_and_density_normalises():
    gmm = GaussianMixture2D.ring(8, 1.0, 0.05)
    x, labels = gmm.sample(40000, torch.Generator().manual_seed(0))
    assert labels is None
    assert x.mean(0).abs().max().item() < 0.02
    assert (x.norm(dim=1) - 1).abs().mean().item() < 0.06
    # Riemann sum of the density over a fine grid integrates to 1.
    ticks = torch.linspace(-1.5, 1.5, 601, dtype=torch.float64)
    grid = torch.cartesian_prod(ticks, ticks)
    cell = (ticks[1] - ticks[0]) ** 2
    assert (gmm.log_prob(grid).exp().sum() * cell).item() == pytest.approx(1.0, abs=1e-3)


def test_conditional_gmm_gives_one_hot_component_labels():
    gmm = make_data_source({"source": "gmm2d", "layout": "ring", "num_modes": 4, "std": 0.01,
                            "conditional": True})
    x, labels = gmm.sample(100)
    assert labels.shape == (100, 4)
    torch.testing.assert_close(x, labels @ gmm.means, atol=0.06, rtol=0)


def test_digits_offline_scaled():
    src = make_data_source({"source": "digits"})
    assert len(src) == 1797 and src.shape == (1, 8, 8)
    assert src.images.min().item() == -1.0 and src.images.max().item() == 1.0
    cond = make_data_source({"source": "digits", "conditional": True})
    _, labels = cond.sample(5)
    assert labels.shape == (5, 10) and torch.all(labels.sum(1) == 1)


def test_image_folder(tmp_path):
    from PIL import Image

    (tmp_path / "sub").mkdir()
    Image.fromarray(np.full((20, 40, 3), 255, np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((30, 30, 3), np.uint8)).save(tmp_path / "sub" / "b.jpg")
    (tmp_path / "notes.txt").write_text("not an image")
    src = make_data_source({"source": "image_folder", "path": str(tmp_path), "resolution": 16})
    assert len(src) == 2 and src.shape == (3, 16, 16)  # streamed: decoded when drawn
    x, _ = src.take(torch.arange(2))
    assert x.shape == (2, 3, 16, 16) and x.dtype == torch.float32
    assert x[0].min().item() == pytest.approx(1.0)
    assert x[1].max().item() == pytest.approx(-1.0)
    gray = make_data_source({"source": "image_folder", "path": str(tmp_path), "resolution": 8, "channels": 1})
    assert gray.shape == (1, 8, 8)


def test_image_folder_errors(tmp_path):
    with pytest.raises(DataSourceError, match="does not exist"):
        make_data_source({"source": "image_folder", "path": str(tmp_path / "nope"), "resolution": 8})
    with pytest.raises(DataSourceError, match="no .png/.jpg/.jpeg files"):
        make_data_source({"source": "image_folder", "path": str(tmp_path), "resolution": 8})


def _write_idx(path, array, magic):
    with open(path, "wb") as fh:
        fh.write(magic.to_bytes(4, "big"))
        for dim in array.shape:
            fh.write(int(dim).to_bytes(4, "big"))
        fh.write(array.astype(np.uint8).tobytes())


def test_torchvision_mnist_from_local_root(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    images = np.zeros((3, 28, 28), np.uint8)
    images[1] = 255
    _write_idx(raw / "train-images-idx3-ubyte", images, 2051)
    _write_idx(raw / "train-labels-idx1-ubyte", np.array([0, 1, 2]), 2049)
    _write_idx(raw / "t10k-images-idx3-ubyte", images, 2051)
    _write_idx(raw / "t10k-labels-idx1-ubyte", np.array([0, 1, 2]), 2049)
    src = make_data_source({"source": "torchvision", "name": "mnist", "root": str(tmp_path), "resolution": 28,
                            "conditional": True})
    assert src.images.shape == (3, 1, 28, 28) and src.images.dtype == torch.uint8  # a quarter of float32
    x, _ = src.take(torch.arange(3))
    assert x[1].min().item() == 1.0 and x[0].max().item() == -1.0
    assert src.labels.tolist() == [0, 1, 2]


def test_torchvision_errors(tmp_path):
    with pytest.raises(DataSourceError, match="not found under"):
        make_data_source({"source": "torchvision", "name": "mnist", "root": str(tmp_path)})
    with pytest.raises(DataSourceError, match="set data.resolution to 32"):
        make_data_source({"source": "torchvision", "name": "cifar10", "root": str(tmp_path), "resolution": 64})
    with pytest.raises(DataSourceError, match="unknown data set"):
        make_data_source({"source": "torchvision", "name": "svhn", "root": str(tmp_path)})


def test_unknown_source_and_bad_mixture():
    with pytest.raises(DataSourceError, match="unknown data.source 'imagenet'"):
        make_data_source({"source": "imagenet"})
    with pytest.raises(DataSourceError, match="std must be > 0"):
        make_data_source({"source": "gmm2d", "std": 0})
