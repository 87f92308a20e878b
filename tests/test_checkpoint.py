import pytest
import torch

from disback_pipeline.diffusion.backbones import build_network
from disback_pipeline.diffusion.checkpoint import (
    Checkpoint,
    CheckpointError,
    load_checkpoint,
    read_payload,
    save_checkpoint,
)

CONFIG = {"backbone": "mlp", "dim": 2, "width": 16, "num_blocks": 1, "emb_dim": 8}


def _saved(tmp_path):
    torch.manual_seed(0)
    net = build_network(CONFIG)
    path = tmp_path / "net.pt"
    save_checkpoint(Checkpoint(net, CONFIG, {"step": 7, "dataset": "gmm2d", "seed": 0}), path)
    return net, path


def test_round_trip_is_exact(tmp_path):
    net, path = _saved(tmp_path)
    ckpt = load_checkpoint(path)
    assert ckpt.config == CONFIG and ckpt.metadata == {"step": 7, "dataset": "gmm2d", "seed": 0}
    for (k, a), (k2, b) in zip(net.state_dict().items(), ckpt.net.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    x = torch.randn(5, 2)
    assert torch.equal(net(x, 0.7), ckpt.net(x, 0.7))


def _tamper(path, fn):
    payload = torch.load(path, weights_only=True)
    fn(payload["state_dict"])
    torch.save(payload, path)


def test_missing_key_is_named(tmp_path):
    _, path = _saved(tmp_path)
    _tamper(path, lambda sd: sd.pop("backbone.out.bias"))
    with pytest.raises(CheckpointError, match=r"net\.pt.*missing keys: \['backbone\.out\.bias'\]"):
        load_checkpoint(path)


def test_extra_key_is_named(tmp_path):
    _, path = _saved(tmp_path)
    _tamper(path, lambda sd: sd.__setitem__("module.extra", torch.zeros(1)))
    with pytest.raises(CheckpointError, match=r"unexpected keys: \['module\.extra'\]"):
        load_checkpoint(path)


def test_missing_file_and_foreign_file(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "absent.pt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not a disback-pipeline checkpoint"):
        read_payload(tmp_path / "foreign.pt")


class Evil:
    """Any class outside torch's allow-list; weights_only loading must refuse it."""


def test_weights_only_refuses_arbitrary_objects(tmp_path):
    torch.save({"format": "disback-checkpoint", "obj": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        read_payload(tmp_path / "evil.pt")


def test_failed_save_keeps_previous_file(tmp_path, monkeypatch):
    net, path = _saved(tmp_path)
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(Checkpoint(net, CONFIG, {"step": 8}), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["net.pt"]
