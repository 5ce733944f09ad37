"""RT Structure Sets: contours that give back the mask, placed on every series layout."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from skimage.draw import polygon2mask

from sammed2d.cli import main
from sammed2d.dicom_seg import _complete_identity
from sammed2d.errors import SamMed2DError, SourceWarning
from sammed2d.io import Volume, dicom_series_files, read_volume, write_volume
from sammed2d.labelfiles import read_labels, write_labels
from sammed2d.rtstruct import slice_contours

from .test_labelfiles import need_series, series_copy, validator_errors


def even_odd(contours, shape) -> np.ndarray:
    """Pixels whose centre lies inside an odd number of the polygons: how planning systems
    read nested contours on one slice."""
    inside = np.zeros(shape, bool)
    for points in contours:
        inside ^= polygon2mask(shape, points)
    return inside


def test_contours_give_back_the_mask_holes_and_thin_parts_included():
    mask = np.zeros((40, 50), bool)
    mask[5:30, 5:35] = True
    mask[12:20, 12:22] = False  # a hole (a vessel in an organ)
    mask[15:17, 15:17] = True  # an island in the hole
    mask[33, 10:40] = True  # one pixel thin
    mask[36:39, 44:47] = True  # a second piece
    mask[0, 0] = True  # one pixel at the edge
    contours = slice_contours(mask)
    assert len(contours) == 6
    assert np.array_equal(even_odd(contours, mask.shape), mask)
    # noise: pixels touching only at corners, holes in holes, pieces on every edge
    rng = np.random.default_rng(0)
    for _ in range(50):
        noise = rng.random((24, 20)) < rng.uniform(0.2, 0.7)
        assert np.array_equal(even_odd(slice_contours(noise), noise.shape), noise)
    # no point repeats, none lies on a straight run between its neighbours
    square = slice_contours(np.pad(np.ones((6, 6), bool), 2))
    assert len(square) == 1 and len(square[0]) == 8  # four sides, four cut corners


def read_back(path, series) -> dict[str, np.ndarray]:
    """Each ROI's voxels (i, j, k of the series as `read_volume` gives it), from the contour
    points through the geometry of the instance each contour references."""
    import pydicom

    files = dicom_series_files(series)
    instances = {}
    for k, f in enumerate(files):
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        uid = ds.get("SOPInstanceUID") or ds.file_meta.MediaStorageSOPInstanceUID
        instances[uid] = (k, ds)
    rs = pydicom.dcmread(path)
    rows, cols = int(rs_first(instances).Rows), int(rs_first(instances).Columns)
    names = {r.ROINumber: r.ROIName for r in rs.StructureSetROISequence}
    out = {}
    for roi in rs.ROIContourSequence:
        volume = np.zeros((len(files), rows, cols), bool)
        for item in roi.ContourSequence:
            k, ds = instances[item.ContourImageSequence[0].ReferencedSOPInstanceUID]
            xyz = np.asarray(item.ContourData, float).reshape(-1, 3)
            assert item.NumberOfContourPoints == len(xyz)
            origin = np.asarray(ds.ImagePositionPatient, float)
            cosines = np.asarray(ds.ImageOrientationPatient, float).reshape(2, 3)
            normal = np.cross(cosines[0], cosines[1])
            assert np.abs((xyz - origin) @ normal).max() < 1e-3  # on its slice's plane
            row_spacing, col_spacing = (float(v) for v in ds.PixelSpacing)
            col = (xyz - origin) @ cosines[0] / col_spacing
            row = (xyz - origin) @ cosines[1] / row_spacing
            volume[k] ^= polygon2mask((rows, cols), np.stack([row, col], axis=1))
        out[names[roi.ReferencedROINumber]] = np.transpose(volume, (2, 1, 0))
    return out


def rs_first(instances):
    return next(iter(instances.values()))[1]


@pytest.mark.parametrize("kind", ["as-is", "reversed", "negated", "sagittal"])
def test_rtstruct_export_places_every_roi_on_every_series_layout(tmp_path, capsys, kind):
    """`export --reference SERIES -o x.rtstruct.dcm`: one ROI per label with its name and
    colour, every contour on the plane of the slice it references, and the contours give
    back the labels voxel for voxel, for the series as given, with its files' order
    reversed, with both in-plane directions negated, and resliced sagittally. A valid RT
    Structure Set for dciodvfy, in the source's patient, study and Frame of Reference."""
    import pydicom

    series = series_copy(tmp_path / "series", kind)
    volume = read_volume(series)
    ni, nj, nk = volume.array.shape
    labels = np.zeros(volume.array.shape, np.uint8)
    labels[ni // 8 : ni // 3, nj // 5 : nj // 2, nk // 4 : nk // 2 + 1] = 2
    labels[ni // 6 : ni // 5, nj // 4 : nj // 3, nk // 4] = 0  # a hole on one slice
    labels[ni // 2 : ni // 2 + 4, nj // 2 : nj - 3, nk - 2] = 7
    write_volume(tmp_path / "labels.nii.gz", labels, volume)
    names = tmp_path / "names.json"
    names.write_text(json.dumps({"2": "liver", "7": {"name": "lésion", "color": "#00ff00"}}))
    out = tmp_path / "plan.rtstruct.dcm"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the shared series lacks a Study ID: named once
        code = main(
            ["export", str(tmp_path / "labels.nii.gz"), "--reference", str(series), "--names",
             str(names), "--out", str(out)]
        )  # fmt: skip
    printed = capsys.readouterr()
    assert code == 0, printed.err
    back = read_back(out, series)
    assert list(back) == ["liver", "lésion"]
    assert np.array_equal(back["liver"], labels == 2)
    assert np.array_equal(back["lésion"], labels == 7)
    rs = pydicom.dcmread(out)
    source = pydicom.dcmread(dicom_series_files(series)[0], stop_before_pixels=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _complete_identity(source)  # the study UID a SEG of this series gets, where blank
    assert rs.Modality == "RTSTRUCT" and rs.SOPClassUID == "1.2.840.10008.5.1.4.1.1.481.3"
    assert rs.StudyInstanceUID == source.StudyInstanceUID
    assert rs.FrameOfReferenceUID == source.FrameOfReferenceUID
    assert [list(c.ROIDisplayColor) for c in rs.ROIContourSequence] == [
        [221, 130, 101],
        [0, 255, 0],
    ]
    assert validator_errors(out) == []
    # Read back onto the series, and onto a NIfTI of it (the same scan, another file).
    write_volume(tmp_path / "ct.nii.gz", volume.array, volume)
    for reference in (volume, read_volume(tmp_path / "ct.nii.gz")):
        again, segments = read_labels(out, reference=reference)
        assert [(s.name, s.color) for s in segments] == [
            ("liver", (221, 130, 101)),
            ("lésion", (0, 255, 0)),
        ]
        restored = np.select([again.array == 1, again.array == 2], [2, 7], 0)
        assert np.array_equal(restored, labels)


def uid_series(tmp_path):
    """The shared series with each instance's UID in its dataset too (rt-utils matches
    instances by the dataset's UID; the de-identified files keep it in their meta header)."""
    import pydicom

    src = need_series()
    series = tmp_path / "series"
    series.mkdir()
    for f in dicom_series_files(src):
        ds = pydicom.dcmread(f)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
        ds.save_as(series / ds.SOPInstanceUID, enforce_file_format=True)
    return series


def slice_order(series):
    """Our slice index of each of rt-utils' slices (it sorts them by position)."""
    import pydicom

    files = dicom_series_files(series)
    return np.argsort([float(pydicom.dcmread(f).ImagePositionPatient[2]) for f in files])


def test_rtstruct_reads_in_rt_utils_as_its_users_read_it(tmp_path):
    """rt-utils, the Python reader of RT Structure Sets many planning-study scripts use,
    finds each ROI where our labels are. It fills a contour with its boundary (half a pixel
    wider than the pixel centres inside it), so its masks are a ring larger than ours."""
    rt_utils = pytest.importorskip("rt_utils")
    series = uid_series(tmp_path)
    volume = read_volume(series)
    ni, nj, nk = volume.array.shape
    labels = np.zeros(volume.array.shape, np.uint8)
    labels[ni // 8 : ni // 3, nj // 5 : nj // 2, nk // 4 : nk // 2 + 1] = 1
    write_volume(tmp_path / "labels.nii.gz", labels, volume)
    out = tmp_path / "s.rtstruct.dcm"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["export", str(tmp_path / "labels.nii.gz"), "--reference", str(series),
                     "--out", str(out)]) == 0  # fmt: skip
    rt = rt_utils.RTStructBuilder.create_from(
        dicom_series_path=str(series), rt_struct_path=str(out)
    )
    (name,) = rt.get_roi_names()
    theirs = rt.get_roi_mask_by_name(name)  # (row, column, slice) in slice-position order
    ours = np.transpose(labels == 1, (1, 0, 2))[:, :, slice_order(series)]
    assert 2 * (theirs & ours).sum() / (theirs.sum() + ours.sum()) > 0.95
    assert (ours & ~theirs).sum() == 0  # nothing of ours missing there


def test_rtstruct_written_by_rt_utils_reads_with_overlaps_to_the_smaller_roi(tmp_path):
    """An RT Structure Set from another writer (rt-utils, whose contours run through the
    boundary pixels' centres) with an External contour round a GTV, as planning systems
    keep them: each ROI is filled where it was drawn, the GTV keeps its voxels inside the
    External, and a warning counts them."""
    rt_utils = pytest.importorskip("rt_utils")
    series = uid_series(tmp_path)
    volume = read_volume(series)
    external = np.zeros(volume.array.shape, bool)
    external[80:450, 100:400, :] = True
    gtv = np.zeros(volume.array.shape, bool)
    gtv[150:230, 200:260, 5:12] = True
    order = slice_order(series)
    rt = rt_utils.RTStructBuilder.create_new(dicom_series_path=str(series))
    # the GTV first: ROI 1, under the External's ROI 2 in number order
    for name, mask, color in (("GTV", gtv, [255, 0, 0]), ("External", external, [0, 255, 0])):
        rt.add_roi(mask=np.transpose(mask, (1, 0, 2))[:, :, order], name=name, color=color)
    rt.save(str(tmp_path / "plan.dcm"))
    with pytest.warns(SourceWarning, match=f"{int(gtv.sum())} voxels lie in more than one ROI"):
        labels, segments = read_labels(tmp_path / "plan.dcm", reference=volume)
    assert [(s.name, s.color) for s in segments] == [
        ("GTV", (255, 0, 0)),
        ("External", (0, 255, 0)),
    ]
    assert np.array_equal(labels.array == 1, gtv)
    assert np.array_equal(labels.array == 2, external & ~gtv)


def test_contours_off_the_image_slices_are_refused(tmp_path):
    """Read onto an image whose slices lie half a slice away from the contours (another
    scan in the same frame of reference): refused in one line, not filled on the nearest;
    without an image, refused too."""
    series = need_series()
    volume = read_volume(series)
    labels = np.zeros(volume.array.shape, np.uint8)
    labels[100:200, 100:200, 4:6] = 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = write_labels(tmp_path / "s.rtstruct.dcm", labels, volume, source_series=series)
    shifted = Volume(volume.array, volume.affine.copy())
    shifted.affine[:3, 3] += shifted.affine[:3, 2] * 0.5
    with pytest.raises(SamMed2DError, match="is not on a slice of the image") as caught:
        read_labels(out, reference=shifted)
    assert "\n" not in str(caught.value)
    with pytest.raises(SamMed2DError, match="read onto the image they were drawn on"):
        read_labels(out)


def test_rtstruct_needs_its_series(tmp_path, capsys):
    labels = np.zeros((6, 5, 4), np.uint8)
    labels[1:3, 1:3, 1] = 1
    write_volume(tmp_path / "labels.nii.gz", labels, Volume(labels, np.eye(4)))
    code = main(
        ["export", str(tmp_path / "labels.nii.gz"), "--out", str(tmp_path / "x.rtstruct.dcm")]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err
    assert "an RT Structure Set needs the DICOM source" in err
    assert not (tmp_path / "x.rtstruct.dcm").exists()


@pytest.mark.parametrize("out", ["x.rtstruct.dcm", "x.dcm"])
def test_propagate_refuses_a_dicom_output_without_its_series_before_the_model_loads(
    tmp_path, capsys, out
):
    """A NIfTI propagated to DICOM: refused in one line before the model loads (the
    missing checkpoint would be named otherwise) and before any slice is embedded."""
    labels = np.zeros((6, 5, 4), np.int16)
    write_volume(tmp_path / "ct.nii.gz", labels, Volume(labels, np.eye(4)))
    prompts = tmp_path / "p.json"
    prompts.write_text(
        json.dumps({"axis": 2, "objects": [{"id": 1, "slices": {"1": {"box": [0, 0, 3, 3]}}}]})
    )
    code = main(
        ["propagate", str(tmp_path / "ct.nii.gz"), "--prompts", str(prompts), "--out",
         str(tmp_path / out), "--model", str(tmp_path / "nowhere.pth")]
    )  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "needs the DICOM source" in err
