"""Label files with names and colours: DICOM SEG, Slicer .seg.nrrd, NIfTI + sidecar."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest

from sammed2d.cli import main
from sammed2d.errors import VolumeIOError
from sammed2d.io import Volume, onto_grid, read_volume, write_volume
from sammed2d.labelfiles import read_labels, write_labels
from sammed2d.segments import Segment, default_segment, sidecar_path

from ..conftest import SHARED
from .test_io import oblique_affine, write_dicom_series

CT_DICOM = SHARED / "data" / "ct_dicom"


def two_objects(shape):
    labels = np.zeros(shape, np.uint8)
    labels[2:5, 1:4, 1:3] = 1
    labels[5:8, 4:6, 3] = 4  # ids need not be contiguous
    return labels


def test_seg_nrrd_round_trips_through_slicerio(tmp_path):
    slicerio = pytest.importorskip("slicerio")
    ct = Volume(np.zeros((9, 7, 5), np.int16), oblique_affine())
    labels = two_objects(ct.array.shape)
    segments = [default_segment(1, "liver"), Segment(4, "lesion A", (10, 200, 30))]
    out = write_labels(tmp_path / "x.seg.nrrd", labels, ct, segments)

    seg = slicerio.read_segmentation(str(out))
    by_name = {s["name"]: s for s in seg["segments"]}
    assert set(by_name) == {"liver", "lesion A"}
    assert by_name["lesion A"]["labelValue"] == 4
    assert np.allclose(by_name["lesion A"]["color"], np.array([10, 200, 30]) / 255, atol=1e-5)
    assert by_name["liver"]["extent"] == [2, 4, 1, 3, 1, 2]
    assert by_name["liver"]["terminology"]["type"] == ["SCT", "10200004", "Liver"]
    assert by_name["lesion A"]["terminology"]["type"][1] == "85756007"  # Tissue
    assert np.array_equal(seg["voxels"], labels)
    # slicerio's ijkToLPS is ours with x and y negated (RAS -> LPS).
    assert np.allclose(np.diag([-1, -1, 1, 1]) @ ct.affine, seg["ijkToLPS"], atol=1e-5)

    back, segs = read_labels(out, reference=ct)
    assert np.array_equal(back.array, labels)
    assert [(s.id, s.name, s.color) for s in segs] == [
        (1, "liver", (221, 130, 101)),
        (4, "lesion A", (10, 200, 30)),
    ]


def test_seg_nrrd_keeps_names_beyond_ascii_and_volumes_written_in_slabs(tmp_path):
    """A name such as "Leber rechts, Segment Ä" reaches the file as UTF-8 (as Slicer writes
    it; the writer used to fail on it) and comes back whole; a volume larger than one
    written slab (4 MB) comes back voxel for voxel, in SimpleITK too."""
    sitk = pytest.importorskip("SimpleITK")
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, (256, 192, 60)).astype(np.uint16)  # 5.6 MB: two slabs
    labels[0, 0, -1] = 300  # an id beyond 255: unsigned short
    ct = Volume(labels, oblique_affine())
    segments = [
        Segment(1, "Leber rechts, Segment Ä", (200, 10, 10)),
        Segment(2, "foie", (1, 2, 3)),
        Segment(300, "lésion", (9, 9, 9)),
    ]
    out = write_labels(tmp_path / "x.seg.nrrd", labels, ct, segments)
    back, segs = read_labels(out, reference=ct)
    assert back.array.dtype == np.uint16 and np.array_equal(back.array, labels)
    assert [s.name for s in segs] == ["Leber rechts, Segment Ä", "foie", "lésion"]
    image = sitk.ReadImage(str(out))
    assert np.array_equal(np.transpose(sitk.GetArrayFromImage(image), (2, 1, 0)), labels)
    assert image.GetMetaData("Segment0_Name") == "Leber rechts, Segment Ä"
    with pytest.raises(VolumeIOError, match="line break"):
        write_labels(tmp_path / "y.seg.nrrd", labels, ct, [Segment(1, "two\nlines", (1, 1, 1))])
    assert not (tmp_path / "y.seg.nrrd").exists()


def test_seg_nrrd_written_by_slicerio_is_read(tmp_path):
    slicerio = pytest.importorskip("slicerio")
    labels = two_objects((9, 7, 5))
    affine = oblique_affine()
    segmentation = {
        "voxels": labels,
        "ijkToLPS": np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine,
        "encoding": "gzip",
        "segments": [
            {"id": "a", "labelValue": 1, "layer": 0, "name": "kidney", "color": [0.5, 0.25, 1.0]},
            {"id": "b", "labelValue": 4, "layer": 0, "name": "cyst", "color": [0, 0, 1.0]},
        ],
    }
    path = tmp_path / "slicer.seg.nrrd"
    slicerio.write_segmentation(str(path), segmentation)
    volume, segs = read_labels(path)
    assert np.array_equal(volume.array, labels)
    assert np.allclose(volume.affine, affine, atol=1e-6)
    assert [(s.id, s.name, s.color) for s in segs] == [
        (1, "kidney", (128, 64, 255)),
        (4, "cyst", (0, 0, 255)),
    ]


def test_nifti_sidecar_and_the_older_labels_json(tmp_path):
    ct = Volume(np.zeros((9, 7, 5), np.int16), oblique_affine())
    labels = two_objects(ct.array.shape)
    out = write_labels(tmp_path / "x.nii.gz", labels, ct, [Segment(1, "spleen", (1, 2, 3))])
    side = json.loads(sidecar_path(out).read_text(encoding="utf-8"))
    assert side["segments"]["1"] == {"name": "spleen", "color": [1, 2, 3]}
    assert side["segments"]["4"]["name"] == "Segment_4"  # unnamed ids still described
    back, segs = read_labels(out, reference=ct)
    assert np.array_equal(back.array, labels) and segs[0] == Segment(1, "spleen", (1, 2, 3))

    older = tmp_path / "old"
    older.mkdir()
    write_volume(older / "labels.nii.gz", labels, ct)
    (older / "labels.json").write_text(json.dumps({"1": "liver", "4": "aorta"}))
    _, segs = read_labels(older / "labels.nii.gz")
    assert [(s.name, s.color) for s in segs] == [
        ("liver", (221, 130, 101)),
        ("aorta", (224, 97, 76)),
    ]
    # No temporary files left behind by the atomic writes.
    assert not list(tmp_path.rglob(".tmp-*"))


@pytest.mark.parametrize("flip", [(), (0,), (2,), (0, 1, 2)])
@pytest.mark.parametrize("order", [(0, 1, 2), (2, 1, 0), (1, 2, 0)])
def test_onto_grid_undoes_crops_flips_and_axis_orders(order, flip):
    rng = np.random.default_rng(1)
    ref = Volume(np.zeros((10, 8, 6)), oblique_affine())
    truth = np.zeros(ref.array.shape, np.uint8)
    truth[3:7, 2:5, 1:4] = rng.integers(1, 4, (4, 3, 3))
    # The same labels cropped to their box and stored with another axis order/direction.
    crop = truth[3:7, 2:5, 1:4]
    affine = ref.affine.copy()
    affine[:3, 3] = ref.affine[:3, :3] @ [3, 2, 1] + ref.affine[:3, 3]
    for axis in flip:
        crop = np.flip(crop, axis)
        affine[:3, 3] += affine[:3, axis] * (crop.shape[axis] - 1)
        affine[:3, axis] *= -1
    stored = np.transpose(crop, order)
    affine = affine[:, [*order, 3]]
    assert np.array_equal(onto_grid(stored, affine, ref, "t"), truth)


def test_onto_grid_refuses_what_needs_resampling():
    ref = Volume(np.zeros((10, 8, 6)), oblique_affine())
    shifted = ref.affine.copy()
    shifted[:3, 3] += ref.affine[:3, 0] * 0.5
    with pytest.raises(VolumeIOError, match="not on the image's voxel grid"):
        onto_grid(np.ones((2, 2, 2)), shifted, ref, "labels x")
    outside = ref.affine.copy()
    outside[:3, 3] += ref.affine[:3, 0] * 9
    with pytest.raises(VolumeIOError, match="outside the image"):
        onto_grid(np.ones((3, 2, 2)), outside, ref, "labels x")


@pytest.mark.parametrize("order", [(0, 1, 2), (2, 0, 1)])
def test_onto_grid_places_slices_of_a_thinner_grid_that_lie_on_the_images(order):
    """Labels on a grid of half the image's slice spacing (as a SEG that records a wrong
    Spacing Between Slices reads) are placed where every labelled slice lies on one of the
    image's slices; one between two of them is refused, and a thicker grid still is."""
    ref = Volume(np.zeros((10, 8, 6)), oblique_affine())
    truth = np.zeros(ref.array.shape, np.uint8)
    truth[2:6, 1:5, 2] = 1
    truth[3:7, 2:6, 4] = 2
    half = np.zeros((10, 8, 7), np.uint8)  # slices 0.5 of the image's apart, from its 1
    half[..., 2] = truth[..., 2]
    half[..., 6] = truth[..., 4]
    affine = ref.affine.copy()
    affine[:3, 3] += ref.affine[:3, 2]  # starts at the image's slice 1
    affine[:3, 2] *= 0.5
    stored, moved = np.transpose(half, order), affine[:, [*order, 3]]
    assert np.array_equal(onto_grid(stored, moved, ref, "t"), truth)
    half[0, 0, 3] = 1  # a labelled voxel between the image's slices 2 and 3
    with pytest.raises(VolumeIOError, match="between the image's slices"):
        onto_grid(np.transpose(half, order), moved, ref, "t")


def test_a_seg_recording_a_wrong_spacing_is_placed_by_its_frames(tmp_path):
    """A SEG of two slices whose Spacing Between Slices says 1 mm for slices 2 mm apart (as
    another writer, or this one before it dropped the tag, copied it from its series):
    read onto its series, each frame lands on its slice."""
    pydicom = pytest.importorskip("pydicom")
    pytest.importorskip("highdicom")
    array = np.zeros((18, 20, 6), np.int16)
    series = write_dicom_series(tmp_path / "series", array)  # slices 2 mm apart
    volume = read_volume(series)
    labels = np.zeros(array.shape, np.uint8)
    labels[4:12, 5:14, 2] = 1
    labels[6:10, 7:12, 4] = 1
    seg = write_labels(tmp_path / "two.dcm", labels, volume, source_series=series)
    ds = pydicom.dcmread(seg)
    ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].SpacingBetweenSlices = 1
    ds.save_as(seg)
    alone, _ = read_labels(seg)
    assert alone.array.shape[2] == 5  # frames at 2 and 6 mm past the first, on a 1 mm grid
    back, _ = read_labels(seg, reference=volume)
    assert np.array_equal(back.array, labels)


def test_a_one_slice_segmentation_is_placed_whatever_spacing_it_records(tmp_path):
    """A DICOM SEG with one labelled slice has no second frame to give the spacing between
    slices; it records the source's Spacing Between Slices, which scanners and ITK's writer
    do not always keep true (1 on a series of 2 mm slices), and it was refused as off the
    grid. Along an axis one voxel deep only the position and direction count; two slices
    still must match."""
    pytest.importorskip("highdicom")
    import pydicom

    array = np.zeros((18, 20, 4), np.int16)
    series = write_dicom_series(tmp_path / "series", array)  # slices 2 mm apart
    for path in series.iterdir():  # a header that says otherwise, which the SEG copies
        ds = pydicom.dcmread(path)
        ds.SpacingBetweenSlices = 1
        ds.save_as(path)
    volume = read_volume(series)
    labels = np.zeros(array.shape, np.uint8)
    labels[4:12, 5:14, 2] = 1
    seg = write_labels(tmp_path / "one.dcm", labels, volume, source_series=series)
    back, _ = read_labels(seg, reference=volume)
    assert np.array_equal(back.array, labels)
    thick = volume.affine.copy()
    thick[:3, 2] *= 3.0
    with pytest.raises(VolumeIOError, match="not on the image's voxel grid"):
        onto_grid(np.ones((2, 2, 2)), thick, volume, "labels x")


# ----- DICOM SEG on the real CT series ------------------------------------------------------


def need_series():
    pytest.importorskip("highdicom")
    if not CT_DICOM.is_dir():
        pytest.skip("the DICOM CT series is not available (../shared is absent)")
    return CT_DICOM


def series_copy(folder, kind: str):
    """The shared series as given, with file names and instance numbers reversed, with
    both in-plane direction cosines negated, or resliced into a sagittal series."""
    import pydicom

    src = need_series()
    folder.mkdir()
    files = sorted(p for p in src.iterdir() if p.name.startswith("CT"))
    if kind == "as-is":
        return src
    if kind in ("reversed", "negated"):
        for n, path in enumerate(files):
            ds = pydicom.dcmread(path)
            if kind == "reversed":
                ds.InstanceNumber = len(files) - n
                name = f"z{len(files) - n:03d}.dcm"
            else:
                ds.ImageOrientationPatient = [-1, 0, 0, 0, -1, 0]
                name = path.name
            ds.save_as(folder / name, enforce_file_format=True)
        return folder
    return sagittal_series(src, folder, files)


def sagittal_series(src, folder, files, step=24):
    """Sagittal planes (every `step`-th column) of the axial series, with real CT headers:
    rows run from head to feet (-z), columns from front to back (+y), as scanners write."""
    import pydicom
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    volume = read_volume(src)  # voxel (i, j, k), affine -> RAS
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ volume.affine
    template = pydicom.dcmread(files[0])
    series_uid = generate_uid()
    ni, nj, nk = volume.array.shape
    dy, dz = np.linalg.norm(lps[:3, 1]), np.linalg.norm(lps[:3, 2])
    for n, i in enumerate(range(0, ni, step)):
        ds = template.copy()
        plane = volume.array[i, :, ::-1].T.astype(np.int16)  # rows: k descending; cols: j
        ds.file_meta = template.file_meta.copy()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        uid = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = uid
        ds.SOPClassUID, ds.SOPInstanceUID, ds.SeriesInstanceUID = CTImageStorage, uid, series_uid
        ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
        ds.ImagePositionPatient = [float(v) for v in (lps @ [i, 0, nk - 1, 1])[:3]]
        ds.PixelSpacing = [float(dz), float(dy)]  # row spacing, column spacing
        ds.Rows, ds.Columns = plane.shape
        ds.RescaleIntercept, ds.RescaleSlope = 0, 1
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.InstanceNumber = n + 1
        ds.PixelData = plane.tobytes()
        for keyword in ("SliceLocation",):
            if keyword in ds:
                delattr(ds, keyword)
        ds.save_as(folder / f"sag{n:03d}.dcm", enforce_file_format=True)
    return folder


def check_seg_against_source(seg_path, series, labels, names):
    """Read the SEG with pydicom and highdicom and compare it with the label volume, frame
    by frame through the referenced source instances."""
    import highdicom as hd
    import pydicom

    from sammed2d.io import dicom_series_files

    source = {}
    for k, path in enumerate(dicom_series_files(series)):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        uid = ds.get("SOPInstanceUID") or ds.file_meta.MediaStorageSOPInstanceUID
        source[uid] = (k, ds)
    seg = pydicom.dcmread(seg_path)
    assert seg.Modality == "SEG" and seg.SegmentationType == "BINARY"
    first = next(iter(source.values()))[1]
    assert seg.FrameOfReferenceUID == first.FrameOfReferenceUID
    assert [s.SegmentLabel for s in seg.SegmentSequence] == names
    frames = seg.pixel_array.reshape(-1, int(seg.Rows), int(seg.Columns))
    ids = sorted(int(i) for i in np.unique(labels) if i > 0)
    seen = set()
    shared = seg.SharedFunctionalGroupsSequence[0]
    for f, group in enumerate(seg.PerFrameFunctionalGroupsSequence):
        ref = group.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        k, src_ds = source[ref]
        # With one segment, highdicom puts its identification in the shared groups.
        ident = group if "SegmentIdentificationSequence" in group else shared
        number = ident.SegmentIdentificationSequence[0].ReferencedSegmentNumber
        position = group.PlanePositionSequence[0].ImagePositionPatient
        assert np.allclose([float(v) for v in position], src_ds.ImagePositionPatient, atol=1e-4)
        expected = labels[:, :, k].T == ids[number - 1]
        assert np.array_equal(frames[f].astype(bool), expected)
        seen.add((k, number))
    # Every labelled (slice, segment) has its frame; empty ones are left out.
    wanted = {
        (k, n + 1)
        for n, i in enumerate(ids)
        for k in range(labels.shape[2])
        if (labels[:, :, k] == i).any()
    }
    assert seen == wanted
    hd_seg = hd.seg.segread(str(seg_path))
    assert hd_seg.number_of_segments == len(ids)
    return seg


def validator_errors(path):
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy (Debian dicom3tools) is not installed")
    run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
    return [ln for ln in (run.stdout + run.stderr).splitlines() if ln.startswith("Error")]


@pytest.mark.parametrize("kind", ["as-is", "reversed", "negated", "sagittal"])
def test_dicom_seg_export_places_segments_on_every_series_layout(tmp_path, capsys, kind):
    series = series_copy(tmp_path / "series", kind)
    volume = read_volume(series)
    ni, nj, nk = volume.array.shape
    labels = np.zeros(volume.array.shape, np.uint8)
    # Off-centre in every axis, so any mirror or transposition shows.
    labels[ni // 8 : ni // 3, nj // 5 : nj // 2, nk // 4 : nk // 2 + 1] = 2
    labels[ni // 2 : ni // 2 + 4, nj // 2 : nj - 3, nk - 2] = 7
    write_volume(tmp_path / "labels.nii.gz", labels, volume)
    names = tmp_path / "names.json"
    names.write_text(json.dumps({"2": "liver", "7": {"name": "lesion", "color": "#00ff00"}}))
    out = tmp_path / "seg.dcm"
    code = main(
        [
            "export",
            str(tmp_path / "labels.nii.gz"),
            "--reference",
            str(series),
            "--names",
            str(names),
            "--out",
            str(out),
        ]
    )
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert "2 segment(s) 2 liver, 7 lesion" in printed.out
    seg = check_seg_against_source(out, series, labels, ["liver", "lesion"])
    liver = seg.SegmentSequence[0]
    assert liver.SegmentedPropertyTypeCodeSequence[0].CodeValue == "10200004"
    assert liver.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "123037004"
    # Read back onto the series' grid: the same voxels, the same names and colours.
    back, segs = read_labels(out, reference=volume)
    restored = np.zeros_like(labels)
    for s in segs:
        restored[back.array == s.id] = {"liver": 2, "lesion": 7}[s.name]
    assert np.array_equal(restored, labels)
    assert [s.color for s in segs] == [(221, 130, 101), (0, 255, 0)]
    assert validator_errors(out) == []


def test_propagation_written_as_dicom_seg(tmp_path, capsys):
    """The CLI's main job on the real CT series, straight to DICOM SEG and .seg.nrrd."""
    series = need_series()
    volume = read_volume(series)
    prompts = {
        "axis": 2,
        "window": "abdomen",
        "objects": [
            {
                "id": 1,
                "name": "spleen",
                "range": [8, 12],
                "slices": {"10": {"box": [330, 240, 420, 330]}},
            }
        ],
    }
    (tmp_path / "p.json").write_text(json.dumps(prompts))
    outs = {}
    for suffix in (".dcm", ".seg.nrrd", ".nii.gz"):
        out = tmp_path / f"result{suffix}"
        code = main(
            ["propagate", str(series), "--prompts", str(tmp_path / "p.json"), "--out", str(out)]
        )
        err = capsys.readouterr().err
        assert code == 0, err
        outs[suffix] = read_labels(out, reference=volume)
    nifti, segs = outs[".nii.gz"]
    assert nifti.array[:, :, 8:13].any() and not nifti.array[:, :, :8].any()
    for suffix in (".dcm", ".seg.nrrd"):
        labels, segs = outs[suffix]
        assert np.array_equal(labels.array, nifti.array), suffix
        assert [(s.id, s.name, s.color) for s in segs] == [(1, "spleen", (157, 108, 162))]
    check_seg_against_source(tmp_path / "result.dcm", series, nifti.array, ["spleen"])
    assert validator_errors(tmp_path / "result.dcm") == []


def test_a_seg_takes_its_frames_spacing_from_the_slices_not_a_wrong_tag(tmp_path):
    """A series whose Spacing Between Slices says 1 mm where its slices lie 2 mm apart: the
    SEG of two of its slices holds them 2 mm apart (highdicom copied the tag, and the SEG
    read back on a 1 mm grid with an empty slice between, half the volume in mm³, and off
    the series' grid)."""
    pydicom = pytest.importorskip("pydicom")
    pytest.importorskip("highdicom")
    array = np.zeros((20, 16, 6), np.int16)
    series = write_dicom_series(tmp_path / "series", array)
    for path in series.iterdir():
        ds = pydicom.dcmread(path)
        ds.SpacingBetweenSlices = 1
        ds.save_as(path)
    volume = read_volume(series)
    assert volume.spacing[2] == pytest.approx(2.0)  # read from the positions
    labels = np.zeros(array.shape, np.uint8)
    labels[4:9, 3:7, 3:5] = 1
    seg = write_labels(tmp_path / "l.dcm", labels, volume, [Segment(1, "a", (9, 8, 7))], series)
    alone, _ = read_labels(seg)
    assert alone.array.shape == (20, 16, 2)
    assert np.linalg.norm(alone.affine[:3, 2]) == pytest.approx(2.0)
    back, _ = read_labels(seg, reference=volume)
    assert np.array_equal(back.array, labels)


def enhanced_ct(tmp_path, array, frames: str):
    """`array` as one Legacy Converted Enhanced CT file (what converters and newer scanners
    write instead of a file per slice), its frames stored as highdicom sorts them
    ("converted": head first) or the other way ("reversed": feet first)."""
    pydicom = pytest.importorskip("pydicom")
    hd = pytest.importorskip("highdicom")
    from highdicom.legacy import LegacyConvertedEnhancedCTImage

    series = write_dicom_series(tmp_path / "slices", array)
    frame_of_reference = hd.UID()
    sources = []
    for path in sorted(series.iterdir()):
        ds = pydicom.dcmread(path)
        ds.FrameOfReferenceUID = frame_of_reference
        sources.append(ds)
    out = tmp_path / "enhanced.dcm"
    LegacyConvertedEnhancedCTImage(sources, hd.UID(), 9, hd.UID(), 1).save_as(out)
    if frames == "reversed":
        ds = pydicom.dcmread(out)
        groups = list(ds.PerFrameFunctionalGroupsSequence)
        ds.PerFrameFunctionalGroupsSequence = pydicom.Sequence(groups[::-1])
        ds.PixelData = np.ascontiguousarray(ds.pixel_array[::-1]).tobytes()
        ds.save_as(out)
    return out, read_volume(series)


@pytest.mark.parametrize("frames", ["converted", "reversed"])
@pytest.mark.parametrize("given_as", ["file", "folder", "file named as exports name it"])
def test_dicom_seg_references_the_frames_of_a_multiframe_source(tmp_path, capsys, frames, given_as):
    """A SEG made on one enhanced multi-frame file points each of its frames at the source
    frame it lies on, whichever way the frames are stored, and whether the file is given
    or the folder an export put it in."""
    import pydicom

    array = np.arange(9 * 7 * 6, dtype=np.int16).reshape(9, 7, 6)
    source, slices = enhanced_ct(tmp_path, array, frames)
    if given_as != "file":
        (tmp_path / "export").mkdir()
        # No suffix, as exports name them: found by the "DICM" mark at byte 128.
        source = source.rename(tmp_path / "export" / "IM0001")
        if given_as == "folder":
            source = source.parent
    volume = read_volume(source)
    # The same voxels at the same places as the per-slice series it was converted from
    # (onto_grid only undoes flips and axis orders of one grid).
    assert np.array_equal(onto_grid(volume.array, volume.affine, slices, "v"), array)
    labels = np.zeros(volume.array.shape, np.uint8)
    labels[1:4, 2:6, 1:3] = 3  # off-centre in every axis: a mirror would show
    labels[6:8, 1:3, 4] = 5
    write_volume(tmp_path / "labels.nii.gz", labels, volume)
    out = tmp_path / "seg.dcm"
    code = main(
        ["export", str(tmp_path / "labels.nii.gz"), "--reference", str(source), "-o", str(out)]
    )
    assert code == 0, capsys.readouterr().err
    seg = pydicom.dcmread(out)
    src = pydicom.dcmread(source / "IM0001" if given_as == "folder" else source)
    frames_px = seg.pixel_array.reshape(-1, int(seg.Rows), int(seg.Columns))
    shared = seg.SharedFunctionalGroupsSequence[0]
    seen = set()
    for f, group in enumerate(seg.PerFrameFunctionalGroupsSequence):
        ref = group.DerivationImageSequence[0].SourceImageSequence[0]
        assert ref.ReferencedSOPInstanceUID == src.SOPInstanceUID
        k = int(ref.ReferencedFrameNumber) - 1
        at = src.PerFrameFunctionalGroupsSequence[k].PlanePositionSequence[0]
        position = group.PlanePositionSequence[0].ImagePositionPatient
        assert np.allclose(
            [float(v) for v in position], [float(v) for v in at.ImagePositionPatient]
        )
        ident = group if "SegmentIdentificationSequence" in group else shared
        number = ident.SegmentIdentificationSequence[0].ReferencedSegmentNumber
        assert np.array_equal(frames_px[f].astype(bool), labels[:, :, k].T == (3, 5)[number - 1])
        seen.add((k, number))
    assert seen == {(1, 1), (2, 1), (4, 2)}
    back, segs = read_labels(out, reference=volume)
    restored = np.zeros_like(labels)
    for s in segs:
        restored[back.array == s.id] = (3, 5)[s.id - 1]
    assert np.array_equal(restored, labels)
    assert validator_errors(out) == []


def test_a_folder_holding_one_multiframe_file_reads_as_that_file(tmp_path):
    """PACS exports put an enhanced multi-frame volume in a folder of its own; ITK's series
    reader took it as a 4D image and the read failed with a matrix shape error."""
    array = np.arange(6 * 5 * 4, dtype=np.int16).reshape(6, 5, 4)
    source, _ = enhanced_ct(tmp_path, array, "converted")
    (tmp_path / "export").mkdir()
    moved = shutil.copy(source, tmp_path / "export" / "IM0001")
    alone, inside = read_volume(source), read_volume(moved.parent)
    assert np.array_equal(inside.array, alone.array) and inside.array.shape == (6, 5, 4)
    assert np.allclose(inside.affine, alone.affine)


def test_dicom_seg_needs_its_series_and_says_so(tmp_path, capsys):
    ct = Volume(np.zeros((9, 7, 5), np.int16), oblique_affine())
    write_volume(tmp_path / "labels.nii.gz", two_objects(ct.array.shape), ct)
    code = main(["export", str(tmp_path / "labels.nii.gz"), "--out", str(tmp_path / "x.dcm")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "needs the DICOM source (a series folder" in err[0]
    assert not (tmp_path / "x.dcm").exists()


def test_evaluate_takes_a_seg_nrrd_as_ground_truth(tmp_path, capsys, tiny_checkpoint):
    rng = np.random.default_rng(0)
    array = rng.normal(-80, 5, (40, 36, 6)).astype(np.int16)
    array[10:25, 8:20, 1:5] = 150
    ct = Volume(array, oblique_affine())
    image = write_volume(tmp_path / "ct.nii.gz", array, ct)
    truth = np.zeros(array.shape, np.uint8)
    truth[10:25, 8:20, 1:5] = 2
    # Saved cropped, as Slicer does: evaluate must put it back on the image's grid.
    crop = Volume(truth[5:30, 4:30, :], ct.affine.copy())
    crop.affine[:3, 3] = ct.affine[:3, :3] @ [5, 4, 0] + ct.affine[:3, 3]
    gt = write_labels(tmp_path / "gt.seg.nrrd", crop.array, crop, [Segment(2, "block", (1, 2, 3))])
    code = main(
        [
            "evaluate",
            str(image),
            str(gt),
            "--prompt",
            "box",
            "--model",
            str(tiny_checkpoint),
            "--device",
            "cpu",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert any(line.split()[:2] == ["2", "block"] for line in out.splitlines()), out


@pytest.mark.parametrize("value", [0.7, -3.0, np.nan])
def test_values_that_are_not_labels_are_refused(tmp_path, value):
    """A probability map or an image given as labels: 0.7 was read as a segment numbered 0
    and exported as "Segment_0"; a CT given as labels counted every HU as a class."""
    array = np.zeros((6, 5, 4), np.float32)
    array[1:3, 1:3, 1] = 2
    array[3, 3, 2] = value
    path = write_volume(tmp_path / "p.nii.gz", array, Volume(array, np.eye(4)))
    with pytest.raises(VolumeIOError, match="is not a label .*threshold it first"):
        read_labels(path)
    array[3, 3, 2] = 1.0  # whole numbers stored as floats are labels
    write_volume(path, array, Volume(array, np.eye(4)))
    labels, segments = read_labels(path)
    assert [s.id for s in segments] == [1, 2]
