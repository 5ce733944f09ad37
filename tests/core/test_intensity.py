"""Intensity presets on data with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from sammed2d.errors import ImageError
from sammed2d.intensity import (
    auto_object_window,
    intensity_range,
    prepare_rgb,
    prompt_window,
    resolve_preset,
    to_uint8,
)
from sammed2d.objects import ObjectPrompts, SlicePrompt
from sammed2d.propagate import with_object_windows


@pytest.mark.parametrize(
    ("preset", "lo", "hi"),
    [("abdomen", -160, 240), ("lung", -1350, 150), ("bone", -500, 1300), ("brain", 0, 80)],
)
def test_ct_windows(preset, lo, hi):
    ct = np.array([[lo - 100, lo, (lo + hi) / 2, hi, hi + 100]] * 2, dtype=np.float32)
    assert intensity_range(ct, preset) == (lo, hi)
    out = prepare_rgb(ct, preset)[0, :, 0]
    assert out.tolist() == [0, 0, 128, 255, 255]


def test_percentile_ignores_outliers():
    data = np.concatenate([np.linspace(0, 100, 10_000), [1e6, -1e6]]).astype(np.float32)
    lo, hi = intensity_range(data, "percentile")
    assert -1 < lo < 1.5 and 98.5 < hi < 101


def test_percentile_window_is_the_same_in_every_axis_order():
    """A volume large enough to be sampled gives one window whether it is held as the
    core's (i, j, k) Fortran array, napari's (k, j, i) view of it or a C copy of that
    view: the front ends show the model the same grey levels. NaNs are left out."""
    rng = np.random.default_rng(5)
    ijk = np.asfortranarray(rng.gamma(2.0, 300.0, (200, 180, 120)).astype(np.float32))
    ijk[::7, 3, :] = np.nan
    kji = np.transpose(ijk, (2, 1, 0))
    window = intensity_range(ijk, "percentile")
    assert intensity_range(kji, "percentile") == window
    assert intensity_range(np.ascontiguousarray(kji), "percentile") == window
    finite = ijk[np.isfinite(ijk)]
    assert abs(window[0] - np.percentile(finite, 0.5)) < 5
    assert abs(window[1] - np.percentile(finite, 99.5)) < 20
    lone = np.full((200, 200, 120), np.nan, np.float32)
    lone[17, 3, 5] = 7.0  # the only finite voxel, off the sample's stride
    assert intensity_range(lone, "percentile") == (7.0, 7.0)


def test_minmax_and_none():
    data = np.array([[10, 20, 30]] * 2, np.uint16)
    assert prepare_rgb(data, "minmax")[0, :, 0].tolist() == [0, 128, 255]
    assert prepare_rgb(data, "none")[0, :, 0].tolist() == [10, 20, 30]


def test_nan_and_inf():
    data = np.array([np.nan, -np.inf, np.inf, 0.0, 1.0], np.float32)
    assert intensity_range(data, "minmax") == (0.0, 1.0)
    assert to_uint8(data, 0.0, 1.0).tolist() == [0, 0, 255, 0, 255]
    with pytest.raises(ImageError, match="no finite values"):
        intensity_range(np.full(4, np.nan, np.float32), "percentile")


def test_auto_preset_choices():
    assert resolve_preset(np.zeros(4, np.uint8)) == "none"
    assert resolve_preset(np.array([-1024, 40], np.int16)) == "abdomen"
    assert resolve_preset(np.array([0.0, 812.5], np.float32)) == "percentile"
    with pytest.raises(ImageError, match="intensity preset 'soft'"):
        resolve_preset(np.zeros(4), "soft")


@pytest.mark.parametrize("order", ["C", "F"])
def test_auto_reads_air_wherever_it_lies(order):
    """`auto` samples the volume before reading all of it: one air voxel that the sample
    misses still makes a CT, in either memory order; unsigned data is never HU."""
    volume = np.full((64, 64, 40), 30, np.int16, order=order)
    assert resolve_preset(volume) == "percentile"
    volume[37, 5, 21] = -1000
    assert resolve_preset(volume) == "abdomen"
    assert resolve_preset(volume[:, :, ::3]) == "abdomen"  # a strided view
    assert resolve_preset(np.full((8, 8, 8), 60000, np.uint16)) == "percentile"


def test_a_ct_stored_with_a_rescale_intercept_is_still_a_ct(tmp_path):
    """Converters often store CT as unsigned integers with a rescale intercept of -1024,
    which nibabel reads as floats: `auto` gave those the MR's percentile window."""
    import nibabel as nib

    from sammed2d.io import read_volume

    hu = np.full((16, 16, 4), 40, np.int16)
    hu[:3] = -1000  # air
    image = nib.Nifti1Image((hu + 1024).astype(np.uint16), np.eye(4))
    image.header.set_slope_inter(1, -1024)
    nib.save(image, tmp_path / "ct.nii.gz")
    volume = read_volume(tmp_path / "ct.nii.gz").array
    assert volume.dtype == np.float32 and resolve_preset(volume) == "abdomen"  # not float64
    assert np.array_equal(volume, hu)
    with_nan = volume.astype(np.float32)
    with_nan[0, 0, 0] = np.nan
    assert resolve_preset(with_nan) == "abdomen"
    # MR magnitudes, floating point or not, never reach -500.
    assert resolve_preset(np.abs(volume) / 7.0) == "percentile"
    assert resolve_preset(np.full((4, 4), np.nan, np.float32)) == "percentile"


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_prompt_window_reads_the_prompted_slice(axis):
    """The box's HU come from slice `index` along `axis`, in either memory order: a lung
    box asks for the lung window, the same box on a soft-tissue slice for none."""
    volume = np.full((20, 24, 28), 40, np.int16)
    where = [slice(None)] * 3
    where[axis] = 7
    volume[tuple(where)] = -850  # lung on slice 7 only
    volume.flat[0] = -1000  # air somewhere: a CT
    box = SlicePrompt(box=np.array([2, 2, 12, 12], np.float32))
    for v in (volume, np.asfortranarray(volume)):
        assert prompt_window(v, axis, 7, box) == "lung"
        assert prompt_window(v, axis, 8, box) is None


def cord_in_bone(spacing=3.0):
    """(30, 30, 3) CT, `spacing` mm pixels and slices: on slice 1 a cord (30 HU, radius 2 px)
    in its canal (10 HU, to 3.5 px) in a ring of bone (700 HU, to 6 px) in fat; a lung base
    (-850 HU) round a dome of liver (60 HU) in the top left corner."""
    yy, xx = np.mgrid[:30, :30]
    r = np.hypot(yy - 20, xx - 20)
    ct = np.full((30, 30, 3), -100, np.int16)
    ct[..., 1][r <= 6] = 700
    ct[..., 1][r <= 3.5] = 10
    ct[..., 1][r <= 2] = 30
    ct[:12, :12, 1] = -850
    ct[:12, :12, 1][np.hypot(yy - 11, xx - 6)[:12, :12] <= 4] = 60
    ct[0, 0, 0] = -1000  # air somewhere: a CT
    return ct, np.diag([spacing, spacing, spacing, 1.0])


@pytest.mark.parametrize("spacing", [3.0, 0.75])
def test_a_box_drawn_loose_round_a_structure_in_bone_keeps_the_soft_tissue_window(spacing):
    ct, affine = cord_in_bone()
    if spacing != 3.0:  # the same scan with 4x4 pixels for each: a clinical slice size
        ct = np.repeat(np.repeat(ct, 4, axis=0), 4, axis=1)
        affine = np.diag([spacing, spacing, 3.0, 1.0])
    px = 3.0 / spacing  # pixels per 3 mm

    def box(lo, hi):  # a square box from pixel `lo` to `hi` of the 3 mm grid
        return SlicePrompt(box=np.array([lo, lo, hi, hi], np.float32) * px + (px - 1) / 2)

    tight, loose = box(18, 22), box(17, 23)  # the cord's own box, and one 3 mm wider
    assert auto_object_window(ct, 2, 1, tight, affine) == "abdomen"
    assert auto_object_window(ct, 2, 1, loose, affine) == "abdomen"
    # Read from the whole box, the loose box's rim of bone asks for the bone window
    # (without an affine there is no mm to take off).
    assert auto_object_window(ct, 2, 1, loose) == "bone"
    # The bone round the cord, boxed, still asks for bone, and the lung base round the
    # liver's dome for the lung window, though its middle is liver.
    assert auto_object_window(ct, 2, 1, box(14, 26), affine) == "bone"
    lung = SlicePrompt(box=(np.array([0, 0, 11, 11], np.float32) * px))
    assert auto_object_window(ct, 2, 1, lung, affine) == "lung"
    # Propagation gives its objects windows the same way, from the volume's affine.
    objects = [ObjectPrompts(1, {1: loose}), ObjectPrompts(2, {1: lung})]
    assert [o.window for o in with_object_windows(ct, 2, objects, "abdomen", affine)] == [
        None,  # the volume's own window
        "lung",
    ]
    assert with_object_windows(ct, 2, objects, "abdomen")[0].window == "bone"


def test_rgb_passes_through_and_volume_range_is_shared():
    rgb = np.random.default_rng(0).integers(0, 255, (5, 6, 3), dtype=np.uint8)
    assert np.array_equal(prepare_rgb(rgb), rgb)
    volume = np.stack([np.full((4, 4), 100.0), np.full((4, 4), 200.0)]).astype(np.float32)
    rng = intensity_range(volume, "minmax")
    slices = [prepare_rgb(s, value_range=rng)[0, 0, 0] for s in volume]
    assert slices == [0, 255]  # one range for the volume, not one per slice


def test_window_names_read_back_and_bad_ones_are_refused():
    from sammed2d.intensity import (
        BOX_PERCENTILES,
        BOX_WIDEN,
        box_window,
        parse_window,
        window_name,
    )

    assert window_name(0.0, 100.0) == "W100/L50"
    assert intensity_range(np.zeros((2, 2), np.float32), "W100/L50") == (0.0, 100.0)
    assert parse_window(window_name(-3.5, 1234.5)) == pytest.approx((-3.5, 1234.5), abs=1)
    for bad in ("W0/L5", "W-1/L3", "Wabc/L1", "W1/L", "w10/l5", "Wnan/L1", "Winf/L0"):
        assert parse_window(bad) is None
        with pytest.raises(ImageError, match="W<width>/L<level>"):
            intensity_range(np.zeros((2, 2), np.float32), bad)
    values = np.arange(101, dtype=np.float32)
    lo, hi = BOX_PERCENTILES  # the n-th percentile of 0..100 is n
    grown = (lo - BOX_WIDEN * (hi - lo), hi + BOX_WIDEN * (hi - lo))
    assert parse_window(box_window(values)) == pytest.approx(grown, abs=0.1)
    assert box_window(np.full(9, 7.0)) is None  # flat: nothing to spread
    assert box_window(np.array([np.nan, np.inf])) is None
