"""Object sizes in physical units: volumes in mL and longest in-plane diameters in mm."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from sammed2d.errors import SamMed2DError
from sammed2d.measure import (
    agreement_text,
    agreements,
    longest_diameter,
    object_sizes,
    slice_axis_across,
    voxel_ml,
    write_agreements_csv,
    write_sizes_csv,
)

from .test_io import oblique_affine


def spaced(sx, sy, sz):
    affine = np.diag([sx, sy, sz, 1.0])
    affine[:3, 3] = [-40.0, 12.0, 300.0]
    return affine


def brute_force_diameter(section, steps):
    """Every pair of every pixel's four corners, in mm."""
    rows, cols = np.nonzero(section)
    corners = np.array(
        [
            (r + dr, c + dc)
            for r, c in zip(rows, cols)
            for dr, dc in itertools.product((-0.5, 0.5), repeat=2)
        ]
    )
    points = corners @ np.asarray(steps).T
    return max(np.linalg.norm(points[i] - points[j]) for i in range(len(points)) for j in range(i))


def test_a_box_of_voxels_measures_its_volume_and_its_diagonal():
    labels = np.zeros((20, 30, 12), np.uint8)
    labels[2:8, 5:25, 3:7] = 4  # 6 x 20 pixels on 4 slices
    (size,) = object_sizes(labels, spaced(0.5, 0.8, 2.5))
    assert size.id == 4 and size.voxels == 6 * 20 * 4
    assert size.volume_ml == pytest.approx(6 * 20 * 4 * 0.5 * 0.8 * 2.5 / 1000)
    assert size.slices == (3, 6)
    assert size.diameter_mm == pytest.approx(np.hypot(6 * 0.5, 20 * 0.8))
    assert 3 <= size.diameter_slice <= 6


def test_the_diameter_is_the_longest_section_and_survives_a_rotation():
    """A disc whose radius grows with the slice: the largest section is measured, and the
    same voxels under an oblique affine (rotated in plane) measure the same."""
    yy, xx = np.mgrid[:64, :64]
    labels = np.zeros((64, 64, 5), np.int16)
    for k, radius in enumerate((5, 9, 20, 12, 3)):
        labels[..., k][(yy - 32) ** 2 + (xx - 31) ** 2 <= radius**2] = 2
    straight = object_sizes(labels, spaced(0.8, 0.9, 2.5))[0]
    turned = object_sizes(labels, oblique_affine())[0]  # 0.8 x 0.9 x 2.5 mm, turned 15°
    assert straight.diameter_slice == turned.diameter_slice == 2
    assert turned.diameter_mm == pytest.approx(straight.diameter_mm)
    assert turned.volume_ml == pytest.approx(straight.volume_ml)
    # 41 pixels across, at 0.8 to 0.9 mm a pixel
    assert 41 * 0.8 < straight.diameter_mm < 42 * 0.9 * np.sqrt(2)


def test_the_hull_finds_the_farthest_corners_of_any_shape():
    rng = np.random.default_rng(3)
    steps = np.array([[0.0, 0.7], [1.1, 0.0], [0.0, 0.0]])  # rows along y, columns along x
    for _ in range(6):
        section = rng.random((14, 11)) < 0.3
        section[rng.integers(14), rng.integers(11)] = True
        assert longest_diameter(section, steps) == pytest.approx(
            brute_force_diameter(section, steps)
        )
    one = np.zeros((5, 5), bool)
    one[2, 2] = True
    assert longest_diameter(one, steps) == pytest.approx(np.hypot(0.7, 1.1))
    line = np.zeros((9, 30), bool)
    line[4, 3:27] = True  # a one-pixel line: every corner on two lines
    assert longest_diameter(line, steps) == pytest.approx(np.hypot(24 * 0.7, 1.1))


def test_the_axial_slices_are_found_from_the_affine():
    """Slices across the patient's feet-head axis are measured by default, whichever array
    axis steps along it; --axis chooses another."""
    affine = np.zeros((4, 4))
    affine[0, 1], affine[1, 2], affine[2, 0], affine[3, 3] = 0.7, 0.7, 3.0, 1.0
    assert slice_axis_across(affine) == 0
    labels = np.zeros((6, 20, 20), np.uint8)
    labels[1:3, 2:12, 4:6] = 1  # 10 x 2 pixels on 2 axial slices
    size = object_sizes(labels, affine)[0]
    assert size.slices == (1, 2)
    assert size.diameter_mm == pytest.approx(np.hypot(10 * 0.7, 2 * 0.7))
    across = object_sizes(labels, affine, axis=1)[0]  # coronal: 2 slices of 3 mm and 0.7 mm
    assert across.slices == (2, 11)
    assert across.diameter_mm == pytest.approx(np.hypot(2 * 3.0, 2 * 0.7))
    assert voxel_ml(affine) == pytest.approx(0.7 * 0.7 * 3.0 / 1000)


def test_ids_floats_and_empty_objects():
    labels = np.zeros((10, 10, 3), np.float32)  # whole numbers held as floats, as a NIfTI may
    labels[1:3, 1:3, 1] = 1
    labels[5:9, 5:9, 0:3] = 7
    sizes = object_sizes(labels, spaced(1, 1, 1))
    assert [s.id for s in sizes] == [1, 7] and [s.voxels for s in sizes] == [4, 48]
    assert [s.id for s in object_sizes(labels, spaced(1, 1, 1), ids=[7, 9])] == [7]
    assert object_sizes(np.zeros((4, 4, 4), np.uint8), spaced(1, 1, 1)) == []


def test_bad_input_is_one_line():
    with pytest.raises(SamMed2DError, match="3D label volume"):
        object_sizes(np.zeros((4, 4), np.uint8), spaced(1, 1, 1))
    bad = spaced(1, 1, 1)
    bad[0, 0] = np.nan
    with pytest.raises(SamMed2DError, match="affine"):
        object_sizes(np.zeros((4, 4, 4), np.uint8), bad)


def test_the_sizes_csv_is_written_whole(tmp_path):
    labels = np.zeros((10, 10, 3), np.uint8)
    labels[1:5, 1:3, 1] = 2
    sizes = object_sizes(labels, spaced(2, 2, 2))
    path = write_sizes_csv(tmp_path / "sizes.csv", sizes, {2: "nodule, left"})
    lines = path.read_text().splitlines()
    assert lines[0] == (
        "id,name,voxels,volume_ml,first_slice,last_slice,diameter_mm,diameter_slice"
    )
    assert lines[1] == f'2,"nodule, left",8,0.064,1,1,{np.hypot(8, 4):.1f},1'
    assert [p.name for p in tmp_path.iterdir()] == ["sizes.csv"]  # no temporary file left


def test_the_longest_section_is_found_however_the_sections_are_ordered():
    """Sections are measured largest box first and the rest skipped where their box could
    not hold a longer diameter: the result is the exhaustive one's."""
    rng = np.random.default_rng(5)
    affine = oblique_affine()
    steps = affine[:3, :2]
    for _ in range(4):
        labels = (rng.random((12, 9, 7)) < 0.25).astype(np.uint8)
        size = object_sizes(labels, affine, axis=2)[0]
        each = [
            brute_force_diameter(labels[..., k] > 0, steps) if labels[..., k].any() else 0.0
            for k in range(7)
        ]
        assert size.diameter_mm == pytest.approx(max(each))
        assert each[size.diameter_slice] == pytest.approx(max(each))


def test_the_same_labels_held_transposed_measure_the_same():
    """napari holds a volume's axes reversed: sizes, and the slice named for the longest
    diameter where several sections are as long, do not depend on it."""
    labels = np.zeros((30, 26, 9), np.uint8)
    labels[5:20, 4:18, 2:8] = 1  # six equal sections
    labels[3:9, 3:9, 1:7] = 2
    affine = oblique_affine()
    turned = np.transpose(labels, (2, 1, 0))
    flipped = affine[:, [2, 1, 0, 3]]
    for a, b in zip(object_sizes(labels, affine), object_sizes(turned, flipped)):
        assert (a.voxels, a.slices, a.diameter_slice) == (b.voxels, b.slices, b.diameter_slice)
        assert a.diameter_mm == pytest.approx(b.diameter_mm)
    assert object_sizes(labels, affine)[0].diameter_slice == 2


def test_the_example_cts_structures_held_as_napari_holds_them_name_the_same_slices():
    """On the example CT's fourteen structures, measured as the file holds them and as
    napari's layer does (axes reversed), the liver's longest sections (equally long to the
    last bits) were named slice 16 and slice 17: the first of equally long ones is named."""
    from sammed2d.io import read_volume

    from ..conftest import ABDOMEN_CT, need

    labels = read_volume(need(ABDOMEN_CT / "structures.nii.gz"))
    held = object_sizes(labels.array, labels.affine)
    layer = object_sizes(np.transpose(labels.array, (2, 1, 0)), labels.affine[:, [2, 1, 0, 3]])
    assert [s.diameter_slice for s in held] == [s.diameter_slice for s in layer]
    assert held[0].diameter_slice == 16


def brute_force_surface_distances(a, b, spacing):
    """Every surface voxel of each against every one of the other, in mm."""
    from scipy import ndimage
    from scipy.spatial.distance import cdist

    def surface(m):
        return np.argwhere(m & ~ndimage.binary_erosion(m, border_value=0)) * spacing

    sa, sb = surface(a), surface(b)
    gaps = cdist(sa, sb)
    return gaps.min(axis=1), gaps.min(axis=0)


def test_agreement_of_two_segmentations():
    """Dice, both volumes, HD95 (the larger directed 95th percentile) and the mean of both
    directions' surface distances, against every pair of surface voxels on random shapes
    at oblong voxels (the same figures as MONAI's compute_hausdorff_distance and symmetric
    compute_average_surface_distance gave on these definitions)."""
    rng = np.random.default_rng(2)
    spacing = np.array([0.7, 0.9, 2.5])
    affine = spaced(*spacing)
    for _ in range(3):
        first = (rng.random((16, 14, 8)) < 0.3).astype(np.uint8) * 3
        second = (rng.random((16, 14, 8)) < 0.3).astype(np.uint8) * 3
        (item,) = agreements(first, second, affine)
        a, b = first == 3, second == 3
        there, back = brute_force_surface_distances(a, b, spacing)
        assert item.id == 3
        assert item.dice == pytest.approx(2 * (a & b).sum() / (a.sum() + b.sum()))
        assert item.volume_ml == pytest.approx((a.sum() * 1.575e-3, b.sum() * 1.575e-3))
        assert item.hd95_mm == pytest.approx(max(np.percentile(there, 95), np.percentile(back, 95)))
        assert item.mean_surface_mm == pytest.approx(np.concatenate([there, back]).mean())


def test_agreement_of_the_same_and_of_an_object_in_one_only():
    labels = np.zeros((20, 20, 6), np.uint8)
    labels[3:12, 4:15, 1:5] = 1
    other = labels.copy()
    other[15:18, 15:18, 2] = 4  # only in the second
    same, alone = agreements(labels, other, spaced(1, 1, 3))
    assert (same.dice, same.hd95_mm, same.mean_surface_mm) == (1.0, 0.0, 0.0)
    assert alone.id == 4 and alone.dice == 0.0 and alone.hd95_mm is None
    assert agreement_text(same, "liver") == (
        f"liver: Dice 1.000, {9 * 11 * 4 * 3 / 1000:.1f} / {9 * 11 * 4 * 3 / 1000:.1f} mL "
        "(+0.0 %), HD95 0.0 mm, mean surface distance 0.0 mm"
    )
    assert agreement_text(alone, "4").endswith("0.0 / 0.0 mL, only in the second")
    shifted = np.zeros_like(labels)
    shifted[5:14, 4:15, 1:5] = 1  # two voxels along the first axis, 2 mm
    (moved,) = agreements(labels, shifted, spaced(1, 1, 3))
    assert moved.hd95_mm == pytest.approx(2.0)
    with pytest.raises(SamMed2DError, match="one grid"):
        agreements(labels, labels[:-1], spaced(1, 1, 1))


def test_the_agreement_csv(tmp_path):
    labels = np.zeros((10, 10, 3), np.uint8)
    labels[1:5, 1:5, 1] = 2
    items = agreements(labels, np.zeros_like(labels), spaced(1, 1, 1))
    lines = write_agreements_csv(tmp_path / "a.csv", items, {2: "lesion"}).read_text()
    assert lines.splitlines() == [
        "id,name,dice,volume_ml_first,volume_ml_second,hd95_mm,mean_surface_mm",
        "2,lesion,0.0000,0.016,0.000,,",
    ]
