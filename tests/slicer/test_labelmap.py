"""Slabs of changed slices as VTK images, checked with real VTK objects (the vtk wheel)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

MODULE_DIR = Path(__file__).resolve().parents[2] / "slicer_module" / "SAMMed2D"
sys.path.insert(0, str(MODULE_DIR))

from SAMMed2DLib import changed_range, ijk_to_segmentation, slab_image  # noqa: E402
from SAMMed2DLib.labelmap import slab_extent  # noqa: E402

vtk = pytest.importorskip("vtk")


def voxel(image, i, j, k):
    return image.GetScalarComponentAsDouble(i, j, k, 0)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_a_slab_holds_its_slices_at_their_own_ijk(axis):
    rng = np.random.default_rng(axis)
    shape = (7, 5, 6)
    mask = rng.random(shape) > 0.5
    lo, hi = 2, 4
    slab = np.take(mask, np.arange(lo, hi + 1), axis=axis)
    image = slab_image(slab, axis, lo, shape)
    extent = list(image.GetExtent())
    assert extent == slab_extent(shape, axis, lo, hi)
    assert extent[2 * axis : 2 * axis + 2] == [lo, hi]
    assert image.GetScalarType() == vtk.VTK_UNSIGNED_CHAR
    for ijk in np.ndindex(*shape):
        if lo <= ijk[axis] <= hi:
            assert voxel(image, *ijk) == float(mask[ijk]), ijk


def test_a_copy_into_an_image_keeps_extent_and_voxels():
    # The module copies the slab into Slicer's vtkOrientedImageData (a vtkImageData).
    mask = np.zeros((4, 4, 3), bool)
    mask[1, 2, 1] = True
    copy = vtk.vtkImageData()
    copy.ShallowCopy(slab_image(mask[:, :, 1:2], 2, 1, mask.shape))
    assert copy.GetExtent() == (0, 3, 0, 3, 1, 1)
    assert voxel(copy, 1, 2, 1) == 1 and voxel(copy, 2, 1, 1) == 0


def test_wrong_slabs_are_refused():
    with pytest.raises(ValueError, match="does not fit"):
        slab_image(np.zeros((4, 5, 1)), 2, 0, (4, 4, 3))
    with pytest.raises(ValueError, match="outside"):
        slab_image(np.zeros((4, 4, 2)), 2, 2, (4, 4, 3))


def test_changed_range_spans_the_first_to_the_last_changed_slice():
    before = np.zeros((3, 4, 8), bool)
    after = before.copy()
    assert changed_range(before, after, 2) is None
    after[0, 0, 2] = after[2, 3, 5] = True
    assert changed_range(before, after, 2) == (2, 5)
    assert changed_range(before, after, 0) == (0, 2)


def test_ijk_to_segmentation_goes_through_both_parent_transforms():
    ijk_to_ras = np.diag([0.8, 0.8, 2.5, 1.0])
    ijk_to_ras[:3, 3] = [-100, -120, 30]
    volume_to_world = np.eye(4)
    volume_to_world[:3, 3] = [10, 0, 0]
    segmentation_to_world = np.eye(4)
    segmentation_to_world[:3, 3] = [0, 5, 0]
    m = ijk_to_segmentation(ijk_to_ras, volume_to_world, segmentation_to_world)
    point = m @ np.array([1, 2, 3, 1.0])
    world = volume_to_world @ ijk_to_ras @ np.array([1, 2, 3, 1.0])
    assert np.allclose(segmentation_to_world @ point, world)
    assert np.allclose(ijk_to_segmentation(ijk_to_ras), ijk_to_ras)
