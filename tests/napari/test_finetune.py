"""Fine-tuning from the widget, on a small real model (run under xvfb-run)."""

from __future__ import annotations

import json

import pytest
import torch

napari = pytest.importorskip("napari")

from napari_sammed2d._session import LOCAL_ONLY, RemoteEngine  # noqa: E402
from sammed2d import load_model  # noqa: E402
from sammed2d.errors import SamMed2DError  # noqa: E402

from .test_widget import block_volume, setup_volume  # noqa: E402


def labelled(viewer, w, model):
    """The block volume with its block labelled on slices 2..5, as a user's corrections."""
    _, _, labels = setup_volume(viewer, w, model=str(model))
    labels.data[2:6, 12:30, 10:26] = 1
    labels.refresh()
    return labels


def test_fine_tune_writes_the_model_and_the_widget_uses_it(
    widget, qtbot, tiny_checkpoint, tmp_path
):
    viewer, w = widget
    labels = labelled(viewer, w, tiny_checkpoint)
    out = tmp_path / "tuned.pth"
    w.finetune_to(out)
    assert not w.finetune_button.isEnabled() and w.cancel_button.isEnabled()
    qtbot.waitUntil(lambda: w._busy is None, timeout=300_000)
    assert w.model_edit.text() == str(out)
    assert "validation Dice" in w.status.text() and "tuned.pth" in w.status.text()
    assert w.finetune_button.isEnabled() and w.propagate_button.isEnabled()

    info = json.loads((tmp_path / "tuned.pth.json").read_text())
    assert info["base_model"] == tiny_checkpoint.name and info["cases"] == 1
    assert info["report"]["train_samples"] == 3 and info["report"]["val_samples"] == 1
    tuned, base = load_model(out, device="cpu"), load_model(tiny_checkpoint, device="cpu")
    assert tuned.encoder_id == base.encoder_id
    decoder = base.mask_decoder.state_dict()
    changed = [
        k for k, v in tuned.mask_decoder.state_dict().items() if not torch.equal(v, decoder[k])
    ]
    assert changed or info["report"]["best_epoch"] == 0  # weights given kept if none did better
    # the model shared with the clicks was not trained in place
    served = w.engine.load(str(tiny_checkpoint), "auto", "fp32")
    for k, v in served.mask_decoder.state_dict().items():
        assert torch.equal(v, decoder[k]), k
    # the next click runs the tuned model, on the slices already embedded
    assert w.engine.load(*w._model_key()).weights_id == tuned.weights_id
    assert labels.data[2:6].any()


def test_cancel_writes_nothing_and_bad_requests_get_one_line(
    widget, qtbot, tiny_checkpoint, tmp_path, monkeypatch
):
    viewer, w = widget
    errors = []
    monkeypatch.setattr("napari_sammed2d._widget.show_error", errors.append)
    _, _, labels = setup_volume(viewer, w, model=str(tiny_checkpoint))
    w.finetune_to(tmp_path / "empty.pth")
    assert errors[-1] == "the labels are empty: segment or paint some slices first"
    labels.data[2:6, 12:30, 10:26] = 1
    w.finetune_to(tmp_path / "tuned.nii.gz")
    assert errors[-1] == "tuned.nii.gz: model weights are saved as .pth"
    w.finetune_to(tiny_checkpoint)
    assert "holds the weights being fine-tuned" in errors[-1]
    assert w._busy is None

    out = tmp_path / "tuned.pth"
    w.finetune_to(out)
    w.cancel()
    qtbot.waitUntil(lambda: w._busy is None, timeout=300_000)
    assert not out.exists() and not (tmp_path / "tuned.pth.json").exists()
    assert "cancelled" in w.status.text()
    assert w.model_edit.text() == str(tiny_checkpoint)


def test_a_remote_engine_refuses_to_fine_tune():
    with pytest.raises(SamMed2DError, match="Engine: local"):
        RemoteEngine("http://127.0.0.1:9").finetune(None, None, None)
    assert "labels stay here" in LOCAL_ONLY
    assert block_volume().shape == (8, 48, 40)
