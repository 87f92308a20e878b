"""Data larger than memory: image folders stream through a DataLoader (uint8 until the batch); the streamed
path gives what the in-memory path gives, and its memory stays bounded on 10,000 images."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from disback_pipeline.diffusion.data import BatchStream, load_image_folder, open_image_folder
from disback_pipeline.diffusion.teacher import pretrain_teacher
from disback_pipeline.evaluation.features import DomainClassifier, FeatureSpec
from disback_pipeline.evaluation.quality import reference_statistics
from disback_pipeline.pipelines.reference.nodes import build_reference_stats

UNET = {"backbone": "unet", "sigma_data": 0.5, "model_channels": 8, "channel_mult": [1, 2], "num_blocks": 1,
        "attn_resolutions": [4], "dropout": 0.0}


def make_folder(root: Path, n: int, size: int = 32, classes: int = 4, seed: int = 0) -> Path:
    """``n`` noise PNGs of varied sizes and modes, one sub-folder per class."""
    rng = np.random.default_rng(seed)
    for c in range(classes):
        (root / f"c{c}").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        side = size + (i % 3) * 4  # some need resizing
        array = (rng.random((side, side, 3)) * 255).astype(np.uint8)
        img = Image.fromarray(array)
        (img.convert("L") if i % 7 == 0 else img).save(root / f"c{i % classes}" / f"{i:06d}.png")
    return root


def test_streamed_folder_equals_the_in_memory_path(tmp_path):
    folder = make_folder(tmp_path / "images", 1100, size=8)
    streamed, whole = open_image_folder(folder, 8), load_image_folder(folder, 8)
    idx = torch.tensor([0, 5, 7, 1099])
    assert torch.equal(streamed.take(idx)[0], whole.images[idx])
    # reference statistics: the streamed node (three batches, two decoding workers) and the in-memory features
    torch.manual_seed(0)
    features = FeatureSpec("domain", DomainClassifier(3, 4), {}, 0.0)
    data = {"source": "image_folder", "path": str(folder), "resolution": 8, "workers": 2}
    stats = build_reference_stats(features, data, {"reference_samples": 0})
    memory = reference_statistics(features.extract(whole.images))
    assert int(stats["n"]) == 1100
    np.testing.assert_allclose(stats["mu"], memory["mu"], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(stats["sigma"], memory["sigma"], rtol=1e-9, atol=1e-12)
    # teacher pre-training: the same batches, hence the same weights, with or without worker processes
    training = {"steps": 12, "batch_size": 16, "log_every": 0, "warmup_steps": 2}
    a, hist_a = pretrain_teacher(streamed, UNET, training, seed=1, device="cpu")
    b, hist_b = pretrain_teacher(whole, UNET, training, seed=1, device="cpu")
    assert all(torch.equal(p, q) for p, q in zip(a.net.state_dict().values(), b.net.state_dict().values()))
    assert [r["loss"] for r in hist_a] == [r["loss"] for r in hist_b]


def test_batch_stream_restarts_at_any_step():
    from disback_pipeline.diffusion.data import GaussianMixture2D

    src = GaussianMixture2D.ring(4)
    full = BatchStream(src, 8, seed=3)
    batches = [full()[0] for _ in range(5)]
    later = BatchStream(src, 8, seed=3, start=4)
    assert torch.equal(later()[0], batches[3]) and torch.equal(later()[0], batches[4])


def _peak(folder: Path, n_reference: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, str(Path(__file__).with_name("stream_memory.py")), str(folder), "32",
                          str(n_reference)], capture_output=True, text=True, timeout=900, env=env,
                         check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_memory_stays_bounded_on_10000_images(tmp_path):
    """The same work (reference statistics, 50 pre-training steps) over 1,000 and over all 10,000 images of a
    folder: the peak resident memory may differ by at most 64 MiB, where a float32 copy of the 9,000 more images
    would take 105 MiB (and the in-memory path held all of it)."""
    folder = make_folder(tmp_path / "images", 10_000, size=32)
    small, full = _peak(folder, 1000), _peak(folder, 0)
    assert small["reference_n"] == 1000 and full["reference_n"] == full["images"] == 10_000
    extra_float_mb = 9_000 * full["float32_mb_per_image"]
    assert extra_float_mb > 100
    assert full["peak_mb"] - small["peak_mb"] < 64, (small, full)
