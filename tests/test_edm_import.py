"""EDM-compatible networks (parity fixtures) and the safe snapshot importer."""

import json
import os
import pickle
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from disback_pipeline.diffusion.backbones import build_network
from disback_pipeline.diffusion.checkpoint import CheckpointError, load_checkpoint, load_state_strict
from disback_pipeline.diffusion.edm_import import UnsafePickleError, config_from_edm_kwargs, parity_error, read_snapshot
from disback_pipeline.import_edm import main as import_main

from .conftest import ProjectCopy  # noqa: F401  (the `project` fixture lives in conftest)

# shared/ lies beside the checkout (here and in CI); DISBACK_EDM_FIXTURES points elsewhere
FIXTURES = Path(os.environ.get("DISBACK_EDM_FIXTURES",
                               Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "edm_parity"))
NAMES = ["songunet_ddpmpp_cond", "songunet_ncsnpp_uncond", "dhariwalunet_adm_cond"]
# only the tests that read the parity fixtures skip without them; the hostile-pickle tests need none
needs_fixtures = pytest.mark.skipif(not FIXTURES.is_dir(), reason="shared/fixtures/edm_parity not found")


def _fixture_net(name):
    kwargs = json.loads((FIXTURES / f"{name}.json").read_text())["init_kwargs"]
    net = build_network(config_from_edm_kwargs(kwargs)).eval()
    state = torch.load(FIXTURES / f"{name}.state_dict.pt", weights_only=True)
    return net, state


@needs_fixtures
@pytest.mark.parametrize("name", NAMES)
def test_fixture_loads_strictly_and_matches(name):
    net, state = _fixture_net(name)
    load_state_strict(net, state, name)
    meta = json.loads((FIXTURES / f"{name}.json").read_text())
    assert len(net.state_dict()) == meta["n_state_keys"]
    assert sum(p.numel() for p in net.parameters()) == meta["n_params"]
    assert parity_error(net, FIXTURES / f"{name}.io.pt") <= 1e-4


@needs_fixtures
def test_renamed_edm_key_fails_loudly():
    net, state = _fixture_net("songunet_ddpmpp_cond")
    state["model.enc.16x16_conv.w"] = state.pop("model.enc.16x16_conv.weight")
    with pytest.raises(CheckpointError, match=r"missing keys: \['model\.enc\.16x16_conv\.weight'\]"):
        load_state_strict(net, state, "renamed")


@needs_fixtures
def test_snapshot_reads_without_executing_source():
    kwargs, state = read_snapshot(FIXTURES / "songunet_ddpmpp_cond.snapshot.pkl")
    ref = torch.load(FIXTURES / "songunet_ddpmpp_cond.state_dict.pt", weights_only=True)
    assert kwargs["model_type"] == "SongUNet" and kwargs["augment_dim"] == 9
    assert list(state) == list(ref) and all(torch.equal(state[k], ref[k]) for k in ref)


@needs_fixtures
def test_cli_converts_and_checks(tmp_path, caplog):
    caplog.set_level("INFO")
    out = tmp_path / "teacher.pt"
    rc = import_main([str(FIXTURES / "songunet_ddpmpp_cond.snapshot.pkl"), str(out),
                      "--check", str(FIXTURES / "songunet_ddpmpp_cond.io.pt")])
    assert rc == 0 and "max abs error" in caplog.text
    ckpt = load_checkpoint(out)
    assert ckpt.config["backbone"] == "songunet" and ckpt.metadata["source"] == "edm-snapshot"
    assert parity_error(ckpt.net, FIXTURES / "songunet_ddpmpp_cond.io.pt") <= 1e-4
    # the wrong parity file: same shapes, other network -> exit 1
    io = torch.load(FIXTURES / "songunet_ddpmpp_cond.io.pt", weights_only=True)
    io["denoised"] = io["denoised"] + 1e-2
    torch.save(io, tmp_path / "off.io.pt")
    assert import_main([str(FIXTURES / "songunet_ddpmpp_cond.snapshot.pkl"), str(tmp_path / "again.pt"),
                        "--check", str(tmp_path / "off.io.pt")]) == 1


class _System:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _Touch:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def _hostile(tmp_path, payload, name):
    path = tmp_path / name
    path.write_bytes(pickle.dumps(payload, protocol=4))
    return path


@pytest.mark.parametrize("make", [
    lambda m: {"ema": _System(m)},
    lambda m: {"ema": _Touch(m)},
    lambda m: {"ema": np.array([1.0]), "x": _System(m)},  # numpy's array reconstruct is not allowed either
])
def test_hostile_pickles_are_refused_and_nothing_runs(tmp_path, make, caplog):
    marker = tmp_path / "pwned"
    path = _hostile(tmp_path, make(marker), "evil.pkl")
    with pytest.raises(UnsafePickleError, match="refusing to load global"):
        read_snapshot(path)
    assert import_main([str(path), str(tmp_path / "out.pt")]) == 2
    assert "refusing to load global" in caplog.text
    assert not marker.exists() and not (tmp_path / "out.pt").exists()


def _reconstruct_persistent_obj(meta):  # pragma: no cover - pickled by reference only
    return meta


class _SmugglingRecord:
    """Pickles as EDM's persistence call, with builtins.eval hidden in the recorded state."""

    def __reduce__(self):
        return (_reconstruct_persistent_obj, ({"type": "class", "version": 6, "module_src": "import os",
                                              "class_name": "EDMPrecond", "state": {"x": eval}},))


def test_hostile_global_inside_a_persistence_record_is_named(tmp_path, monkeypatch):
    fake = types.ModuleType("torch_utils.persistence")
    fake._reconstruct_persistent_obj = _reconstruct_persistent_obj
    monkeypatch.setattr(_reconstruct_persistent_obj, "__module__", "torch_utils.persistence")
    monkeypatch.setitem(sys.modules, "torch_utils", types.ModuleType("torch_utils"))
    monkeypatch.setitem(sys.modules, "torch_utils.persistence", fake)
    path = _hostile(tmp_path, {"ema": _SmugglingRecord()}, "record.pkl")
    monkeypatch.delitem(sys.modules, "torch_utils.persistence")
    with pytest.raises(UnsafePickleError, match=r"builtins\.eval"):
        read_snapshot(path)


def test_not_a_snapshot(tmp_path):
    path = _hostile(tmp_path, {"weights": [1, 2]}, "plain.pkl")
    with pytest.raises(ValueError, match="expected an EDM snapshot dict with key 'ema'"):
        read_snapshot(path)
    with pytest.raises(FileNotFoundError):
        read_snapshot(tmp_path / "absent.pkl")
    with pytest.raises(ValueError, match="unsupported EDM model_type"):
        config_from_edm_kwargs({"model_type": "VPPrecondNet", "img_resolution": 8, "img_channels": 3})


@needs_fixtures
@pytest.mark.slow
def test_converted_fixture_teacher_runs_through_distill(project, tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for label in range(10):
        folder = tmp_path / "images" / f"class{label}"
        folder.mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    teacher = tmp_path / "teacher.pt"
    assert import_main([str(FIXTURES / "songunet_ddpmpp_cond.snapshot.pkl"), str(teacher)]) == 0
    project.edit("base", "parameters_data", data={"source": "image_folder", "path": str(tmp_path / "images"),
                                                  "resolution": 16, "channels": 3, "conditional": True})
    project.edit("base", "parameters_teacher", teacher__mode="load", teacher__checkpoint_path=str(teacher),
                 teacher__report__num_samples=4, shared__sampler__nfe=3)
    project.edit("base", "parameters_degradation", degradation__k1=2, degradation__n_nodes=1,
                 degradation__batch_size=2, degradation__candidates=2, degradation__probe_size=4)
    project.edit("base", "parameters_backtracking", backtracking__k2=1, backtracking__budget=2,
                 backtracking__batch_size=2, backtracking__eval_every=0,
                 backtracking__keep="last")
    project.edit("base", "parameters_evaluation", evaluation__domain__steps=5, evaluation__n_samples=12,
                 evaluation__grid_samples=4)
    project.run("distill")
    root = project.path / "data" / "base"
    gen = load_checkpoint(root / "06_models/generator_ema.pt")
    assert gen.config["backbone"] == "songunet" and gen.config["label_dim"] == 10
    assert "model.map_label.weight" in gen.net.state_dict()
    metrics = json.loads((root / "08_reporting/metrics.json").read_text())
    assert metrics["student"]["n_samples"] == 12 and np.isfinite(metrics["student"]["fid"])
