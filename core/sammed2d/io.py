"""Volumes and images with their geometry, read and written without losing it.

A volume's array is indexed by voxel (i, j, k), the order nibabel gives for NIfTI; ITK
formats (NRRD, MHA/MHD, DICOM series), whose NumPy view is (k, j, i), are transposed to the
same order. `affine` maps (i, j, k, 1) to RAS+ millimetres for every format, so a label
volume written with the source's affine lands exactly on the source.

Writes go to a temporary file in the target folder and are renamed into place: an
interrupted write never leaves a partial output.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import VolumeIOError

NIFTI_SUFFIXES = (".nii", ".nii.gz")
ITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")
# ITK formats whose header names a separate data file
DETACHED_SUFFIXES = (".nhdr", ".mhd")
# What a 2D mask is written as (`write_mask`)
MASK_SUFFIXES = (".png", ".tif", ".tiff", *NIFTI_SUFFIXES)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
DICOM_SUFFIXES = (".dcm", ".dicom")
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


@dataclass
class Volume:
    """A 3D array in voxel (i, j, k) order and the affine from voxels to RAS+ mm."""

    array: np.ndarray
    affine: np.ndarray = field(default_factory=lambda: np.eye(4))
    header: object | None = None  # the NIfTI header, kept to preserve qform/sform codes

    @property
    def spacing(self) -> tuple[float, ...]:
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))


def suffix_of(path: str | os.PathLike) -> str:
    name = Path(path).name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else Path(name).suffix


def is_dicom_file(path: str | os.PathLike) -> bool:
    """A DICOM file: by its suffix, or by the "DICM" mark at byte 128 where the name says
    nothing (exports name files IM0001, or by their UIDs, whose last digits read as a
    suffix)."""
    path = Path(path)
    if not path.is_file():
        return False
    suffix = suffix_of(path)
    if suffix in DICOM_SUFFIXES:
        return True
    if suffix in NIFTI_SUFFIXES + ITK_SUFFIXES + IMAGE_SUFFIXES:
        return False
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def dicom_source(path: str | os.PathLike | None) -> Path | None:
    """What a DICOM SEG of an image read from `path` references: a folder (a series, or one
    multi-frame file) or a DICOM file; None for other formats."""
    if path is None:
        return None
    path = Path(path)
    return path if path.is_dir() or is_dicom_file(path) else None


def read_volume(path: str | os.PathLike, channel: int | None = None) -> Volume:
    """NIfTI, NRRD, MHA/MHD, a DICOM file (an enhanced multi-frame volume), or a folder
    of one DICOM series, as a `Volume`. A 4D file (several volumes on one grid: MR
    sequences, channels, time points) gives its volume `channel` (from 0); without one it
    is refused in one line saying how many it holds (`read_channels` reads them all)."""
    volume = _read_any(path)
    count = volume.array.shape[3] if volume.array.ndim == 4 else None
    if count is None:
        if channel is not None and channel != 0:
            raise VolumeIOError(f"volume {path}: --channel {channel}, but it holds one volume")
        return volume
    if channel is None:
        raise VolumeIOError(
            f"volume {path}: {count} volumes on one grid (a 4D file: sequences, channels or "
            f"time points); choose one with --channel 0..{count - 1} (in a batch manifest, its "
            "channel column)"
        )
    if not 0 <= channel < count:
        raise VolumeIOError(f"volume {path}: --channel {channel}; it holds 0..{count - 1}")
    return _channel(volume, channel)


def read_channels(path: str | os.PathLike) -> list[Volume]:
    """Every volume of a file: the one of a 3D file, or each of a 4D file's."""
    volume = _read_any(path)
    if volume.array.ndim != 4:
        return [volume]
    return [_channel(volume, c) for c in range(volume.array.shape[3])]


def _channel(volume: Volume, channel: int) -> Volume:
    return Volume(np.ascontiguousarray(volume.array[..., channel]), volume.affine, volume.header)


def _read_any(path: str | os.PathLike) -> Volume:
    path = Path(path)
    if not path.exists():
        raise VolumeIOError(f"volume {path}: file not found")
    suffix = suffix_of(path)
    if path.is_dir():
        volume = _read_dicom_series(path)
    elif suffix in NIFTI_SUFFIXES:
        volume = _read_nifti(path)
    elif suffix in ITK_SUFFIXES:
        volume = _read_itk(path)
    elif is_dicom_file(path):
        volume = _read_itk(path, dicom=True)
    else:
        raise VolumeIOError(
            f"volume {path}: unsupported format {suffix or '(none)'}; expected .nii, .nii.gz, "
            ".nrrd, .mha, .mhd, a DICOM file or a DICOM series folder"
        )
    # Intensities are real numbers: complex (k-space, phase) or RGB voxels are not a scan
    # the models can window.
    if volume.array.dtype.kind not in "biuf":
        raise VolumeIOError(
            f"volume {path}: voxels of type {volume.array.dtype}; expected real intensities"
        )
    return volume


def _read_nifti(path: Path) -> Volume:
    import nibabel as nib

    try:
        img = nib.load(str(path))
        proxy = img.dataobj
        stored = getattr(proxy, "dtype", None)
        scaled = (getattr(proxy, "slope", 1.0), getattr(proxy, "inter", 0.0)) != (1.0, 0.0)
        if scaled and stored is not None and stored.kind in "iu" and stored.itemsize <= 2:
            # 16-bit voxels with a rescale (a CT stored unsigned with an intercept of -1024)
            # come out of nibabel as float64: float32 holds them as exactly, in half the
            # memory (1.2 GB against 0.6 GB for a 512 x 512 x 600 CT).
            data = np.asarray(proxy, dtype=np.float32)
        else:
            data = np.asanyarray(proxy)
    except Exception as exc:  # noqa: BLE001 - nibabel raises many types for bad files
        raise VolumeIOError(f"volume {path}: unreadable NIfTI ({_first_line(exc)})") from None
    if data.ndim > 3:  # beyond the three spatial axes: one axis of volumes, or none
        data = data.reshape(data.shape[:3] + (-1,))
        data = data[..., 0] if data.shape[3] == 1 else data
    affine = np.asarray(img.affine, dtype=np.float64)
    # nibabel gives the affine in the file's own spatial unit. ITK (SimpleITK, 3D Slicer)
    # reads metres and microns as mm, and every distance here is in mm: a CT stored in
    # metres would otherwise have 0.003 mm slices, and a walk's steps of 3 mm a thousand
    # slices long.
    to_mm = _NIFTI_UNIT_TO_MM.get(img.header.get_xyzt_units()[0], 1.0)
    if to_mm != 1.0:
        affine[:3] *= to_mm
    return Volume(np.asarray(data), affine, img.header)


# NIfTI spatial units (xyzt_units); "unknown" is taken as mm, as ITK and dcm2niix take it.
_NIFTI_UNIT_TO_MM = {"meter": 1000.0, "mm": 1.0, "micron": 0.001, "unknown": 1.0}


def _itk_to_volume(image, source: Path) -> Volume:
    import SimpleITK as sitk

    array = sitk.GetArrayFromImage(image)
    dim = image.GetDimension()
    spatial = tuple(reversed(range(dim)))
    if image.GetNumberOfComponentsPerPixel() > 1:  # the components are channels, last
        if dim != 3:
            raise VolumeIOError(f"volume {source}: {dim}D voxels of several components")
        array = np.transpose(array, (*spatial, dim))
    else:
        array = np.transpose(array, spatial)
    spacing = np.array(image.GetSpacing())
    direction = np.array(image.GetDirection()).reshape(dim, dim)
    origin = np.array(image.GetOrigin())
    if dim == 4:  # volumes along a fourth axis (time points, sequences): channels, last
        spacing, origin, direction = spacing[:3], origin[:3], direction[:3, :3]
        array = array if array.shape[3] > 1 else array[..., 0]
    elif dim > 4:
        raise VolumeIOError(f"volume {source}: a {dim}D image; expected 2D, 3D or 4D")
    if dim == 2:
        spacing, origin = np.append(spacing, 1.0), np.append(origin, 0.0)
        direction = np.block([[direction, np.zeros((2, 1))], [np.zeros((1, 2)), np.ones((1, 1))]])
    affine = np.eye(4)
    affine[:3, :3] = LPS_TO_RAS @ direction @ np.diag(spacing)
    affine[:3, 3] = LPS_TO_RAS @ origin
    return Volume(array, affine)


def _read_itk(path: Path, dicom: bool = False) -> Volume:
    """An ITK-readable file; for a DICOM file (`dicom`), a multi-frame file's frames are
    checked against the grid ITK reads them onto."""
    import SimpleITK as sitk

    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise VolumeIOError(f"volume {path}: unreadable ({_itk_reason(exc)})") from None
    if dicom and image.GetDimension() == 3:
        problem = multiframe_problem(path, image.GetSpacing())
        if problem:
            raise VolumeIOError(
                f"volume {path}: {problem}; this tool needs frames on a regular grid: resample "
                "it first (3D Slicer, or dcm2niix)"
            )
    return _itk_to_volume(image, path)


def multiframe_problem(path: Path, itk_spacing) -> str | None:
    """Why an enhanced multi-frame DICOM file's frames are not on the grid ITK reads them
    onto, or None. ITK takes one spacing for all frames, and without a SpacingBetweenSlices
    it takes 1 mm: a converted series with a missing slice read as 1 x 1 x 1 mm voxels.
    The frames' own positions (pydicom, which DICOM SEG export brings; unchecked without
    it) are checked as a series' slices are, and their spacing against ITK's."""
    try:
        import pydicom
    except ImportError:
        return None
    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True)
    except Exception:  # noqa: BLE001 - ITK read it; pydicom's view is only a check
        return None
    frames = ds.get("PerFrameFunctionalGroupsSequence")
    if not frames or len(frames) < 2:
        return None
    shared = (ds.get("SharedFunctionalGroupsSequence") or [None])[0]

    def item(group, sequence):
        for source in (group, shared):
            if source is not None and sequence in source and len(source[sequence].value):
                return source[sequence][0]
        return None

    positions, orientations, pixel = [], [], None
    for frame in frames:
        pos, ori = item(frame, "PlanePositionSequence"), item(frame, "PlaneOrientationSequence")
        if pos is None or ori is None:
            return None  # no frame geometry to check against
        positions.append(pos.get("ImagePositionPatient"))
        orientations.append(ori.get("ImageOrientationPatient"))
        measures = item(frame, "PixelMeasuresSequence")
        if measures is not None and measures.get("PixelSpacing"):
            pixel = _numbers(measures.PixelSpacing)
    if None in positions or None in orientations or pixel is None:
        return None
    names = [f"frame {i + 1}" for i in range(len(frames))]
    return slice_geometry_problem(positions, orientations, pixel, names, "frames", itk_spacing)


@contextmanager
def _itk_quiet():
    """ITK's warnings off: they go to stderr in ITK's own multi-line format, and the
    callers here say what matters in one line."""
    import SimpleITK as sitk

    before = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(before)


def dicom_series_files(folder: Path) -> list[str]:
    """The files of the one DICOM series in `folder`, in the volume's slice (k) order."""
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    with _itk_quiet():
        series = reader.GetGDCMSeriesIDs(str(folder))
    if not series:
        # Exports from a PACS or a CD nest each series in folders of their own.
        with _itk_quiet():
            inner = _series_folders(folder)
        where = f"; these folders inside it do: {_listed(inner, folder)}" if inner else ""
        raise VolumeIOError(f"volume {folder}: folder holds no DICOM series{where}")
    if len(series) > 1:
        found = []
        for uid in series[:5]:  # a whole study in one folder: the line stays readable
            files = reader.GetGDCMSeriesFileNames(str(folder), uid)
            found.append(
                ", ".join(w for w in (_series_description(files[0]), f"{len(files)} files") if w)
            )
        if len(series) > 5:
            found.append(f"{len(series) - 5} more")
        raise VolumeIOError(
            f"volume {folder}: {len(series)} DICOM series in one folder ({'; '.join(found)}); "
            "expected one: give each series a folder of its own"
        )
    return list(reader.GetGDCMSeriesFileNames(str(folder), series[0]))


def _series_folders(root: Path, most: int = 4, depth: int = 4, visits: int = 200) -> list[Path]:
    """Up to `most` folders under `root` (at most `depth` levels down, looking into at most
    `visits` folders, hidden ones skipped: a home folder given by mistake is not searched
    through) that hold a series."""
    import SimpleITK as sitk

    found = []
    for n, (here, dirs, _) in enumerate(os.walk(root)):
        if n == visits:
            break
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        if len(Path(here).relative_to(root).parts) >= depth:
            dirs.clear()
        if Path(here) != root and sitk.ImageSeriesReader.GetGDCMSeriesIDs(here):
            found.append(Path(here))
            if len(found) == most:
                break
    return found


def _listed(paths: list[Path], root: Path, most: int = 3) -> str:
    names = [str(p.relative_to(root)) for p in paths[:most]]
    return ", ".join(names) + (" and more" if len(paths) > most else "")


def _series_description(path: str) -> str:
    """The file's modality and SeriesDescription, as "MR 'AX T1'", or "" without them."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return ""
    modality, description = (
        reader.GetMetaData(key).strip() if reader.HasMetaDataKey(key) else ""
        for key in ("0008|0060", "0008|103e")
    )
    return " ".join(w for w in (modality, repr(description) if description else "") if w)


def _read_dicom_series(folder: Path) -> Volume:
    import SimpleITK as sitk

    files = dicom_series_files(folder)
    if len(files) == 1:
        # One file: an enhanced multi-frame volume (as PACS exports put it in a folder of
        # its own) or a single slice. ITK's series reader took a multi-frame file as a 4D
        # image; read alone, its frames are the volume's slices, in the file's order.
        return _read_itk(Path(files[0]), dicom=True)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOn()
    try:
        # ITK's warning about uneven slices is said in one line by the check below.
        with _itk_quiet():
            image = reader.Execute()
    except RuntimeError as exc:
        raise VolumeIOError(f"volume {folder}: unreadable DICOM ({_itk_reason(exc)})") from None

    def tag(key):
        found = [reader.GetMetaData(i, key) if reader.HasMetaDataKey(i, key) else None
                 for i in range(len(files))]  # fmt: skip
        return None if None in found else found

    problem = slice_geometry_problem(
        tag("0020|0032"), tag("0020|0037"), image.GetSpacing()[:2], [Path(f).name for f in files]
    )
    if problem:
        raise VolumeIOError(
            f"volume {folder}: {problem}; this tool needs slices on a regular grid: resample "
            "the series first (3D Slicer's acquisition geometry regularization, or dcm2niix)"
        )
    return _itk_to_volume(image, folder)


def _numbers(value) -> list[float]:
    """A tag's numbers: from ITK's backslash-separated string, or pydicom's values."""
    return [float(v) for v in (value.split("\\") if isinstance(value, str) else value)]


def slice_geometry_problem(
    positions, orientations, pixel_spacing, names, what="slices", itk_spacing=None
) -> str | None:
    """Why a DICOM series' slices (or a multi-frame file's frames: `what`) do not lie on
    one regular grid, or on the grid of `itk_spacing` (x, y, z) where given; None if they do.

    ITK builds a series' grid from the first slice's orientation and the mean distance
    between slices, silently: a missing slice, two acquisitions in one series or a gantry
    tilt would put every mask and every exported label in the wrong place. Positions
    (ImagePositionPatient) and orientations (ImageOrientationPatient) are the tags' strings
    or pydicom's values, one per slice in order; None where a slice lacks them (nothing to
    check). `pixel_spacing` is DICOM's (rows, columns) apart.
    """
    if positions is None or orientations is None or len(positions) < 2:
        return None
    try:
        pos = np.array([_numbers(p) for p in positions])
        iop = np.array([_numbers(o) for o in orientations])
    except ValueError:  # not numbers, or not as many on every slice
        return "slice position or orientation tags are malformed"
    if pos.ndim != 2 or pos.shape[1] != 3 or iop.ndim != 2 or iop.shape[1] != 6:
        return "slice position or orientation tags are malformed"
    if np.abs(iop - iop[0]).max() > 1e-3:
        k = int(np.flatnonzero(np.abs(iop - iop[0]).max(axis=1) > 1e-3)[0])
        return f"{what} in more than one orientation ({names[0]} and {names[k]} differ)"
    normal = np.cross(iop[0, :3], iop[0, 3:])
    along = pos @ normal
    steps = np.diff(along)
    if np.abs(steps).min() < 1e-3:
        k = int(np.argmin(np.abs(steps)))
        return (
            f"two {what} at the same position ({names[k]} and {names[k + 1]}): more than one "
            "acquisition in one series?"
        )
    mean = (along[-1] - along[0]) / (len(along) - 1)
    # A slice off the regular grid by a tenth of the spacing is a misplaced mask; float
    # rounding in the tags is far below that.
    if np.abs(along - (along[0] + mean * np.arange(len(along)))).max() > 0.1 * abs(mean):
        usual = float(np.median(np.abs(steps)))
        k = int(np.argmax(np.abs(np.abs(steps) - usual)))
        return (
            f"{what} are not evenly spaced: {usual:.4g} mm apart, but {abs(steps[k]):.4g} mm "
            f"between {names[k]} and {names[k + 1]} (a missing slice?)"
        )
    drift = pos - pos[0] - np.outer(along - along[0], normal)
    # Sheared beyond half a pixel over the series: a gantry tilt (the slices' planes are not
    # perpendicular to the line through their corners).
    if np.linalg.norm(drift, axis=1).max() > 0.5 * min(pixel_spacing):
        angle = np.degrees(np.arctan2(np.linalg.norm(drift[-1]), abs(along[-1] - along[0])))
        return f"{what} sheared by {angle:.3g} degrees (gantry tilt)"
    # ITK takes one spacing for all frames of a multi-frame file, 1 mm where none is given.
    given = (pixel_spacing[1], pixel_spacing[0], abs(mean))
    if itk_spacing is not None and not np.allclose(itk_spacing, given, rtol=1e-3, atol=1e-3):
        return (
            f"ITK reads its {what} onto a grid of "
            f"{' x '.join(f'{v:.4g}' for v in itk_spacing)} mm where their positions give "
            f"{' x '.join(f'{v:.4g}' for v in given)} mm"
        )
    return None


def one_slice(volume: Volume, index: int, axis: int) -> Volume:
    """The grid of slice `index` along `axis`: shape 1 on that axis, its position in the
    affine, so a mask written with it lines up with the volume in any viewer."""
    affine = volume.affine.copy()
    affine[:3, 3] += affine[:3, axis] * index
    shape = list(volume.array.shape)
    shape[axis] = 1
    header = volume.header.copy() if volume.header is not None else None
    return Volume(np.zeros(shape, np.uint8), affine, header)


def onto_grid(array: np.ndarray, affine: np.ndarray, reference: Volume, what: str) -> np.ndarray:
    """`array` (voxel order, on `affine`'s grid) placed on `reference`'s voxel grid.

    The grids must share voxel size and axes up to order and direction, with a whole-voxel
    offset (true of a segmentation made on the reference, e.g. a DICOM SEG that omits empty
    frames or a cropped `.seg.nrrd`); anything else needs resampling and is refused. On the
    reference's own grid the result is a view of `array`.
    """
    shape = reference.array.shape[:3]
    step = np.linalg.solve(reference.affine, affine)
    rot, shift = step[:3, :3], step[:3, 3]
    # Along an axis one voxel deep there is no spacing to match: a SEG holding one frame
    # has only the Spacing Between Slices its source recorded, which may be untrue.
    for axis in [a for a in range(3) if np.shape(array)[a] == 1]:
        rot[:, axis] /= np.linalg.norm(rot[:, axis])
    targets = np.argmax(np.abs(rot), axis=0)  # reference axis of each of our axes
    signs = np.sign(rot[targets, range(3)])
    expected = np.zeros((3, 3))
    expected[targets, range(3)] = signs
    finer = _finer_axis(rot, expected, np.shape(array))
    if finer is not None and sorted(targets) == [0, 1, 2]:
        array, affine = _labelled_planes(np.asarray(array), affine, finer, rot, what)
        return onto_grid(array, affine, reference, what)
    if (
        sorted(targets) != [0, 1, 2]
        or not np.allclose(rot, expected, atol=1e-3)
        or not np.allclose(shift, np.round(shift), atol=1e-2)
    ):
        raise VolumeIOError(
            f"{what}: not on the image's voxel grid (other spacing, orientation or a "
            "sub-voxel shift); resample it onto the image first"
        )
    src = np.asarray(array)
    start = np.zeros(3, int)
    for axis in range(3):
        ref_axis = targets[axis]
        first = int(round(shift[ref_axis]))
        if signs[axis] < 0:
            src = np.flip(src, axis)
            first -= src.shape[axis] - 1
        start[ref_axis] = first
    src = np.transpose(src, np.argsort(targets))
    if not start.any() and src.shape == tuple(shape):  # the same grid: a view, no copy
        return src
    out = np.zeros(shape, src.dtype)
    lo = np.maximum(start, 0)
    hi = np.minimum(start + np.array(src.shape), shape)
    if np.any(hi <= lo):
        outside = bool(np.any(src))
    else:
        window = tuple(slice(a - s, b - s) for a, b, s in zip(lo, hi, start))
        out[tuple(slice(a, b) for a, b in zip(lo, hi))] = src[window]
        # What lies outside a box is the slabs before and after it along each axis (a mask
        # of the whole array took a second on a 300-slice volume).
        outside = False
        for axis, part in enumerate(window):
            for cut in (slice(0, part.start), slice(part.stop, None)):
                slab = src[(slice(None),) * axis + (cut,)]
                outside = outside or bool(slab.size and np.any(slab))
    if outside:
        raise VolumeIOError(f"{what}: labelled voxels lie outside the image")
    return out


def _finer_axis(rot: np.ndarray, expected: np.ndarray, shape) -> int | None:
    """The one axis along which a grid's voxels are thinner than the reference's (the
    others matching it), or None."""
    norms = np.linalg.norm(rot, axis=0)
    unit = rot / np.where(norms > 0, norms, 1.0)
    if not np.allclose(unit, expected, atol=1e-3):
        return None
    thinner = [a for a in range(3) if norms[a] < 1 - 1e-3 and shape[a] > 1]
    others = [a for a in range(3) if a not in thinner]
    if len(thinner) != 1 or not np.allclose(norms[others], 1.0, atol=1e-3):
        return None
    return thinner[0]


def _labelled_planes(array: np.ndarray, affine: np.ndarray, axis: int, rot, what: str):
    """A grid thinner than the reference along `axis` whose labelled slices each lie on a
    reference slice, as the same slices on a grid of the reference's spacing. A DICOM SEG's
    frames are planes at their own positions, but its grid's spacing is the Spacing Between
    Slices it records, which writers copy from the source's headers (highdicom does), where
    it can be untrue: 1 mm on a series of 2 mm slices put two frames 2 mm apart on a 1 mm
    grid with an empty slice between. Labels on slices between the reference's need
    resampling and are refused."""
    others = tuple(a for a in range(3) if a != axis)
    labelled = np.flatnonzero(np.any(array, axis=others))
    if labelled.size == 0:
        labelled = np.array([0])
    ratio = float(np.linalg.norm(rot[:, axis]))  # our spacing in the reference's slices
    at = (labelled - labelled[0]) * ratio
    if not np.allclose(at, np.round(at), atol=1e-2):
        raise VolumeIOError(
            f"{what}: not on the image's voxel grid (labelled slices between the image's "
            "slices); resample it onto the image first"
        )
    shape = list(array.shape)
    shape[axis] = int(round(at[-1])) + 1
    planes = np.zeros(shape, array.dtype)
    for k, m in zip(labelled, np.round(at).astype(int)):
        planes[(slice(None),) * axis + (m,)] = np.take(array, k, axis=axis)
    moved = np.asarray(affine, float).copy()
    moved[:3, 3] += moved[:3, axis] * labelled[0]
    moved[:3, axis] /= ratio
    return planes, moved


def write_volume(path: str | os.PathLike, array: np.ndarray, like: Volume) -> Path:
    """Write `array` (voxel order, same shape as `like`) with `like`'s geometry, atomically."""
    path = Path(path)
    if array.shape != like.array.shape:
        raise VolumeIOError(
            f"labels of shape {array.shape} do not match the volume's {like.array.shape}"
        )
    suffix = suffix_of(path)
    if suffix not in NIFTI_SUFFIXES + ITK_SUFFIXES:
        raise VolumeIOError(
            f"output {path}: unsupported format {suffix or '(none)'}; expected .nii.gz, .nii, "
            ".nrrd, .mha, .nhdr or .mhd"
        )
    if suffix in NIFTI_SUFFIXES:
        import nibabel as nib

        header = like.header.copy() if like.header is not None else None
        img = nib.Nifti1Image(array, like.affine, header)
        img.set_data_dtype(array.dtype)
        if header is not None:
            # Keep the source's codes; scaling would turn labels into floats.
            img.header.set_slope_inter(1, 0)
        # The affine is in mm (a source in metres or microns was read as mm).
        time_unit = header.get_xyzt_units()[1] if header is not None else "unknown"
        img.header.set_xyzt_units("mm", time_unit)
        return atomic_write(path, lambda tmp: nib.save(img, tmp))
    if suffix in DETACHED_SUFFIXES:
        return _write_detached(path, lambda tmp: _write_itk(tmp, array, like.affine))
    return atomic_write(path, lambda tmp: _write_itk(tmp, array, like.affine))


def _write_detached(path: Path, write) -> Path:
    """`atomic_write` for a header that names its data file (.mhd, .nhdr): both are written
    under their final names in a temporary folder beside `path`, then the data file is moved
    into place and the header last, so the header never names a file that is not there.
    Written through `atomic_write`, the header named the hidden temporary data file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(dir=path.parent, prefix=".tmp-"))
    try:
        header = folder / path.name
        write(str(header))
        for part in folder.iterdir():
            if part != header:
                os.replace(part, path.parent / part.name)
        os.replace(header, path)
    except (OSError, RuntimeError) as exc:
        raise VolumeIOError(f"output {path}: could not write ({_first_line(exc)})") from None
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return path


def _write_itk(path: str, array: np.ndarray, affine: np.ndarray) -> None:
    import SimpleITK as sitk

    dim = array.ndim
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(array)))
    lin = LPS_TO_RAS @ affine[:3, :3]  # RAS->LPS is its own inverse
    spacing = np.linalg.norm(lin, axis=0)
    direction = lin / spacing
    origin = LPS_TO_RAS @ affine[:3, 3]
    image.SetSpacing([float(s) for s in spacing[:dim]])
    image.SetOrigin([float(o) for o in origin[:dim]])
    image.SetDirection([float(d) for d in direction[:dim, :dim].ravel()])
    sitk.WriteImage(image, path, useCompression=True)


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def publish_mode(fd: int) -> None:
    """Give a mkstemp file (0600) the mode a plain open() would have: 0666 less the umask."""
    os.fchmod(fd, 0o666 & ~current_umask())


def atomic_write(path: Path, write) -> Path:
    """Run write(tmp) on a temporary file next to `path`, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = suffix_of(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=suffix)
    publish_mode(fd)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, (OSError, RuntimeError)):
            raise VolumeIOError(f"output {path}: could not write ({_first_line(exc)})") from None
        raise
    return path


def weights_output(path: str | os.PathLike, source: str | os.PathLike) -> Path:
    """Where to write model weights (a fine-tune): a .pth or .pt file that is not `source`,
    the file (or registry name) the weights come from. Checked before any work starts."""
    out = Path(path).expanduser()
    if out.suffix.lower() not in (".pth", ".pt"):
        raise VolumeIOError(f"{out.name}: model weights are saved as .pth")
    if out.resolve() == Path(source).expanduser().resolve():
        raise VolumeIOError(f"{out.name} holds the weights being fine-tuned: save to another file")
    if out.is_dir():
        raise VolumeIOError(f"{out}: a folder; give a file name ending in .pth")
    return out


def read_image(path: str | os.PathLike) -> np.ndarray:
    """A 2D image (PNG, JPEG, TIFF, BMP, single DICOM in grey levels or colour, or 2D NIfTI)
    as (H, W) or (H, W, 3)."""
    path = Path(path)
    if not path.exists():
        raise VolumeIOError(f"image {path}: file not found")
    if path.is_dir():
        raise VolumeIOError(
            f"image {path}: a folder, not one 2D image; for a DICOM series give --slice N to "
            "segment one of its slices"
        )
    suffix = suffix_of(path)
    if suffix in (".tif", ".tiff"):
        import tifffile

        try:
            with tifffile.TiffFile(str(path)) as tif:
                array, axes = tif.asarray(), tif.series[0].axes
        except Exception as exc:  # noqa: BLE001
            raise VolumeIOError(f"image {path}: unreadable TIFF ({_first_line(exc)})") from None
        if axes.startswith("S") and array.ndim == 3:
            array = np.moveaxis(array, 0, -1)  # colour stored plane by plane (planar RGB)
    elif suffix in IMAGE_SUFFIXES:
        import imageio.v3 as iio

        try:
            array = iio.imread(str(path))
        except Exception as exc:  # noqa: BLE001
            raise VolumeIOError(f"image {path}: unreadable ({_first_line(exc)})") from None
    elif (as_volume := suffix in NIFTI_SUFFIXES + ITK_SUFFIXES) or is_dicom_file(path):
        found = read_volume(path) if as_volume else read_dicom_file(path)
        if isinstance(found, np.ndarray):  # colour, (H, W, 3) already
            array = found
        else:
            array = np.squeeze(found.array)
            if array.ndim == 2:
                array = array.T  # voxel (i, j) -> rows j, columns i, as the file shows it
    else:
        raise VolumeIOError(
            f"image {path}: unsupported format {suffix or '(none)'}; expected PNG, JPEG, TIFF, "
            "DICOM or NIfTI"
        )
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[-1] == 4:
        array = array[..., :3]  # RGBA: the alpha says nothing about the scan
    elif array.ndim == 3 and array.shape[-1] in (1, 2):
        array = array[..., 0]  # grey levels, alone or with an alpha channel
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] != 3):
        if suffix in NIFTI_SUFFIXES + ITK_SUFFIXES:
            raise VolumeIOError(
                f"image {path}: a volume of shape {array.shape}, not one 2D image; give "
                "--slice N (and --axis) to segment one of its slices"
            )
        raise VolumeIOError(
            f"image {path}: shape {array.shape} is a stack of images, not one 2D image; for "
            "a volume, save it as NIfTI, NRRD or MHA and give --slice"
        )
    return array


def read_dicom_file(path: str | os.PathLike) -> Volume | np.ndarray:
    """A single DICOM file: grey levels as a `Volume` (a single image squeezed to 2D, with
    its pixel spacing), colour (ultrasound, endoscopy) as an (H, W, 3) RGB array."""
    path = Path(path)
    if not path.exists():
        raise VolumeIOError(f"image {path}: file not found")
    if _dicom_components(path) != 1:
        return _read_colour_dicom(path)
    volume = read_volume(path)
    if volume.array.ndim == 3 and volume.array.shape[2] == 1:
        return Volume(volume.array[:, :, 0], volume.affine, volume.header)
    return volume


def _dicom_components(path: Path) -> int:
    """Samples per pixel of a DICOM file, from its header alone."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise VolumeIOError(f"image {path}: unreadable ({_itk_reason(exc)})") from None
    return reader.GetNumberOfComponents()


def _read_colour_dicom(path: Path) -> np.ndarray:
    """A colour DICOM image (ultrasound, endoscopy, dermoscopy, photographs) as (H, W, 3)
    RGB; GDCM converts YBR encodings (JPEG-compressed ultrasound) to RGB on the way."""
    import SimpleITK as sitk

    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise VolumeIOError(f"image {path}: unreadable ({_itk_reason(exc)})") from None
    components = image.GetNumberOfComponentsPerPixel()
    if components != 3:
        raise VolumeIOError(
            f"image {path}: {components} samples per pixel; expected grey levels or RGB"
        )
    frames = image.GetSize()[2] if image.GetDimension() == 3 else 1
    if frames != 1:
        raise VolumeIOError(
            f"image {path}: a colour DICOM with {frames} frames (a cine loop?); segment reads "
            "one image: export the frame you want (e.g. as PNG) first"
        )
    return sitk.GetArrayFromImage(image).reshape(image.GetHeight(), image.GetWidth(), 3)


def write_mask(path: str | os.PathLike, mask: np.ndarray) -> Path:
    """A 2D mask as PNG (0/255), TIFF (0/1) or NIfTI (0/1), atomically."""
    path = Path(path)
    suffix = suffix_of(path)
    mask = np.asarray(mask).astype(np.uint8)
    if suffix == ".png":
        import imageio.v3 as iio

        return atomic_write(path, lambda tmp: iio.imwrite(tmp, mask * 255, extension=".png"))
    if suffix in (".tif", ".tiff"):
        import tifffile

        return atomic_write(path, lambda tmp: tifffile.imwrite(tmp, mask))
    if suffix in NIFTI_SUFFIXES:
        return write_volume(path, mask.T[:, :, None], Volume(mask.T[:, :, None]))
    raise VolumeIOError(
        f"output {path}: unsupported mask format {suffix or '(none)'}; expected "
        f"{', '.join(MASK_SUFFIXES)}"
    )


def _itk_reason(exc: Exception) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for line in reversed(lines):
        if "Description" in line or "Could not" in line or "Unable" in line:
            return line.split("Description:")[-1].strip()[:160]
    return lines[-1][:160] if lines else type(exc).__name__


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:160] if text else type(exc).__name__
