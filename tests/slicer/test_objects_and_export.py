"""Object segments' names, colours and terminology, and the module's DICOM SEG export."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

MODULE_DIR = Path(__file__).resolve().parents[2] / "slicer_module" / "SAMMed2D"
sys.path.insert(0, str(MODULE_DIR))

from sammed2d.errors import VolumeIOError  # noqa: E402
from sammed2d.segments import PALETTE, Segment  # noqa: E402
from SAMMed2DLib import object_segment, write_dicom_seg  # noqa: E402

from ..conftest import SHARED, need  # noqa: E402


def test_an_object_named_after_anatomy_gets_its_colour_and_code():
    name, color, terminology = object_segment(1, "Liver")
    assert name == "Liver"
    assert color == pytest.approx((221 / 255, 130 / 255, 101 / 255))
    assert (
        "SCT^10200004^Liver" in terminology and "SCT^123037004^Anatomical Structure" in terminology
    )


def test_an_unnamed_object_gets_a_palette_colour_and_tissue():
    name, color, terminology = object_segment(2)
    assert name == "SAM object 2"
    assert color == pytest.approx(tuple(c / 255 for c in PALETTE[1]))
    assert "SCT^85756007^Tissue" in terminology
    # Different objects, different colours.
    assert object_segment(3)[1] != color


def test_dicom_seg_export_places_slicer_labels_on_the_series_grid(tmp_path):
    highdicom = pytest.importorskip("highdicom")
    from sammed2d.dicom_seg import read_dicom_seg
    from sammed2d.io import dicom_series_files, onto_grid, read_volume

    series = need(SHARED / "data" / "ct_dicom")
    reference = read_volume(series)
    labels = np.zeros(reference.array.shape, np.uint16)
    labels[200:260, 220:300, 5:9] = 1
    labels[300:340, 250:280, 12:14] = 2
    # Slicer may index the same grid with flipped axes: emulate one with k and j reversed.
    flip = np.eye(4)
    n_j, n_k = labels.shape[1], labels.shape[2]
    flip[1, 1], flip[1, 3] = -1, n_j - 1
    flip[2, 2], flip[2, 3] = -1, n_k - 1
    slicer_labels = labels[:, ::-1, ::-1]
    slicer_ijk_to_ras = reference.affine @ flip
    segments = [Segment(1, "liver", (221, 130, 101)), Segment(2, "lesion", (255, 0, 0))]
    files = dicom_series_files(series)
    written = write_dicom_seg(tmp_path / "seg.dcm", slicer_labels, slicer_ijk_to_ras, segments,
                              files[::-1])  # fmt: skip
    back, affine, read_segments = read_dicom_seg(written)
    placed = onto_grid(back, affine, reference, "SEG")
    assert np.array_equal(placed, labels)
    assert [s.name for s in read_segments] == ["liver", "lesion"]
    seg = highdicom.seg.segread(str(written))
    assert seg.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeValue == "10200004"


def test_dicom_seg_export_needs_the_source_files(tmp_path):
    segments = [Segment(1, "x", (1, 2, 3))]
    with pytest.raises(VolumeIOError, match="not loaded from DICOM"):
        write_dicom_seg(tmp_path / "s.dcm", np.ones((2, 2, 2)), np.eye(4), segments, [])
    with pytest.raises(VolumeIOError, match="missing"):
        write_dicom_seg(tmp_path / "s.dcm", np.ones((2, 2, 2)), np.eye(4), segments,
                        [tmp_path / "gone.dcm"])  # fmt: skip


def test_dicom_seg_export_of_a_volume_slicer_loaded_from_one_multiframe_file(tmp_path):
    """An enhanced multi-frame volume has one instance UID, so Slicer's database gives one
    file: the SEG references its frames."""
    pytest.importorskip("highdicom")
    from sammed2d.dicom_seg import read_dicom_seg
    from sammed2d.io import onto_grid, read_volume
    from tests.core.test_labelfiles import enhanced_ct

    array = np.arange(9 * 7 * 6, dtype=np.int16).reshape(9, 7, 6)
    source, _ = enhanced_ct(tmp_path, array, "converted")
    reference = read_volume(source)
    labels = np.zeros(reference.array.shape, np.uint16)
    labels[1:4, 2:6, 1:3] = 1
    flip = np.diag([1.0, 1.0, -1.0, 1.0])  # Slicer's k running the other way
    flip[2, 3] = labels.shape[2] - 1
    segments = [Segment(1, "lesion", (255, 0, 0))]
    written = write_dicom_seg(tmp_path / "seg.dcm", labels[:, :, ::-1], reference.affine @ flip,
                              segments, [source])  # fmt: skip
    back, affine, _ = read_dicom_seg(written)
    assert np.array_equal(onto_grid(back, affine, reference, "SEG"), labels)
