"""The photo-crops data set: RGB crops of the photographs inside the installed wheels, one class a photo, the same
files from the same arguments, and held-out crops as the reference statistics' images."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from PIL import Image

from disback_pipeline.crops import PHOTOS, main, photo_path, write_crops
from disback_pipeline.diffusion.config import ConfigError
from disback_pipeline.diffusion.data import make_data_source
from disback_pipeline.evaluation.features import DomainClassifier, FeatureSpec
from disback_pipeline.parameters import build
from disback_pipeline.pipelines.reference.nodes import build_reference_stats


def _digest(root) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*.png"))}


def test_every_photo_ships_in_an_installed_wheel_as_an_rgb_image():
    for name in PHOTOS:
        with Image.open(photo_path(name)) as im:
            assert im.mode == "RGB" and min(im.size) >= 300, name


def test_crops_are_seeded_labelled_by_photo_and_held_out_crops_differ(tmp_path):
    record = write_crops(tmp_path / "a", 16, train=6, heldout=3, seed=0, photos=["astronaut", "china"])
    assert record["photos"] == {"astronaut": "skimage:data/astronaut.png", "china": "sklearn:datasets/images/china.jpg"}
    assert json.loads((tmp_path / "a" / "crops.json").read_text()) == record
    a = _digest(tmp_path / "a")
    assert len(a) == 2 * (6 + 3) and {k.split("/")[1] for k in a} == {"astronaut", "china"}
    with Image.open(tmp_path / "a/train/china/000000.png") as im:
        assert im.size == (16, 16) and im.mode == "RGB"
    write_crops(tmp_path / "b", 16, train=6, heldout=3, seed=0, photos=["astronaut", "china"])
    assert _digest(tmp_path / "b") == a  # the same arguments write the same bytes
    write_crops(tmp_path / "c", 16, train=6, heldout=3, seed=1, photos=["astronaut", "china"])
    assert set(_digest(tmp_path / "c").values()).isdisjoint(a.values())
    train, heldout = ({v for k, v in a.items() if k.startswith(split)} for split in ("train/", "heldout/"))
    assert train.isdisjoint(heldout)
    # the folder reads as a labelled image data set: one class a photo, RGB in [-1, 1]
    source = make_data_source({"source": "image_folder", "path": str(tmp_path / "a/train"), "resolution": 16,
                               "workers": 0, "conditional": True})
    x, labels = source.take(torch.arange(len(source)))
    assert x.shape == (12, 3, 16, 16) and labels.sum(0).tolist() == [6.0, 6.0]
    assert -1.0 <= x.min().item() < x.max().item() <= 1.0


def test_bad_arguments_are_named_and_keep_what_was_written(tmp_path, caplog):
    write_crops(tmp_path, 8, train=2, heldout=1, photos=["coffee"])
    before = _digest(tmp_path)
    assert main([str(tmp_path), "--photos", "coffee,mona_lisa"]) == 2
    assert "unknown photo(s) ['mona_lisa']" in caplog.text
    assert main([str(tmp_path), "--scale", "0.5", "0.2"]) == 2
    assert "--scale needs 0 < low <= high <= 1" in caplog.text
    assert _digest(tmp_path) == before


def test_reference_statistics_come_from_the_held_out_folder(tmp_path):
    write_crops(tmp_path, 8, train=5, heldout=4, photos=["rocket", "flower"])
    torch.manual_seed(0)
    features = FeatureSpec("domain", DomainClassifier(3, 2), {}, 0.0)
    data = {"source": "image_folder", "path": str(tmp_path / "train"), "resolution": 8, "workers": 0}
    own = build_reference_stats(features, data, {})
    held = build_reference_stats(features, data, {"reference_path": str(tmp_path / "heldout")})
    assert int(own["n"]) == 10 and int(held["n"]) == 8
    heldout = make_data_source({**data, "path": str(tmp_path / "heldout")})
    x, _ = heldout.take(torch.arange(8))
    mu = np.asarray(features.extract(x), dtype=np.float64).mean(0)
    np.testing.assert_allclose(held["mu"], mu, rtol=1e-6, atol=1e-9)
    with pytest.raises(ValueError, match="reference_path is for image folders, and data.source is digits"):
        build_reference_stats(features, {"source": "digits"}, {"reference_path": str(tmp_path / "heldout")})
    # a run refuses the combination when its settings are built, before anything trains
    with pytest.raises(ConfigError, match="reference_path is for image folders, and data.source is digits"):
        build({"data": {"source": "digits"}, "evaluation": {"reference_path": str(tmp_path / "heldout")}})


@pytest.mark.slow
def test_crops16_environment_runs_distill_against_its_held_out_crops(project):
    """The crops16 environment as shipped (its data made by the crops command, tiny budgets): the whole distill
    pipeline runs, and every FID is against the held-out crops' statistics, not the training crops'."""
    write_crops(project.path / "data/01_raw/crops16", 16, train=12, heldout=5)
    project.edit("crops16", "parameters_teacher", teacher__network__unet__model_channels=8,
                 teacher__training__steps=4, teacher__training__batch_size=8, teacher__report__num_samples=4)
    project.edit("crops16", "parameters_shared", shared__sampler__nfe=3)
    project.edit("crops16", "parameters_degradation", degradation__k1=4, degradation__n_nodes=2,
                 degradation__batch_size=4, degradation__candidates=4, degradation__probe_size=8)
    project.edit("crops16", "parameters_backtracking", backtracking__k2=2, backtracking__budget=4,
                 backtracking__batch_size=4, backtracking__eval_every=2, backtracking__proxy_samples=20)
    project.edit("crops16", "parameters_evaluation", evaluation__domain__steps=10, evaluation__domain__batch_size=16,
                 evaluation__n_samples=40, evaluation__grid_samples=4, evaluation__batch_size=40)
    project.edit("crops16", "parameters_data", data__workers=0)
    project.run("distill", env="crops16")
    root = project.path / "data/crops16"
    reference = np.load(root / "05_model_input/reference_stats.npz")
    assert int(reference["n"]) == 10 * 5  # the held-out crops
    metrics = json.loads((root / "08_reporting/metrics.json").read_text())
    for role in ("teacher", "student"):
        assert metrics[role]["reference_hash"] == str(reference["hash"]) and np.isfinite(metrics[role]["fid"])
    assert (root / "06_models/generator_ema.pt").is_file() and (root / "08_reporting/student_grid.png").is_file()
