"""Fixtures shared by the napari tests (a real viewer; run under xvfb-run)."""

from __future__ import annotations

import pytest


@pytest.fixture
def widget(make_napari_viewer):
    """A viewer and the plugin's widget, shut down after the test."""
    from napari_sammed2d._widget import SegmentWidget

    viewer = make_napari_viewer()
    w = SegmentWidget(viewer)
    yield viewer, w
    w.shutdown()
