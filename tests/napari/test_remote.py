"""The napari widget with Engine: remote, against a real `sammed2d serve` (under xvfb-run)."""

from __future__ import annotations

import numpy as np
import pytest

napari = pytest.importorskip("napari")
pytest.importorskip("fastapi")

from tests.remote.conftest import running_server  # noqa: E402

from .test_widget import block_volume, draw_box  # noqa: E402


def use_server(w, url, key):
    w.engine_combo.setCurrentText("remote")
    w.server_edit.setText(url)
    w.key_edit.setText(key)
    w._on_engine_changed()


def use_local(w, checkpoint):
    w.engine_combo.setCurrentText("local")
    w.model_edit.setText(str(checkpoint))
    w.device_combo.setCurrentText("cpu")


@pytest.fixture(scope="module")
def tiny_server():
    import torch

    from sammed2d import build_model

    torch.manual_seed(0)  # the same weights as the tiny_checkpoint fixture
    model = build_model(
        "sam-med2d", embed_dim=32, depth=2, num_heads=2, global_attn=(1,), adapters=True
    ).eval()
    with running_server(model, api_key="napari-key") as (url, state):
        yield url, state


def test_remote_engine_segments_and_propagates_like_the_local_one(
    widget, tiny_server, tiny_checkpoint, qtbot
):
    viewer, w = widget
    url, state = tiny_server
    viewer.add_image(block_volume(), name="ct")
    w.preset_combo.setCurrentText("abdomen")
    use_server(w, url, "napari-key")
    assert w.engine.remote and not w.model_edit.isEnabled()
    _, shapes, labels = w.ensure_prompt_layers()
    clicks = state.clicks
    draw_box(viewer, shapes, 3, 11, 9, 30, 26)
    w.wait_idle()
    assert state.clicks == clicks + 1  # the server did the work
    assert f"at {url}" in w.engine_combo.toolTip()  # the server's model and device, named
    remote_click = labels.data.copy()
    assert remote_click[3].any() and not remote_click[[0, 1, 2, 4, 5, 6, 7]].any()

    runs = state.runs
    w.propagate_object()
    with qtbot.waitSignal(w._busy.finished, timeout=120_000):
        pass
    remote_run = labels.data.copy()
    assert remote_run[3].any() and state.runs == runs + 1

    # The same prompts through the local engine, with the same weights.
    labels.data = np.zeros_like(labels.data)
    use_local(w, tiny_checkpoint)
    assert not w.engine.remote
    w.segment_current_slice()
    w.wait_idle()
    np.testing.assert_array_equal(labels.data, remote_click)
    w.propagate_object()
    with qtbot.waitSignal(w._busy.finished, timeout=120_000):
        pass
    np.testing.assert_array_equal(labels.data, remote_run)


def test_a_wrong_key_is_shown_in_one_line(widget, tiny_server):
    viewer, w = widget
    url, _ = tiny_server
    viewer.add_image(block_volume(), name="ct")
    use_server(w, url, "wrong")
    _, shapes, labels = w.ensure_prompt_layers()
    draw_box(viewer, shapes, 3, 11, 9, 30, 26)
    w.wait_idle()
    assert "API key" in w.status.text() and "\n" not in w.status.text()
    assert not labels.data.any()


def test_propagate_all_is_one_server_run_and_equals_the_local_one(
    widget, tiny_server, tiny_checkpoint, qtbot
):
    """Propagate all sends every object in one request, and the server's composed labels
    are what the local engine composes from the same prompts and weights."""
    viewer, w = widget
    url, state = tiny_server
    vol = block_volume()
    vol[4:8, 34:46, 28:38] = 60
    viewer.add_image(vol, name="ct")
    w.preset_combo.setCurrentText("abdomen")
    use_server(w, url, "napari-key")
    _, shapes, labels = w.ensure_prompt_layers()
    draw_box(viewer, shapes, 3, 11, 9, 30, 26)
    w.wait_idle()
    w.new_object()
    draw_box(viewer, shapes, 5, 33, 27, 46, 38)
    w.wait_idle()
    runs = state.runs
    w.propagate_all()
    with qtbot.waitSignal(w._busy.finished, timeout=120_000):
        pass
    assert state.runs == runs + 1
    remote_run = labels.data.copy()
    assert set(np.unique(remote_run)) == {0, 1, 2}

    labels.data = np.zeros_like(labels.data)
    use_local(w, tiny_checkpoint)
    w.propagate_all()
    with qtbot.waitSignal(w._busy.finished, timeout=120_000):
        pass
    np.testing.assert_array_equal(labels.data, remote_run)
