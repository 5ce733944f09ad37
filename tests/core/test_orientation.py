"""Slices are shown to the model radiologically, and everything maps back exactly."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from sammed2d.orientation import SliceView, radiological_view, slice_view, stretch_for


@pytest.mark.parametrize(
    "flags, stretch",
    [(f, (1, 1)) for f in itertools.product([False, True], repeat=3)]
    + [(f, s) for f in [(False, False, False), (True, True, False)] for s in [(3, 1), (1, 2)]],
)
def test_view_round_trip_and_points_follow_pixels(flags, stretch):
    view = SliceView(*flags, stretch=stretch)
    image = np.arange(5 * 7).reshape(5, 7)
    if stretch != (1, 1):  # masks map back exactly; grey levels are interpolated
        image = np.random.default_rng(1).random((5, 7)) > 0.5
    shown = view.to_view(image)
    assert np.array_equal(view.from_view(shown), image)
    for row, col in [(0, 0), (4, 6), (2, 3), (1, 5)]:
        x, y = view.points_to_view(np.array([[col, row]]), image.shape)[0]
        assert shown[int(y), int(x)] == image[row, col]
    box = view.box_to_view(np.array([1, 2, 4, 4]), image.shape)  # pixel indices, inclusive
    mask = np.zeros_like(image, bool)
    mask[2:5, 1:5] = True
    rows, cols = np.nonzero(view.to_view(mask))
    assert box.tolist() == [cols.min(), rows.min(), cols.max(), rows.max()]


def test_oblong_pixels_are_stretched_to_about_square():
    """A coronal slice of a scan with 3 mm slices and 0.75 mm pixels is shown 4x taller, as
    viewers show it; masks come back onto the raw grid where they cover half a block."""
    affine = np.diag([0.75, 0.75, 3.0, 1.0])
    view = slice_view(affine, 1)
    assert view == SliceView(True, True, True, stretch=(4, 1))  # rows run inferior
    assert view.view_shape((8, 5)) == (20, 8)
    assert slice_view(affine, 2) == radiological_view(affine, 2)  # axial: square already
    assert stretch_for(np.diag([1.0, 1.0, 1.4, 1.0]), 0, SliceView()) == (1, 1)
    assert stretch_for(np.diag([1.0, 1.0, 2.6, 1.0]), 0, SliceView()) == (1, 3)
    assert stretch_for(np.diag([1.0, 1.0, 2.6, 1.0]), 0, SliceView(True)) == (3, 1)
    assert stretch_for(None, 1, SliceView()) == (1, 1)
    assert stretch_for(np.diag([1.0, 1.0, 1e6, 1.0]), 0, SliceView()) == (1, 32)  # bounded
    assert stretch_for(np.diag([1.0, 0.0, 3.0, 1.0]), 2, SliceView()) == (1, 1)  # no spacing
    grey = np.array([[0, 100], [40, 40]], np.int16)
    shown = SliceView(stretch=(4, 1)).to_view(grey)
    assert shown.dtype == np.int16 and shown[:, 1].tolist() == [100, 100, 92, 78, 62, 48, 40, 40]
    mask = np.zeros((8, 2), bool)
    mask[:3, 0] = True  # three of the first block's four rows
    mask[4, 1] = True  # one of the second's
    assert SliceView(stretch=(4, 1)).from_view(mask).tolist() == [[True, False], [False, False]]


def test_ras_axial_matches_the_radiological_display():
    affine = np.diag([3.0, 3.0, 3.0, 1.0])  # RAS, like the TotalSegmentator example CT
    ct = np.random.default_rng(0).integers(0, 100, (12, 9, 4))
    view = radiological_view(affine, 2)
    assert np.array_equal(view.to_view(ct[:, :, 1]), ct[:, :, 1].T[::-1, ::-1])


def test_lps_and_coronal_and_sagittal():
    lps = np.diag([-1.0, -1.0, 1.0, 1.0])  # axes toward L, P, S (DICOM order)
    assert radiological_view(lps, 2) == SliceView(True, False, False)
    ras = np.eye(4)
    # coronal: remaining axes R (rows) and S (cols) -> rows toward inferior, cols toward left
    assert radiological_view(ras, 1) == SliceView(True, True, True)
    # sagittal: remaining A (rows), S (cols) -> rows toward inferior, cols toward posterior
    assert radiological_view(ras, 0) == SliceView(True, True, True)
    assert radiological_view(None, 2) == SliceView()


def test_oblique_uses_the_dominant_axis():
    theta = np.deg2rad(20)
    rot = np.array(
        [[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]]
    )
    affine = np.eye(4)
    affine[:3, :3] = rot * 2.0
    assert radiological_view(affine, 2) == radiological_view(np.diag([2, 2, 2, 1.0]), 2)
