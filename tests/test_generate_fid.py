"""The generate and fid commands: per-seed samples whatever the batch, FID of any sample folder."""

import json

import numpy as np
import pytest
import torch

from disback_pipeline.datasets import FeatureExtractorDataset, NpzDataset
from disback_pipeline.diffusion.backbones import build_network
from disback_pipeline.diffusion.checkpoint import Checkpoint, save_checkpoint
from disback_pipeline.diffusion.data import load_digits_source
from disback_pipeline.evaluation.features import FeatureSpec, train_domain_classifier
from disback_pipeline.evaluation.quality import fid_against, frechet_distance, reference_statistics
from disback_pipeline.evaluation.samples import parse_seeds, read_images
from disback_pipeline.fid import main as fid_main
from disback_pipeline.generate import main as generate_main

UNET = {"backbone": "unet", "sigma_data": 0.5, "in_channels": 1, "img_resolution": 8, "model_channels": 8,
        "channel_mult": [1, 2], "num_blocks": 1, "attn_resolutions": [4], "dropout": 0.0, "label_dim": 10}
MLP = {"backbone": "mlp", "dim": 2, "width": 32, "num_blocks": 2, "emb_dim": 16, "label_dim": 0}


def _ckpt(tmp_path, cfg, role="generator", name="g.pt"):
    torch.manual_seed(0)
    net = build_network(cfg)
    for p in net.parameters():  # a non-trivial network: the UNet's output layer starts at zero
        p.data.add_(0.05 * torch.randn_like(p))
    file = tmp_path / name
    save_checkpoint(Checkpoint(net, dict(cfg), {"role": role, "s_init": 2.5}), file)
    return file


def test_parse_seeds_reads_ranges_and_lists():
    assert parse_seeds("0-3,7,10-11") == [0, 1, 2, 3, 7, 10, 11]
    assert parse_seeds("5") == [5]
    with pytest.raises(ValueError, match="integers or ranges"):
        parse_seeds("0-x")
    with pytest.raises(ValueError, match="at least one seed"):
        parse_seeds(",")


def test_same_seeds_in_any_batch_size_give_identical_files(tmp_path):
    student = _ckpt(tmp_path, UNET)
    for batch in (1, 7, 50):
        assert generate_main([str(student), "--seeds", "0-19", "--batch", str(batch), "--device", "cpu",
                              "--out", str(tmp_path / f"b{batch}.npz")]) == 0
        assert generate_main([str(student), "--seeds", "0-19", "--batch", str(batch), "--device", "cpu",
                              "--out", str(tmp_path / f"png{batch}")]) == 0
    arrays = [np.load(tmp_path / f"b{b}.npz")["arr_0"] for b in (1, 7, 50)]
    assert arrays[0].shape == (20, 8, 8, 1) and arrays[0].dtype == np.uint8 and arrays[0].std() > 0
    assert all(np.array_equal(arrays[0], a) for a in arrays[1:])
    for name in ("000000.png", "000013.png", "000019.png"):
        assert len({(tmp_path / f"png{b}" / name).read_bytes() for b in (1, 7, 50)}) == 1
    # a sample depends on its seed alone: seed 13 drawn on its own is the 14th of 0-19
    assert generate_main([str(student), "--seeds", "13", "--device", "cpu", "--out", str(tmp_path / "one.npz")]) == 0
    assert np.array_equal(np.load(tmp_path / "one.npz")["arr_0"][0], arrays[0][13])


def test_vector_data_and_teacher_sampling(tmp_path):
    student, teacher = _ckpt(tmp_path, MLP), _ckpt(tmp_path, MLP, role="teacher", name="t.pt")
    for batch in (3, 16):
        assert generate_main([str(student), "--seeds", "0-15", "--batch", str(batch), "--device", "cpu",
                              "--out", str(tmp_path / f"v{batch}.npy")]) == 0
    assert np.array_equal(np.load(tmp_path / "v3.npy"), np.load(tmp_path / "v16.npy"))
    assert generate_main([str(teacher), "--seeds", "0-3", "--nfe", "3", "--device", "cpu",
                          "--out", str(tmp_path / "t.npy")]) == 0
    assert np.load(tmp_path / "t.npy").shape == (4, 2)
    assert generate_main([str(student), "--seeds", "0-3", "--out", str(tmp_path / "wrong.npz")]) == 2


def test_class_option(tmp_path, caplog):
    student = _ckpt(tmp_path, UNET)
    assert generate_main([str(student), "--seeds", "0-9", "--class", "3", "--device", "cpu",
                          "--out", str(tmp_path / "c3.npz")]) == 0
    assert generate_main([str(student), "--seeds", "0-9", "--device", "cpu", "--out", str(tmp_path / "any.npz")]) == 0
    assert not np.array_equal(np.load(tmp_path / "c3.npz")["arr_0"], np.load(tmp_path / "any.npz")["arr_0"])
    assert generate_main([str(student), "--seeds", "0", "--class", "10", "--out", str(tmp_path / "x.npz")]) == 2
    assert "--class 10 is out of range: the model has 10 classes" in caplog.text


@pytest.fixture(scope="module")
def digits_reference(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ref")
    source = load_digits_source()
    trained = train_domain_classifier(source, steps=30, seed=0)
    spec = FeatureSpec("domain", trained.net, trained.config, trained.test_accuracy)
    FeatureExtractorDataset(str(folder / "extractor.pt")).save(spec)
    NpzDataset(str(folder / "ref.npz")).save(reference_statistics(spec.extract(source.images)))
    return folder, spec


def test_fid_of_a_folder_and_an_npz_matches_the_library(tmp_path, digits_reference, capsys):
    folder, spec = digits_reference
    student = _ckpt(tmp_path, {**UNET, "label_dim": 0})
    for out in ("s.npz", "s"):
        assert generate_main([str(student), "--seeds", "0-39", "--device", "cpu", "--out", str(tmp_path / out)]) == 0
    records = []
    for samples in ("s.npz", "s"):
        capsys.readouterr()
        assert fid_main([str(tmp_path / samples), "--reference", str(folder / "ref.npz"), "--extractor",
                         str(folder / "extractor.pt"), "--out", str(tmp_path / "fid.json")]) == 0
        records.append(json.loads(capsys.readouterr().out))
    # the same uint8 images as the npz, read into the same layout: the same features, bit for bit
    assert torch.equal(read_images(tmp_path / "s.npz"), read_images(tmp_path / "s"))
    assert read_images(tmp_path / "s").stride() == read_images(tmp_path / "s.npz").stride() == (64, 64, 8, 1)
    assert records[0]["fid"] == records[1]["fid"]
    reference = NpzDataset(str(folder / "ref.npz")).load()
    expected = fid_against(reference, spec.extract(read_images(tmp_path / "s.npz")))
    assert records[0]["fid"] == pytest.approx(expected) and records[0]["fid"] > 0
    assert {k: records[0][k] for k in ("extractor", "mode", "n_samples", "reference_hash")} == \
        {"extractor": "domain", "mode": "features", "n_samples": 40, "reference_hash": str(reference["hash"])}
    assert json.loads((tmp_path / "fid.json").read_text()) == records[1]


def test_fid_errors_name_the_problem(tmp_path, digits_reference, caplog):
    folder, _ = digits_reference
    assert fid_main([str(tmp_path / "missing"), "--reference", str(folder / "ref.npz")]) == 2
    assert "neither a folder of images nor an .npz" in caplog.text
    (tmp_path / "s").mkdir()
    np.savez(tmp_path / "x.npz", arr_0=np.zeros((4, 8, 8, 1), np.uint8))
    assert fid_main([str(tmp_path / "x.npz"), "--reference", str(tmp_path / "nope.npz")]) == 2
    assert "run `kedro run --pipelines=reference`" in caplog.text
    NpzDataset(str(tmp_path / "other.npz")).save(reference_statistics(np.random.default_rng(0).normal(size=(50, 3))))
    assert fid_main([str(tmp_path / "x.npz"), "--reference", str(tmp_path / "other.npz"), "--extractor",
                     str(folder / "extractor.pt")]) == 2
    assert "holds statistics of 3-dimensional features" in caplog.text


def test_frechet_distance_without_scipys_disp_argument(monkeypatch):
    """clean-fid 0.1.35 passes sqrtm(..., disp=False), which scipy 1.18 removed: the same value comes back."""
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(400, 6)), rng.normal(0.3, 1.2, size=(400, 6))
    args = (a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
    with_disp = frechet_distance(*args)  # clean-fid on this machine's scipy
    from scipy import linalg

    real_sqrtm = linalg.sqrtm

    def sqrtm_without_disp(A, **kwargs):
        if "disp" in kwargs:
            raise TypeError("sqrtm() got an unexpected keyword argument 'disp'")
        return real_sqrtm(A, **kwargs)

    monkeypatch.setattr(linalg, "sqrtm", sqrtm_without_disp)
    assert frechet_distance(*args) == pytest.approx(with_disp, rel=1e-9)
    diff = args[0] - args[2]  # and the formula itself, on diagonal covariances where the root is explicit
    d1, d2 = np.diag(np.diag(args[1])), np.diag(np.diag(args[3]))
    explicit = diff @ diff + np.trace(d1) + np.trace(d2) - 2 * np.sum(np.sqrt(np.diag(d1) * np.diag(d2)))
    assert frechet_distance(args[0], d1, args[2], d2) == pytest.approx(explicit, rel=1e-9)


def test_frechet_distance_without_clean_fid_installed(monkeypatch):
    """On a machine without the project's install (clean-fid missing) the same value comes back."""
    import sys

    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(300, 5)), rng.normal(0.2, 0.9, size=(300, 5))
    args = (a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
    with_clean_fid = frechet_distance(*args)
    monkeypatch.setitem(sys.modules, "cleanfid.fid", None)  # import fails as if it were not installed
    assert frechet_distance(*args) == pytest.approx(with_clean_fid, rel=1e-9)
