"""Bad input, one case a row: each error names the file or key and the fix, and nothing already written changes.

The README's "When something goes wrong" lists these cases with their messages."""

from __future__ import annotations

import json
import pickle
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from disback_pipeline.diffusion.backbones import build_network
from disback_pipeline.diffusion.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from disback_pipeline.diffusion.config import DegradationConfig
from disback_pipeline.diffusion.data import GaussianMixture2D, load_image_folder
from disback_pipeline.diffusion.degradation import record_degradation
from disback_pipeline.diffusion.path import load_path, save_path
from disback_pipeline.diffusion.teacher import load_teacher
from disback_pipeline.evaluation.features import FeatureSpec, inception_extractor
from disback_pipeline.parameters import build
from disback_pipeline.pipelines.reference.nodes import build_reference_stats

MLP = {"backbone": "mlp", "dim": 2, "width": 16, "num_blocks": 1, "emb_dim": 8}


def _teacher(tmp_path, config=MLP):
    torch.manual_seed(0)
    ckpt = Checkpoint(build_network(config), dict(config), {"role": "teacher"})
    save_checkpoint(ckpt, tmp_path / "teacher.pt")
    return tmp_path / "teacher.pt"


# Each case prepares its bad input under tmp_path and returns the call that must fail on it.

def truncated_pt(tmp_path):
    file = _teacher(tmp_path)
    file.write_bytes(file.read_bytes()[:200])
    return lambda: load_teacher(str(file))


def pkl_not_a_snapshot(tmp_path):
    (tmp_path / "net.pkl").write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    return lambda: load_teacher(str(tmp_path / "net.pkl"))


def pkl_not_a_pickle(tmp_path):
    (tmp_path / "net.pkl").write_text("this is a text file\n")
    return lambda: load_teacher(str(tmp_path / "net.pkl"))


def other_architecture(tmp_path):
    file = _teacher(tmp_path)
    payload = torch.load(file, weights_only=True)
    payload["network"] = {**MLP, "width": 32}  # the weights are width 16
    torch.save(payload, file)
    return lambda: load_checkpoint(file)


def other_data_shape(tmp_path):
    file = _teacher(tmp_path)  # built for 2-D points
    return lambda: record_degradation(load_checkpoint(file), _digits(),
                                      DegradationConfig(k1=2, n_nodes=1, device="cpu"), 2.5)


def _digits():
    from disback_pipeline.diffusion.data import load_digits_source

    return load_digits_source()


def _path_folder(folder):
    torch.manual_seed(0)
    path, _ = record_degradation(Checkpoint(build_network(MLP), dict(MLP), {}), GaussianMixture2D.ring(4),
                                 DegradationConfig(k1=4, n_nodes=2, spacing="iterations", batch_size=8,
                                                   device="cpu", log_every=0), 2.5)
    save_path(path, folder)
    return folder


def manifest_missing_node(tmp_path):
    folder = _path_folder(tmp_path / "path")
    next(folder.glob("step_*.pt")).unlink()
    return lambda: load_path(folder)


def manifest_sha_mismatch(tmp_path):
    folder = _path_folder(tmp_path / "path")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["nodes"][1]["sha256"] = "0" * 64
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return lambda: load_path(folder).load_into(build_network(MLP), manifest["nodes"][1]["key"])


def _manifest_entry(tmp_path, name):
    folder = _path_folder(tmp_path / "path")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["nodes"][1]["file"] = name(tmp_path) if callable(name) else name
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def manifest_absolute_path(tmp_path):
    folder = _manifest_entry(tmp_path, lambda t: str(t / "outputs" / "teacher.pt"))
    return lambda: load_path(folder)


def manifest_parent_path(tmp_path):
    folder = _manifest_entry(tmp_path, "../outputs/teacher.pt")
    return lambda: load_path(folder)


def manifest_symlink_out(tmp_path):
    folder = _manifest_entry(tmp_path, "linked.pt")
    (folder / "linked.pt").symlink_to(tmp_path / "outputs" / "teacher.pt")
    return lambda: load_path(folder)


def params(**stages):
    return lambda tmp_path: lambda: build(stages)


def empty_folder(tmp_path):
    (tmp_path / "images").mkdir()
    return lambda: load_image_folder(tmp_path / "images", 8)


def non_image_png(tmp_path):
    (tmp_path / "images").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "images" / "a.png")
    (tmp_path / "images" / "b.png").write_text("not an image")
    return lambda: load_image_folder(tmp_path / "images", 8)


def missing_inception(tmp_path):
    return lambda: inception_extractor(tmp_path / "nowhere" / "inception-2015-12-05.pt")


def too_many_reference_samples(tmp_path):
    return lambda: build_reference_stats(FeatureSpec("none"), {"source": "digits"}, {"reference_samples": 5000})


TEACHER = {"network": {"backbone": "mlp"}}
CASES = {
    "truncated .pt": (truncated_pt, r"teacher.pt: not a readable checkpoint, truncated or corrupt.*dvc checkout"),
    ".pkl that is no EDM snapshot": (pkl_not_a_snapshot, r"net.pkl: expected an EDM snapshot dict with key 'ema'.*"
                                                         r"teacher.checkpoint_path must name"),
    ".pkl that is no pickle": (pkl_not_a_pickle, r"net.pkl: not a pickle.*copy the EDM network-snapshot"),
    "checkpoint of another architecture": (other_architecture, r"teacher.pt: the weights do not fit the network its "
                                                               r"config describes \(13 size mismatches.*different "
                                                               r"architecture"),
    "checkpoint for other data": (other_data_shape, r"built for data of shape \(2,\).*\(1, 8, 8\).*Point "
                                                    r"teacher.checkpoint_path at a teacher for these data"),
    "manifest names a missing node": (manifest_missing_node, r"manifest lists step_.*\.pt but the file is missing; "
                                                             r"re-run the degradation pipeline"),
    "node sha256 differs": (manifest_sha_mismatch, r"step_.*\.pt: sha256 differs from the manifest.*dvc checkout"),
    "manifest entry with an absolute path": (manifest_absolute_path, r"entry '/.*teacher.pt' points outside .*path; "
                                                                     r"a path's manifest may only name files in its "
                                                                     r"own folder"),
    "manifest entry with ..": (manifest_parent_path, r"entry '\.\./outputs/teacher.pt' points outside"),
    "manifest entry a symlink out": (manifest_symlink_out, r"entry 'linked.pt' points outside"),
    "misspelt key": (params(backtracking={"fake_step": 5}),
                     r"unknown parameter backtracking.fake_step; did you mean backtracking.fake_steps\?"),
    "negative learning rate": (params(teacher={**TEACHER, "training": {"lr": -1e-3}}),
                               r"teacher.training.lr must be > 0, got -0.001"),
    "K1 < N": (params(degradation={"k1": 3, "n_nodes": 4}), r"degradation.k1 \(K1, .*\) must be >= n_nodes = 4"),
    "budget 0": (params(backtracking={"budget": 0}), r"backtracking.budget must be >= 1, got 0"),
    "even Heun NFE": (params(shared={"sampler": {"nfe": 34}}),
                      r"shared.sampler.nfe must be a positive odd integer \(2 \* steps - 1\), got 34"),
    "a key of another block": (params(backtracking={"s_init": 1.0}),
                               r"backtracking.s_init is not a backtracking setting: set shared.s_init"),
    "batch size 0": (params(backtracking={"batch_size": 0}), r"backtracking.batch_size must be >= 1, got 0"),
    "float where an integer goes": (params(degradation={"n_nodes": 2.7}), r"degradation.n_nodes must be an integer"),
    "resume value": (params(checkpointing={"resume": "yes"}), r"checkpointing.resume must be one of auto \| never"),
    "empty image folder": (empty_folder, r"no .png/.jpg/.jpeg files found under .*images"),
    "non-image with .png suffix": (non_image_png, r"images/b.png is not a readable image .*remove it"),
    "missing Inception file": (missing_inception, r"Inception weights not found at .*inception-2015-12-05.pt.*"
                                                  r"evaluation.inception_path"),
    "more reference samples than data": (too_many_reference_samples, r"evaluation.reference_samples = 5000, but the "
                                                                     r"data \(digits\) hold only 1797 images; set "
                                                                     r"it to 1797 or fewer"),
}


def snapshot(folder):
    """Every file under ``folder`` but a run's lock (each run writes its pid there): bytes and modification time."""
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != ".lock"}


def kept(before: dict, after: dict) -> bool:
    """Every output file of ``before`` is in ``after`` with its bytes and time; new files only in the run's scratch
    folder (the MLflow run a failed run leaves for the next one to continue)."""
    assert {p: after.get(p) for p in before} == before
    assert [p for p in set(after) - set(before) if "09_training_state" not in p.parts] == []
    return True


@pytest.fixture(scope="module")
def previous_run(tmp_path_factory):
    """Outputs of an earlier run (a teacher, a degradation path): a bad input must leave them as they are."""
    folder = tmp_path_factory.mktemp("previous")
    _teacher(folder)
    _path_folder(folder / "degradation_path")
    return folder


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_bad_input_is_named_with_its_fix(case, tmp_path, previous_run):
    prepare, message = CASES[case]
    shutil.copytree(previous_run, tmp_path / "outputs", copy_function=shutil.copy2)
    fail = prepare(tmp_path)  # the bad input, beside the earlier outputs
    before = snapshot(tmp_path)
    assert sum(p.parent.name == "degradation_path" for p in before) >= 3 and len(before) >= 4
    with pytest.raises(Exception, match=message):
        fail()
    assert snapshot(tmp_path) == before  # nothing that existed before the call changed, moved or went


def test_mixed_sizes_and_modes_are_converted(tmp_path):
    """Accepted: any size (short side resized, centre cropped) and any mode (converted to data.channels)."""
    folder = tmp_path / "images"
    folder.mkdir()
    Image.new("L", (16, 12), 200).save(folder / "grey.png")
    Image.new("RGB", (8, 8), (255, 0, 0)).save(folder / "rgb.png")
    Image.new("RGBA", (20, 20), (0, 0, 255, 128)).save(folder / "rgba.png")
    Image.new("P", (10, 30)).save(folder / "palette.png")
    src = load_image_folder(folder, 8, channels=3)
    assert src.images.shape == (4, 3, 8, 8)
    grey = src.images[0]
    assert torch.allclose(grey[0], grey[1]) and torch.allclose(grey[1], grey[2])  # grey -> equal RGB channels
    assert np.isclose(float(grey.mean()), 200 / 127.5 - 1, atol=1e-2)
    assert load_image_folder(folder, 8, channels=1).images.shape == (4, 1, 8, 8)


def test_a_corrupt_teacher_file_or_a_misspelt_key_stops_the_run_and_keeps_the_outputs(project, tmp_path):
    from .conftest import TINY_UNET

    project.edit("base", "parameters_teacher", teacher__network=TINY_UNET, teacher__training__steps=3,
                 teacher__training__batch_size=8, teacher__report__num_samples=4, shared__sampler__nfe=3)
    project.run("teacher")
    outputs = snapshot(project.path / "data/base")
    assert any(p.name == "teacher.pt" for p in outputs) and any(p.suffix == ".png" for p in outputs)
    bad = tmp_path / "broken.pt"
    bad.write_bytes((project.path / "data/base/06_models/teacher.pt").read_bytes()[:300])
    project.edit("base", "parameters_teacher", teacher__mode="load", teacher__checkpoint_path=str(bad))
    with pytest.raises(Exception, match="broken.pt: not a readable checkpoint, truncated or corrupt"):
        project.run("teacher")
    assert kept(outputs, snapshot(project.path / "data/base"))
    project.edit("base", "parameters_teacher", teacher__mode="pretrain", teacher__training__stpes=3)
    with pytest.raises(Exception, match="unknown parameter teacher.training.stpes; did you mean "
                                        "teacher.training.steps"):
        project.run("teacher")
    assert kept(outputs, snapshot(project.path / "data/base"))
