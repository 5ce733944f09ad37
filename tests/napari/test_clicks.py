"""The click thread's loop without Qt: a real Engine, the messages the GUI thread gets."""

from __future__ import annotations

import queue
import threading

import numpy as np
import pytest

from napari_sammed2d._session import (
    Engine,
    Latest,
    SegmentRequest,
    Warmup,
    serve_clicks,
)
from sammed2d.objects import SlicePrompt

pytest.importorskip("torch")


def block_volume():
    vol = np.random.default_rng(0).normal(-80, 5, (8, 48, 40)).astype(np.float32)
    vol[2:6, 12:30, 10:26] = 150
    return vol


@pytest.fixture
def server():
    mailbox, inbox, stop = Latest(), queue.Queue(), threading.Event()
    engine = Engine()
    thread = threading.Thread(
        target=serve_clicks, args=(mailbox, lambda: engine, inbox.put, stop.is_set), daemon=True
    )
    thread.start()
    yield mailbox, inbox, engine
    stop.set()
    thread.join(10)


def request(data, model="litemedsam", **prompt):
    return SegmentRequest(
        1, 0, 3, SlicePrompt(**prompt), data, np.eye(4), "abdomen", (model, "cpu", "fp32")
    )


def test_warmup_loads_then_a_box_gives_its_mask(server):
    mailbox, inbox, engine = server
    mailbox.put(Warmup(("litemedsam", "cpu", "fp32")))
    assert inbox.get(timeout=120) == ("status", "loading litemedsam…")
    assert inbox.get(timeout=120) == ("loaded", "")
    assert engine.ready and engine.boxes_only
    data = block_volume()
    mailbox.put(request(data, box=np.array([9.0, 11, 27, 31])))
    kind, req, mask, window, _ = inbox.get(timeout=120)
    assert kind == "mask" and req.index == 3 and window is None  # a fixed preset
    assert mask.shape == (48, 40)
    inside = mask[12:30, 10:26].mean()
    assert inside > 0.8 and mask.sum() < 1.3 * 18 * 16


def test_points_alone_on_a_box_only_model_are_a_notice_not_a_mask(server):
    mailbox, inbox, _ = server
    data = block_volume()
    mailbox.put(request(data, points=np.array([[18.0, 20]]), labels=np.array([1])))
    messages = [inbox.get(timeout=120) for _ in range(3)]
    assert [m[0] for m in messages] == ["status", "loaded", "info"]
    assert "box" in messages[2][1]


def test_a_bad_model_is_a_status_line_on_warmup_and_an_error_on_a_click(server, tmp_path):
    mailbox, inbox, engine = server
    bad = tmp_path / "model.pth"
    bad.write_bytes(b"not a checkpoint")
    mailbox.put(Warmup((str(bad), "cpu", "fp32")))
    assert inbox.get(timeout=60)[0] == "status"  # loading…
    kind, text = inbox.get(timeout=60)
    assert kind == "status" and text.startswith("model not loaded:") and "model.pth" in text
    mailbox.put(request(block_volume(), model=str(bad), box=np.array([9.0, 11, 27, 31])))
    inbox.get(timeout=60)  # loading…
    kind, exc = inbox.get(timeout=60)
    assert kind == "error" and "model.pth" in str(exc)
    assert not engine.ready and not mailbox.busy
