"""DICOM Segmentation objects (SEG), written and read with highdicom.

A SEG written here references the DICOM series it was made on: same study, patient and
Frame of Reference, one frame per labelled source slice pointing at that slice's SOP
Instance UID (or, for one enhanced multi-frame source, at its frame number), with the
slice's own position and orientation, so PACS, OHIF and 3D Slicer
place it exactly, whatever the slice direction. Each non-empty object becomes one segment
with its name, display colour and SNOMED CT category/type (see `segments.py`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import NothingToWrite, SourceWarning, VolumeIOError
from .segments import Segment, default_segment

RAS_LPS_4 = np.diag([-1.0, -1.0, 1.0, 1.0])


def _need_highdicom():
    try:
        import highdicom
    except ImportError:
        raise VolumeIOError("DICOM SEG needs highdicom: pip install 'sammed2d[dicom]'") from None
    return highdicom


def write_dicom_seg(
    path: str,
    labels: np.ndarray,
    segments: list[Segment],
    source: Path,
    algorithm: str = "SAM-Med2D suite",
) -> None:
    """Write `labels` (voxel i, j, k of the source as `read_volume` gives it) as a binary
    SEG referencing `source`, to `path` (plain file; the caller makes it atomic). `source`
    is a series folder (one file per slice) or one enhanced multi-frame file (or a folder
    holding only that file), whose frames are the slices in the file's order, as ITK reads
    them. Empty segments are skipped; segment numbers run 1..N in label-value order."""
    hd = _need_highdicom()
    from pydicom.sr.codedict import codes

    from . import __version__

    source = Path(source)
    sources = source_datasets(source)
    frames = [int(getattr(ds, "NumberOfFrames", 1) or 1) for ds in sources]
    if len(sources) > 1 and max(frames) > 1:
        raise VolumeIOError(
            f"DICOM series {source}: {len(sources)} files of which some hold several frames; "
            "a SEG references one multi-frame file or single-frame slices"
        )
    depth = frames[0] if len(sources) == 1 else len(sources)
    present = labelled_segments(labels, segments, sources, depth, source)
    if len(sources) > 1:
        # highdicom copies a series' Spacing Between Slices into the SEG, where readers take
        # it for the frames' spacing; series whose tag disagrees with their slices'
        # positions exist (it read 1 where the slices lay 2 mm apart, and the SEG read back
        # on a 1 mm grid). Without it the spacing comes from the positions, as the series
        # is read here.
        for ds in sources:
            if "SpacingBetweenSlices" in ds:
                del ds.SpacingBetweenSlices
    by_frame = np.transpose(labels, (2, 1, 0))  # (slice, row, column), as the source frames
    numbered = np.zeros(by_frame.shape, np.uint8 if len(present) < 256 else np.uint16)
    descriptions = []
    for number, seg in enumerate(present, start=1):
        numbered[by_frame == seg.id] = number
        (cat_code, cat_meaning), (type_code, type_meaning) = seg.code
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=seg.name[:64],
                segmented_property_category=hd.sr.CodedConcept(cat_code, "SCT", cat_meaning),
                segmented_property_type=hd.sr.CodedConcept(type_code, "SCT", type_meaning),
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC,
                algorithm_identification=hd.AlgorithmIdentificationSequence(
                    name=algorithm[:64],
                    family=codes.cid7162.ArtificialIntelligence,
                    version=__version__,
                ),
                display_color=hd.color.CIELabColor.from_rgb(*seg.color),
            )
        )
    try:
        seg_ds = hd.seg.Segmentation(
            source_images=sources,
            pixel_array=numbered,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions,
            series_instance_uid=hd.UID(),
            series_number=int(getattr(sources[0], "SeriesNumber", 0) or 0) + 1000,
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer="SAM-Med2D suite",
            manufacturer_model_name=algorithm[:64],
            software_versions=__version__,
            device_serial_number="none",
            content_description="Promptable segmentation",
            series_description="Segmentation",
        )
    except (ValueError, TypeError, AttributeError) as exc:
        raise VolumeIOError(f"DICOM SEG for {source}: {exc}") from None
    seg_ds.save_as(path)


def source_datasets(source: Path, pixels: bool = True) -> list:
    """The datasets of a DICOM source (a series folder's files in slice order, or one
    file), with the identifiers a SEG or an RT Structure Set references completed."""
    import pydicom

    from .io import dicom_series_files

    files = dicom_series_files(source) if source.is_dir() else [str(source)]
    try:
        sources = [pydicom.dcmread(f, stop_before_pixels=not pixels) for f in files]
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for bad files
        raise VolumeIOError(f"DICOM source {source}: unreadable ({exc})") from None
    for ds in sources:
        _complete_identity(ds)
    return sources


def labelled_segments(labels, segments, sources, depth: int, source: Path) -> list[Segment]:
    """The segments with voxels in `labels`, which must be on the grid of `sources` (`depth`
    slices); NothingToWrite where every one is empty."""
    rows, cols = int(sources[0].Rows), int(sources[0].Columns)
    if labels.shape != (cols, rows, depth):
        raise VolumeIOError(
            f"labels of shape {labels.shape} do not match the DICOM source {source} "
            f"({cols} x {rows} x {depth} voxels)"
        )
    present = [s for s in segments if np.any(labels == s.id)]
    if not present:
        raise NothingToWrite("nothing to write: every segment is empty")
    return present


def _complete_identity(ds) -> None:
    """Fill identifiers that de-identification tools blank in the dataset but that the SEG
    must reference. The instance's own class and UID are taken from its file meta header
    (the same instance, recorded twice); a blank study or series UID cannot be recovered,
    so one is derived from the Frame of Reference (the same for every SEG made on this
    series) and the user is told."""
    import pydicom

    meta = getattr(ds, "file_meta", None)
    if not ds.get("SOPClassUID") and meta is not None:
        ds.SOPClassUID = meta.get("MediaStorageSOPClassUID", "")
    if not ds.get("SOPInstanceUID") and meta is not None:
        ds.SOPInstanceUID = meta.get("MediaStorageSOPInstanceUID", "")
    if not ds.get("SOPClassUID") or not ds.get("SOPInstanceUID"):
        raise VolumeIOError(
            "a source image has no SOP Class/Instance UID, neither in its dataset nor in its "
            "file meta header: a SEG or RT Structure Set cannot reference it"
        )
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID"):
        if not ds.get(keyword):
            anchor = str(ds.get("FrameOfReferenceUID") or ds.get("StudyDate") or "")
            setattr(ds, keyword, pydicom.uid.generate_uid(entropy_srcs=[anchor, keyword]))
            _warn_once(
                f"the source series has no {keyword}; the output carries one derived from its "
                "Frame of Reference, so a PACS will not file it with the original study"
            )


def _warn_once(text: str) -> None:
    import warnings

    warnings.warn(text, SourceWarning, stacklevel=3)


def read_dicom_seg(path: Path) -> tuple[np.ndarray, np.ndarray, list[Segment]]:
    """(labels in voxel order, voxel -> RAS affine, segments) from a SEG file. The grid
    spans the SEG's frames; put it on the source's grid with `io.onto_grid`."""
    hd = _need_highdicom()
    try:
        seg = hd.seg.segread(str(path))
    except Exception as exc:  # noqa: BLE001
        raise VolumeIOError(f"{path}: not a readable DICOM Segmentation ({exc})") from None
    try:
        volume = seg.get_volume(combine_segments=True, relabel=False, dtype=np.uint16)
    except Exception as exc:  # noqa: BLE001 - highdicom raises on irregular frame layouts
        raise VolumeIOError(f"{path}: frames do not form a regular volume ({exc})") from None
    labels = np.transpose(volume.array, (2, 1, 0))  # (slice, row, column) -> (i, j, k)
    affine = RAS_LPS_4 @ np.asarray(volume.affine)[:, [2, 1, 0, 3]]
    # Slices in the order a series reader gives the source (along row x column direction),
    # so the SEG's grid has the source's axes, not only its voxels.
    if np.dot(np.cross(affine[:3, 0], affine[:3, 1]), affine[:3, 2]) < 0:
        labels = labels[:, :, ::-1]
        affine = affine.copy()
        affine[:3, 3] += affine[:3, 2] * (labels.shape[2] - 1)
        affine[:3, 2] *= -1
    segments = []
    for number in seg.segment_numbers:
        desc = seg.get_segment_description(number)
        base = default_segment(number, str(desc.segment_label) or None)
        lab = desc.get("RecommendedDisplayCIELabValue")
        rgb = (
            tuple(int(v) for v in hd.color.CIELabColor.from_dicom_value(lab).to_rgb(clip=True))
            if lab is not None
            else base.color
        )
        segments.append(Segment(number, base.name, rgb))  # type: ignore[arg-type]
    return labels, affine, segments


def dicom_modality(path: Path) -> str | None:
    """A DICOM file's Modality (the header only); None where it has none or is no DICOM."""
    try:
        import pydicom

        ds = pydicom.dcmread(str(path), stop_before_pixels=True, specific_tags=["Modality"])
    except Exception:  # noqa: BLE001
        return None
    return getattr(ds, "Modality", None)
