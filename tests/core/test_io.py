"""Volume and image I/O keeps geometry, writes atomically, and explains bad files."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from sammed2d.errors import VolumeIOError
from sammed2d.io import (
    Volume,
    dicom_source,
    read_channels,
    read_image,
    read_volume,
    slice_geometry_problem,
    write_mask,
    write_volume,
)


def oblique_affine():
    theta = np.deg2rad(15)
    rot = np.array(
        [[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]]
    )
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([0.8, 0.9, 2.5])
    affine[:3, 3] = [-100.0, 20.0, 35.0]
    return affine


def write_dicom_series(
    folder, array_ijk, spacing=(0.7, 0.8, 2.0), origin=(-50.0, -60.0, 10.0), shear=0.0
):
    """A real DICOM series, one file per slice, with the tags that carry geometry; `shear`
    mm per slice along the rows moves each slice as a gantry tilt does."""
    folder.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(np.transpose(array_ijk).astype(np.int16))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(image.GetDepth()):
        sl = image[:, :, k]
        pos = np.add(image.TransformIndexToPhysicalPoint((0, 0, k)), (0, shear * k, 0))
        sl.SetMetaData("0020|0032", "\\".join(f"{p:.4f}" for p in pos))
        sl.SetMetaData("0020|0037", "1\\0\\0\\0\\1\\0")
        sl.SetMetaData("0020|0013", str(k))
        sl.SetMetaData("0020|000e", "1.2.826.0.1.3680043.2.1125.1.1")
        sl.SetMetaData("0020|000d", "1.2.826.0.1.3680043.2.1125.1.2")
        sl.SetMetaData("0020|0052", "1.2.826.0.1.3680043.2.1125.1.3")  # Frame of Reference
        sl.SetMetaData("0008|0060", "CT")
        sl.SetMetaData("0018|0050", str(spacing[2]))
        writer.SetFileName(str(folder / f"slice{k:03d}.dcm"))
        writer.Execute(sl)
    return folder


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha", ".nhdr", ".mhd"])
def test_round_trip_keeps_geometry(tmp_path, suffix):
    rng = np.random.default_rng(0)
    array = rng.integers(-1000, 1000, (9, 7, 5)).astype(np.int16)
    vol = Volume(array, oblique_affine())
    path = write_volume(tmp_path / f"vol{suffix}", array, vol)
    back = read_volume(path)
    assert np.array_equal(back.array, array)
    assert np.allclose(back.affine, vol.affine, atol=1e-4)
    assert not list(tmp_path.glob(".tmp-*"))


@pytest.mark.parametrize(("suffix", "data"), [(".mhd", "vol.zraw"), (".nhdr", "vol.raw.gz")])
def test_a_detached_header_names_its_data_file_under_its_own_name(tmp_path, suffix, data):
    """.mhd and .nhdr keep the voxels in a second file that the header names: it is written
    as vol.zraw / vol.raw.gz beside the header (it was left under the hidden temporary name,
    which the header named), and writing again replaces both."""
    array = np.arange(9 * 7 * 5, dtype=np.int16).reshape(9, 7, 5)
    vol = Volume(array, oblique_affine())
    for values in (array, array[::-1].copy()):
        write_volume(tmp_path / f"vol{suffix}", values, vol)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f"vol{suffix}", data])
    assert data in (tmp_path / f"vol{suffix}").read_text(errors="replace")
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    for name in (f"vol{suffix}", data):
        shutil.move(tmp_path / name, moved / name)
    assert np.array_equal(read_volume(moved / f"vol{suffix}").array, array[::-1])


def test_labels_written_like_their_source_across_formats(tmp_path):
    array = np.zeros((6, 5, 4), np.int16)
    src = read_volume(write_volume(tmp_path / "ct.nrrd", array, Volume(array, oblique_affine())))
    labels = np.zeros(array.shape, np.uint8)
    labels[1:3, 2:4, 1] = 2
    out = read_volume(write_volume(tmp_path / "labels.nii.gz", labels, src))
    assert np.array_equal(out.array, labels) and np.allclose(out.affine, src.affine, atol=1e-4)
    assert out.array.dtype == np.uint8


def test_dicom_series_folder(tmp_path):
    array = np.arange(6 * 5 * 4, dtype=np.int16).reshape(6, 5, 4)
    vol = read_volume(write_dicom_series(tmp_path / "series", array))
    assert np.array_equal(vol.array, array)
    # LPS origin (-50, -60, 10) is RAS (50, 60, 10); axes i, j point toward L and P.
    assert np.allclose(vol.affine[:3, 3], [50, 60, 10], atol=1e-3)
    assert np.allclose(np.diag(vol.affine)[:3], [-0.7, -0.8, 2.0], atol=1e-4)


def test_dicom_series_off_a_regular_grid_is_refused(tmp_path):
    # ITK read these without a word, on a grid of the mean spacing (a missing slice) or
    # unsheared (a gantry tilt): every mask and exported label would be misplaced.
    array = np.zeros((6, 5, 6), np.int16)
    gap = write_dicom_series(tmp_path / "gap", array)
    (gap / "slice003.dcm").unlink()
    with pytest.raises(VolumeIOError, match=(
        r"gap: slices are not evenly spaced: 2 mm apart, but 4 mm between slice002.dcm and "
        r"slice004.dcm \(a missing slice\?\); this tool needs slices on a regular grid"
    )):  # fmt: skip
        read_volume(gap)
    tilted = write_dicom_series(tmp_path / "tilt", array, shear=2.0 * np.tan(np.radians(15)))
    with pytest.raises(VolumeIOError, match=r"sheared by 15 degrees \(gantry tilt\)"):
        read_volume(tilted)
    # Shear under half a pixel over the whole series is float rounding, not a tilt.
    slight = write_dicom_series(tmp_path / "slight", array, shear=0.05)
    assert read_volume(slight).array.shape == (6, 5, 6)


def test_a_folder_that_is_not_one_series_says_what_it_holds(tmp_path):
    array = np.zeros((6, 5, 4), np.int16)
    # A PACS or CD export: each series nested in folders of its own.
    write_dicom_series(tmp_path / "export" / "PAT1" / "ST1" / "SE1", array)
    with pytest.raises(VolumeIOError, match=(
        r"export: folder holds no DICOM series; these folders inside it do: PAT1/ST1/SE1$"
    )):  # fmt: skip
        read_volume(tmp_path / "export")
    two = write_dicom_series(tmp_path / "two", array)
    write_dicom_series(tmp_path / "other", array[:, :, :3])
    for path in (tmp_path / "other").iterdir():  # the same files as another series
        image = sitk.ReadImage(str(path))
        image.SetMetaData("0020|000e", "1.2.826.0.1.3680043.2.1125.1.9")
        image.SetMetaData("0008|103e", "AX T1")
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()
        writer.SetFileName(str(two / f"b{path.name}"))
        writer.Execute(image)
    with pytest.raises(VolumeIOError, match=(
        r"2 DICOM series in one folder \((CT, 4 files; CT 'AX T1', 3 files|CT 'AX T1', 3 "
        r"files; CT, 4 files)\); expected one: give each series a folder of its own"
    )):  # fmt: skip
        read_volume(two)


def test_an_enhanced_multiframe_file_off_a_regular_grid_is_refused(tmp_path):
    """One .dcm holding the volume (Enhanced CT, as converted from a series): ITK read a
    conversion of a series with a missing slice as 1 x 1 x 1 mm voxels without a word."""
    pydicom = pytest.importorskip("pydicom")
    hd = pytest.importorskip("highdicom")
    from highdicom.legacy import LegacyConvertedEnhancedCTImage

    array = np.arange(6 * 5 * 6, dtype=np.int16).reshape(6, 5, 6)

    def converted(name, drop=None):
        series = write_dicom_series(tmp_path / name, array)
        if drop:
            (series / drop).unlink()
        sources = [pydicom.dcmread(f) for f in sorted(series.iterdir())]
        out = tmp_path / f"{name}.dcm"
        LegacyConvertedEnhancedCTImage(
            sources, hd.UID(), 9, hd.UID(), 1
        ).save_as(out)  # fmt: skip
        return out

    whole = read_volume(converted("whole"))
    assert whole.array.shape == (6, 5, 6)
    assert np.allclose(np.abs(np.diag(whole.affine)[:3]), [0.7, 0.8, 2.0], atol=1e-4)
    with pytest.raises(VolumeIOError, match=(
        r"gap.dcm: frames are not evenly spaced: 2 mm apart, but 4 mm between frame 3 and "
        r"frame 4 \(a missing slice\?\); this tool needs frames on a regular grid"
    )):  # fmt: skip
        read_volume(converted("gap", drop="slice003.dcm"))


def test_slice_geometry_problems_are_named():
    axial = ["1\\0\\0\\0\\1\\0"] * 3

    def at(*z):
        return [f"0\\0\\{v}" for v in z]

    assert slice_geometry_problem(at(0, 2, 4), axial, (1, 1), "abc") is None
    assert slice_geometry_problem(at(0, 2.001, 3.999), axial, (1, 1), "abc") is None
    assert slice_geometry_problem(None, axial, (1, 1), "abc") is None  # nothing to check
    assert "same position (b and c): more than one acquisition" in slice_geometry_problem(
        at(0, 2, 2), axial, (1, 1), "abc"
    )
    coronal = axial[:2] + ["1\\0\\0\\0\\0\\-1"]
    assert "more than one orientation (a and c differ)" in slice_geometry_problem(
        at(0, 2, 4), coronal, (1, 1), "abc"
    )
    assert "malformed" in slice_geometry_problem(["0\\0", "0\\0", "0\\0"], axial, (1, 1), "abc")
    assert "malformed" in slice_geometry_problem(at(0, "x", 4), axial, (1, 1), "abc")


def test_bad_files(tmp_path):
    with pytest.raises(VolumeIOError, match="file not found"):
        read_volume(tmp_path / "missing.nii.gz")
    (tmp_path / "scan.xyz").write_text("?")
    with pytest.raises(VolumeIOError, match="unsupported format .xyz"):
        read_volume(tmp_path / "scan.xyz")
    (tmp_path / "broken.nii.gz").write_bytes(b"\x1f\x8bnot really")
    with pytest.raises(VolumeIOError, match="unreadable NIfTI"):
        read_volume(tmp_path / "broken.nii.gz")
    (tmp_path / "broken.nrrd").write_text("NRRD0004\ngarbage\n")
    with pytest.raises(VolumeIOError, match="broken.nrrd: unreadable"):
        read_volume(tmp_path / "broken.nrrd")
    import nibabel as nib

    # complex voxels (a phase or k-space image) raised a TypeError deep in the windowing
    nib.save(nib.Nifti1Image(np.ones((4, 4, 3), np.complex64), np.eye(4)), tmp_path / "c.nii")
    with pytest.raises(VolumeIOError, match="c.nii: voxels of type complex64; expected real"):
        read_volume(tmp_path / "c.nii")
    (tmp_path / "empty").mkdir()
    with pytest.raises(VolumeIOError, match="no DICOM series"):
        read_volume(tmp_path / "empty")
    with pytest.raises(VolumeIOError, match="do not match"):
        write_volume(tmp_path / "x.nii.gz", np.zeros((2, 2, 2)), Volume(np.zeros((3, 3, 3))))
    with pytest.raises(VolumeIOError, match="unsupported format"):
        write_volume(tmp_path / "x.png", np.zeros((2, 2, 2)), Volume(np.zeros((2, 2, 2))))


def test_dicom_files_named_without_a_dicom_suffix_are_read(tmp_path):
    """Exports name DICOM files IM0001 or by their UIDs (whose last digits read as a
    suffix): the "DICM" mark at byte 128 says what they are; anything else stays refused."""
    array = np.arange(6 * 5 * 3, dtype=np.int16).reshape(6, 5, 3)
    series = write_dicom_series(tmp_path / "s", array)
    first = series / "slice001.dcm"
    for name in ("IM0001", "1.2.840.113619.2.55.320"):
        shutil.copy(first, tmp_path / name)
        volume = read_volume(tmp_path / name)
        assert np.array_equal(volume.array[:, :, 0], array[:, :, 1])
        assert dicom_source(tmp_path / name) == tmp_path / name
    (tmp_path / "notes.320").write_bytes(b"\0" * 200)
    with pytest.raises(VolumeIOError, match=r"unsupported format .320; expected .*a DICOM file"):
        read_volume(tmp_path / "notes.320")
    assert dicom_source(tmp_path / "notes.320") is None


@pytest.mark.parametrize("suffix", [".png", ".tif", ".nii.gz"])
def test_mask_round_trip(tmp_path, suffix):
    mask = np.zeros((7, 9), bool)
    mask[2:5, 3:8] = True
    path = write_mask(tmp_path / f"mask{suffix}", mask)
    back = read_image(path)
    assert back.shape == (7, 9) and np.array_equal(back > 0, mask)


def test_image_formats(tmp_path):
    import imageio.v3 as iio

    rgb = np.random.default_rng(1).integers(0, 255, (6, 8, 3), dtype=np.uint8)
    iio.imwrite(tmp_path / "rgb.png", rgb)
    assert np.array_equal(read_image(tmp_path / "rgb.png"), rgb)
    iio.imwrite(tmp_path / "rgba.png", np.dstack([rgb, np.full((6, 8), 255, np.uint8)]))
    assert read_image(tmp_path / "rgba.png").shape == (6, 8, 3)
    sitk.WriteImage(
        sitk.GetImageFromArray(np.arange(48, dtype=np.int16).reshape(6, 8)),
        str(tmp_path / "one.dcm"),
    )
    assert np.array_equal(read_image(tmp_path / "one.dcm"), np.arange(48).reshape(6, 8))


def test_grey_with_alpha_planar_colour_and_stacks(tmp_path):
    """Grey levels with an alpha channel (PNG "LA") or a channel axis of one are grey
    images, colour stored plane by plane (planar TIFF) is RGB, and a stack of pages is
    refused with the way to a volume rather than pointed at --slice, which needs one."""
    import tifffile
    from PIL import Image

    grey = np.random.default_rng(2).integers(0, 255, (6, 8), dtype=np.uint8)
    Image.fromarray(np.dstack([grey, np.full_like(grey, 255)])).save(tmp_path / "la.png")
    assert np.array_equal(read_image(tmp_path / "la.png"), grey)
    tifffile.imwrite(tmp_path / "one.tif", grey[:, :, None])
    assert np.array_equal(read_image(tmp_path / "one.tif"), grey)
    rgb = np.dstack([grey, 255 - grey, grey // 2])
    planes = np.moveaxis(rgb, -1, 0)
    tifffile.imwrite(tmp_path / "planar.tif", planes, photometric="rgb", planarconfig="separate")
    assert np.array_equal(read_image(tmp_path / "planar.tif"), rgb)
    tifffile.imwrite(tmp_path / "stack.tif", np.stack([grey] * 5))
    with pytest.raises(VolumeIOError, match="stack of images.*NIfTI"):
        read_image(tmp_path / "stack.tif")


@pytest.mark.parametrize("unit,scale", [("meter", 1e-3), ("micron", 1e3), ("unknown", 1.0)])
def test_nifti_units_read_as_mm_as_itk_reads_them(tmp_path, unit, scale):
    """A NIfTI whose header says metres or microns has its affine in those units; ITK and
    3D Slicer read it in mm, and so do we. Labels come out in mm and overlay the source."""
    import nibabel as nib

    affine = np.diag([0.75, 0.8, 3.0, 1.0])
    affine[:3, 3] = [-30.0, 15.0, 6.0]
    stored = affine.copy()
    stored[:3] *= scale
    img = nib.Nifti1Image(np.arange(60, dtype=np.int16).reshape(3, 4, 5), stored)
    img.header.set_xyzt_units(unit, "sec")
    nib.save(img, tmp_path / "ct.nii.gz")
    volume = read_volume(tmp_path / "ct.nii.gz")
    assert np.allclose(volume.affine, affine, atol=1e-5)
    source = sitk.ReadImage(str(tmp_path / "ct.nii.gz"))
    assert np.allclose(volume.spacing, source.GetSpacing(), atol=1e-5)
    write_volume(tmp_path / "labels.nii.gz", (volume.array > 30).astype(np.uint8), volume)
    labels = sitk.ReadImage(str(tmp_path / "labels.nii.gz"))
    assert np.allclose(labels.GetSpacing(), source.GetSpacing(), atol=1e-5)
    assert np.allclose(labels.GetOrigin(), source.GetOrigin(), atol=1e-4)
    units = nib.load(tmp_path / "labels.nii.gz").header.get_xyzt_units()
    assert units == ("mm", "sec")


def write_colour_dicom(path, rgb, photometric="RGB", frames=1):
    """An uncompressed colour DICOM (ultrasound image storage) of (frames, H, W, 3) or
    (H, W, 3) 8-bit RGB values, encoded as `photometric` says."""
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.pixels import convert_color_space
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    pixels = rgb if photometric == "RGB" else convert_color_space(rgb, "RGB", photometric)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.6.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.PatientName = "US", "Phantom"
    ds.Rows, ds.Columns = rgb.shape[-3], rgb.shape[-2]
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, photometric, 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = np.ascontiguousarray(pixels, np.uint8).tobytes()
    ds.save_as(str(path), enforce_file_format=True)
    assert pydicom.dcmread(str(path)).pixel_array.shape[-1] == 3
    return path


def colour_phantom():
    rgb = np.zeros((24, 32, 3), np.uint8)
    rgb[6:15, 10:25] = (200, 40, 60)  # a red lesion, off-centre so a transpose shows
    rgb[:3, :2] = (20, 210, 40)
    return rgb


@pytest.mark.parametrize("photometric", ["RGB", "YBR_FULL"])
def test_colour_dicom_reads_as_rgb(tmp_path, photometric):
    """Ultrasound and endoscopy DICOM images are colour (RGB, or YBR as JPEG keeps them):
    read as (H, W, 3) RGB in the file's row order, not refused as vector voxels."""
    rgb = colour_phantom()
    image = read_image(write_colour_dicom(tmp_path / "us.dcm", rgb, photometric))
    assert image.shape == (24, 32, 3) and image.dtype == np.uint8
    # YBR_FULL holds each colour to within a grey level of its RGB values
    assert np.abs(image.astype(int) - rgb).max() <= (0 if photometric == "RGB" else 2)


def test_colour_dicom_cine_is_refused_in_one_line(tmp_path):
    loop = np.stack([colour_phantom()] * 4)
    path = write_colour_dicom(tmp_path / "cine.dcm", loop, frames=4)
    with pytest.raises(VolumeIOError, match="colour DICOM with 4 frames") as err:
        read_image(path)
    assert "\n" not in str(err.value)


def test_outputs_respect_the_umask(tmp_path):
    import os

    array = np.zeros((4, 5, 3), np.uint8)
    old = os.umask(0o027)
    try:
        write_volume(tmp_path / "g.nii.gz", array, Volume(array))
        os.umask(0o022)
        write_volume(tmp_path / "w.nrrd", array, Volume(array))
    finally:
        os.umask(old)
    assert (tmp_path / "g.nii.gz").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "w.nrrd").stat().st_mode & 0o777 == 0o644


def test_a_4d_file_gives_the_volume_asked_for_and_names_the_choice(tmp_path):
    """MR sequences (or time points) in one 4D file: NIfTI, and NRRD read through ITK."""
    import nibabel as nib

    rng = np.random.default_rng(0)
    stack = rng.normal(0, 1, (6, 5, 4, 3)).astype(np.float32)
    affine = oblique_affine()
    nifti = tmp_path / "mr.nii.gz"
    nib.save(nib.Nifti1Image(stack, affine), str(nifti))
    image = sitk.JoinSeries([sitk.GetImageFromArray(stack[..., c].T) for c in range(3)])
    nrrd = tmp_path / "mr.nrrd"
    sitk.WriteImage(image, str(nrrd))
    for path in (nifti, nrrd):
        with pytest.raises(VolumeIOError, match=r"3 volumes on one grid .* --channel 0\.\.2"):
            read_volume(path)
        with pytest.raises(VolumeIOError, match="--channel 3; it holds 0..2"):
            read_volume(path, 3)
        second = read_volume(path, 1)
        assert np.array_equal(second.array, stack[..., 1]), path
        assert [v.array.shape for v in read_channels(path)] == [(6, 5, 4)] * 3
    assert np.allclose(read_volume(nifti, 2).affine, affine)
    # A trailing axis of one volume is no choice to make; a 3D file has no other channel.
    nib.save(nib.Nifti1Image(stack[..., :1], affine), str(tmp_path / "one.nii.gz"))
    assert read_volume(tmp_path / "one.nii.gz").array.shape == (6, 5, 4)
    assert read_volume(tmp_path / "one.nii.gz", 0).array.shape == (6, 5, 4)
    with pytest.raises(VolumeIOError, match="--channel 1, but it holds one volume"):
        read_volume(tmp_path / "one.nii.gz", 1)
    # A spatial axis of one slice stays an axis (it was squeezed with the fourth).
    nib.save(nib.Nifti1Image(stack[:, :, :1, :1], affine), str(tmp_path / "flat.nii.gz"))
    assert read_volume(tmp_path / "flat.nii.gz").array.shape == (6, 5, 1)
