"""Slices are shown to the model radiologically, and everything maps back exactly."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from sammed2d.orientation import SliceView, radiological_view


@pytest.mark.parametrize("flags", list(itertools.product([False, True], repeat=3)))
def test_view_round_trip_and_points_follow_pixels(flags):
    view = SliceView(*flags)
    image = np.arange(5 * 7).reshape(5, 7)
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
