"""DICOM RT Structure Sets (RTSTRUCT), written and read with pydicom.

Radiotherapy planning systems (and many PACS viewers) take structures as RTSTRUCT, not as
SEG. An RTSTRUCT written here references the DICOM series it was made on, as the SEG does:
same patient, study and Frame of Reference, and each contour points at the SOP Instance of
the slice it lies on. A segment becomes one ROI with its name and display colour; each
labelled slice gives one closed planar contour per boundary of the mask, in mm in the
patient's coordinates, computed from that slice's own Image Position, Image Orientation and
Pixel Spacing, so any slice direction is placed exactly.

The contours run through the midpoints between pixel centres on the mask's boundary (the
0.5 level of the mask), so a pixel is inside exactly when its centre is. A hole (a vessel
inside an organ) is a contour of its own inside the outer one: planning systems read
nested contours on one slice by the even-odd rule, as rt-utils and 3D Slicer's SlicerRT do.

Read (`read_rtstruct`), contours from any writer are filled onto the grid of the image they
were drawn on, through its affine: the series itself or any other file of that scan.
"""

from __future__ import annotations

import datetime
from pathlib import Path

import numpy as np

from .errors import VolumeIOError
from .segments import Segment

RTSTRUCT_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"
# A study is referenced in the Structure Set by this (retired, still required) SOP class.
STUDY_CLASS = "1.2.840.10008.3.1.2.3.1"
_PATIENT_AND_STUDY = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)


def slice_contours(mask: np.ndarray) -> list[np.ndarray]:
    """The boundaries of a 2D mask as closed polygons of (row, column) points, pixel
    centres at integers, without repeated or collinear points: outer boundaries and holes
    alike (even-odd)."""
    from skimage.measure import find_contours

    padded = np.pad(np.asarray(mask, bool), 1).astype(np.float32)
    out = []
    for contour in find_contours(padded, 0.5):
        points = contour[:-1] - 1.0  # closed: the last point repeats the first
        step = np.diff(np.vstack([points[-1:], points]), axis=0)
        turn = step[:, 0] * np.roll(step[:, 1], -1) - step[:, 1] * np.roll(step[:, 0], -1)
        points = points[np.abs(turn) > 1e-9]
        if len(points) >= 3:
            out.append(points)
    return out


def write_rtstruct(
    path: str,
    labels: np.ndarray,
    segments: list[Segment],
    source: Path,
    algorithm: str = "SAM-Med2D suite",
) -> None:
    """Write `labels` (voxel i, j, k of the source series as `read_volume` gives it) as an
    RT Structure Set referencing the series in folder `source`, to `path` (plain file; the
    caller makes it atomic). Empty segments are skipped; ROI numbers run 1..N in
    label-value order."""
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    from . import __version__
    from .dicom_seg import labelled_segments, source_datasets

    source = Path(source)
    if not source.is_dir():
        raise VolumeIOError(
            f"DICOM source {source}: an RT Structure Set references a series of single-frame "
            "slices (a folder); write a DICOM SEG (.dcm) for a multi-frame file"
        )
    sources = source_datasets(source, pixels=False)
    present = labelled_segments(labels, segments, sources, len(sources), source)
    first = sources[0]
    frame_of_reference = first.get("FrameOfReferenceUID")
    if not frame_of_reference:
        raise VolumeIOError(
            f"DICOM source {source}: no Frame of Reference UID, which an RT Structure Set "
            "must reference"
        )

    def image_ref(ds):
        item = Dataset()
        item.ReferencedSOPClassUID = ds.SOPClassUID
        item.ReferencedSOPInstanceUID = ds.SOPInstanceUID
        return item

    now = datetime.datetime.now()
    out = Dataset()
    out.file_meta = FileMetaDataset()
    out.file_meta.MediaStorageSOPClassUID = RTSTRUCT_CLASS
    out.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    out.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    out.SpecificCharacterSet = "ISO_IR 192"  # UTF-8: structure names in any language
    out.SOPClassUID = RTSTRUCT_CLASS
    out.SOPInstanceUID = out.file_meta.MediaStorageSOPInstanceUID
    for keyword in _PATIENT_AND_STUDY:
        setattr(out, keyword, first.get(keyword, ""))
    out.FrameOfReferenceUID = frame_of_reference
    out.PositionReferenceIndicator = first.get("PositionReferenceIndicator", "")
    out.Modality = "RTSTRUCT"
    out.SeriesInstanceUID = generate_uid()
    out.SeriesNumber = int(first.get("SeriesNumber", 0) or 0) + 1000
    out.SeriesDescription = "Structures"
    out.OperatorsName = ""
    out.Manufacturer = "SAM-Med2D suite"
    out.ManufacturerModelName = algorithm[:64]
    out.SoftwareVersions = __version__
    out.InstanceNumber = 1
    out.StructureSetLabel = "SAM-Med2D"
    out.StructureSetDate = now.strftime("%Y%m%d")
    out.StructureSetTime = now.strftime("%H%M%S")

    series = Dataset()
    series.SeriesInstanceUID = first.SeriesInstanceUID
    series.ContourImageSequence = Sequence([image_ref(ds) for ds in sources])
    study = Dataset()
    study.ReferencedSOPClassUID = STUDY_CLASS
    study.ReferencedSOPInstanceUID = first.StudyInstanceUID
    study.RTReferencedSeriesSequence = Sequence([series])
    frame = Dataset()
    frame.FrameOfReferenceUID = frame_of_reference
    frame.RTReferencedStudySequence = Sequence([study])
    out.ReferencedFrameOfReferenceSequence = Sequence([frame])

    by_slice = np.transpose(labels, (2, 1, 0))  # (slice, row, column), as the source files
    rois, contours, observations = [], [], []
    for number, seg in enumerate(present, start=1):
        roi = Dataset()
        roi.ROINumber = number
        roi.ReferencedFrameOfReferenceUID = frame_of_reference
        roi.ROIName = seg.name[:64]
        roi.ROIGenerationAlgorithm = "SEMIAUTOMATIC"
        roi.ROIGenerationDescription = algorithm[:64]
        rois.append(roi)
        items = []
        for k, ds in enumerate(sources):
            plane = by_slice[k] == seg.id
            if not plane.any():
                continue
            position = np.asarray(ds.ImagePositionPatient, float)
            orientation = np.asarray(ds.ImageOrientationPatient, float)
            row_spacing, col_spacing = (float(v) for v in ds.PixelSpacing)
            # DICOM's image plane: the column index runs along the first cosine, the row
            # index along the second (PS3.3 C.7.6.2.1.1).
            along_col = orientation[:3] * col_spacing
            along_row = orientation[3:] * row_spacing
            for points in slice_contours(plane):
                xyz = position + points[:, 1:2] * along_col + points[:, 0:1] * along_row
                item = Dataset()
                item.ContourImageSequence = Sequence([image_ref(ds)])
                item.ContourGeometricType = "CLOSED_PLANAR"
                item.NumberOfContourPoints = len(xyz)
                item.ContourData = [f"{v:.4f}" for v in xyz.ravel()]
                items.append(item)
        contour = Dataset()
        contour.ROIDisplayColor = list(seg.color)
        contour.ReferencedROINumber = number
        contour.ContourSequence = Sequence(items)
        contours.append(contour)
        observation = Dataset()
        observation.ObservationNumber = number
        observation.ReferencedROINumber = number
        observation.RTROIInterpretedType = ""
        observation.ROIInterpreter = ""
        observations.append(observation)
    out.StructureSetROISequence = Sequence(rois)
    out.ROIContourSequence = Sequence(contours)
    out.RTROIObservationsSequence = Sequence(observations)
    pydicom.dcmwrite(path, out, enforce_file_format=True)


def is_rtstruct_path(path: str | Path) -> bool:
    """An output named `x.rtstruct.dcm` is written as an RT Structure Set (`x.dcm`: SEG)."""
    return Path(path).name.lower().endswith(".rtstruct.dcm")


# A contour counts as on a slice when its points are within this share of the slice
# spacing of the slice's plane (coordinates are written to 0.1 µm-1 mm precision).
ON_SLICE = 0.1


def read_rtstruct(path: Path, shape: tuple[int, int, int], affine: np.ndarray):
    """(labels on the grid of `shape` and `affine` (voxel -> RAS), segments) from an RT
    Structure Set whose contours were drawn on that image (any file of the same scan: the
    DICOM series, or a NIfTI of it). Each closed planar contour is filled on the slice it
    lies on, pixels whose centre is inside, nested contours by the even-odd rule. Where
    ROIs overlap (an External contour round the organs) the smaller ROI keeps the voxels,
    and a warning says how many; ROIs without contours are left out."""
    import warnings

    import pydicom
    from skimage.draw import polygon2mask

    from .errors import SourceWarning
    from .segments import default_segment

    try:
        ds = pydicom.dcmread(str(path))
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for bad files
        raise VolumeIOError(f"labels {path}: unreadable ({exc})") from None
    names = {int(r.ROINumber): str(r.ROIName) for r in ds.get("StructureSetROISequence", [])}
    to_voxel = np.linalg.inv(affine)
    # Per ROI only the slices it has contours on: a planning CT's fifty ROIs as whole
    # volumes would take gigabytes.
    planes: dict[int, dict[tuple[int, int], np.ndarray]] = {}
    for roi in ds.get("ROIContourSequence", []):
        number = int(roi.ReferencedROINumber)
        mine = planes.setdefault(number, {})
        for item in roi.get("ContourSequence", []):
            if item.get("ContourGeometricType") != "CLOSED_PLANAR":
                continue  # points and open lines mark, they enclose nothing
            lps = np.asarray(item.ContourData, float).reshape(-1, 3)
            ras = lps * [-1.0, -1.0, 1.0]
            ijk = (to_voxel[:3, :3] @ ras.T).T + to_voxel[:3, 3]
            axis = int(np.argmin(np.ptp(ijk, axis=0)))
            level = float(ijk[:, axis].mean())
            index = round(level)
            name = names.get(number, f"ROI {number}")
            if np.abs(ijk[:, axis] - index).max() > ON_SLICE or not 0 <= index < shape[axis]:
                raise VolumeIOError(
                    f"labels {path}: a contour of {name} is not on a slice of the image "
                    f"(voxel {level:.2f} along axis {axis}): give the image it was drawn on"
                )
            plane = [a for a in range(3) if a != axis]
            fill = polygon2mask((shape[plane[0]], shape[plane[1]]), ijk[:, plane])
            key = (axis, index)
            mine[key] = mine[key] ^ fill if key in mine else fill
    sizes = {n: sum(int(p.sum()) for p in mine.values()) for n, mine in planes.items()}
    sizes = {n: size for n, size in sizes.items() if size}
    if not sizes:
        raise VolumeIOError(f"labels {path}: no ROI has a closed contour")
    labels = np.zeros(shape, np.uint8 if max(sizes) < 256 else np.uint16)
    overlap = 0
    for number in sorted(sizes, key=lambda n: -sizes[n]):  # the smaller on top
        for (axis, index), fill in planes[number].items():
            view = labels[(slice(None),) * axis + (index,)]  # a view: writes reach `labels`
            overlap += int((view[fill] > 0).sum())
            view[fill] = number
    if overlap:
        warnings.warn(
            f"{path}: {overlap} voxels lie in more than one ROI; each went to the smallest",
            SourceWarning,
            stacklevel=2,
        )
    colors = {
        int(r.ReferencedROINumber): tuple(int(v) for v in r.ROIDisplayColor)
        for r in ds.get("ROIContourSequence", [])
        if "ROIDisplayColor" in r and len(r.ROIDisplayColor) == 3
    }
    segments = []
    for number in sorted(sizes):
        base = default_segment(number, names.get(number) or None)
        segments.append(Segment(number, base.name, colors.get(number, base.color)))
    return labels, segments
