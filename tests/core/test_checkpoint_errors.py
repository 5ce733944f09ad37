"""Checkpoints are untrusted input: each bad file gets one clear error, nothing runs."""

from __future__ import annotations

import pickle
import zipfile

import pytest
import torch

from sammed2d import load_model
from sammed2d.errors import CheckpointError
from sammed2d.models import read_state_dict


def test_official_layout_loads_without_the_optimizer(fixtures_dir):
    state = read_state_dict(fixtures_dir / "sammed2d_tiny.pth")
    assert all(torch.is_tensor(v) for v in state.values())
    assert "image_encoder.blocks.0.Adapter.norm.weight" in state


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="file not found"):
        load_model(tmp_path / "nowhere.pth")


def test_truncated_file(tmp_path, tiny_checkpoint):
    data = tiny_checkpoint.read_bytes()
    bad = tmp_path / "truncated.pth"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_model(bad)


def test_not_a_checkpoint(tmp_path):
    bad = tmp_path / "notes.pth"
    bad.write_text("this is not a model\n")
    with pytest.raises(CheckpointError, match=r"notes\.pth"):
        load_model(bad)


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_arbitrary_global_is_refused_and_never_called(tmp_path, capsys):
    bad = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "extra": Evil()}, bad)
    with pytest.raises(CheckpointError, match=r"refused to unpickle (builtins\.)?print"):
        read_state_dict(bad)
    assert "pwned" not in capsys.readouterr().out


def test_optimizer_stand_in_keeps_nothing(tmp_path):
    """An Adam object is allowed only as an inert stand-in: no optimizer code runs."""
    param = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.Adam([param])
    param.sum().backward()
    opt.step()
    path = tmp_path / "with_optimizer.pth"
    torch.save({"model": {"w": torch.ones(2)}, "optimizer": opt}, path)
    state = read_state_dict(path)
    assert list(state) == ["w"]


def test_not_a_state_dict(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([1, 2, 3], path)
    with pytest.raises(CheckpointError, match="expected a state dict"):
        read_state_dict(path)


def test_other_architecture(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(4, 3, 3, 3)}, path)
    with pytest.raises(CheckpointError, match="not a SAM-family model"):
        load_model(path)


def test_missing_and_unexpected_keys(tmp_path, tiny_checkpoint):
    state = torch.load(tiny_checkpoint, weights_only=True)
    state.pop("mask_decoder.iou_token.weight")
    state["mask_decoder.extra.weight"] = torch.zeros(1)
    path = tmp_path / "edited.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"1 missing keys.*1 unexpected keys"):
        load_model(path)


def test_wrong_shape(tmp_path, tiny_checkpoint):
    state = torch.load(tiny_checkpoint, weights_only=True)
    state["mask_decoder.iou_token.weight"] = torch.zeros(1, 128)
    path = tmp_path / "reshaped.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"wrong shapes .*iou_token.weight is \(1, 128\)"):
        load_model(path)


def test_name_with_wrong_weights_file(tmp_path, tiny_checkpoint, monkeypatch):
    folder = tmp_path / "weights"
    folder.mkdir()
    (folder / "sam_vit_b_01ec64.pth").write_bytes(tiny_checkpoint.read_bytes())
    monkeypatch.setenv("SAMMED2D_WEIGHTS", str(folder))
    with pytest.raises(CheckpointError, match="expected sam-vit-b weights, found a sam-med2d"):
        load_model("sam-vit-b")


def test_named_model_without_weights(monkeypatch, tmp_path):
    monkeypatch.setenv("SAMMED2D_WEIGHTS", str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(CheckpointError, match="sam-med2d_b.pth not found"):
        load_model("sam-med2d")


def test_unknown_name():
    with pytest.raises(CheckpointError, match="not a known name"):
        load_model("sam-vit-x")


def test_zip_without_pickle(tmp_path):
    path = tmp_path / "empty.pth"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.txt", "x")
    with pytest.raises(CheckpointError):
        read_state_dict(path)


def test_plain_pickle_without_tensors_is_refused(tmp_path):
    path = tmp_path / "legacy.pth"
    with open(path, "wb") as f:
        pickle.dump({"a": 1}, f)
    with pytest.raises(CheckpointError):
        read_state_dict(path)
