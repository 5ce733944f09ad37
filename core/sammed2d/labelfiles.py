"""Label volumes with their segments (names, colours, codes), in every format we support.

| suffix                      | what is written                                           |
|-----------------------------|-----------------------------------------------------------|
| .dcm                        | DICOM SEG referencing the source DICOM series             |
| .seg.nrrd                   | 3D Slicer segmentation (names, colours, extents in header) |
| .nii.gz .nii .nrrd .mha     | label volume + sidecar `x.json` {id: {name, color}}        |

Reading takes the same formats (and `labels.json` beside a label file, the older layout)
and, given the image, returns the labels on the image's voxel grid.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .errors import VolumeIOError
from .io import (
    Volume,
    atomic_write,
    dicom_source,
    is_dicom_file,
    onto_grid,
    read_volume,
    suffix_of,
    write_volume,
)
from .segments import (
    Segment,
    default_segment,
    read_sidecar,
    segments_for,
    segments_from_json,
    segments_to_json,
    sidecar_path,
)

LABEL_SUFFIXES = (".dcm", ".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".mha")


def is_seg_nrrd(path) -> bool:
    return Path(path).name.lower().endswith(".seg.nrrd")


def label_values(array: np.ndarray) -> np.ndarray:
    """The distinct values of `array`, sorted. Taken in memory order: np.unique flattens in C
    order, which for a NIfTI's Fortran-ordered array (or a transposed view) is a strided
    copy, 3.5x slower on a 300-slice volume."""
    return np.unique(np.asarray(array).ravel(order="K"))


def read_labels(
    path: str | os.PathLike, reference: Volume | None = None
) -> tuple[Volume, list[Segment]]:
    """A label volume and its segments. With `reference`, the labels are put on its grid
    (a SEG or `.seg.nrrd` may cover only part of it); the result then has its affine."""
    from .dicom_seg import dicom_modality, read_dicom_seg
    from .seg_nrrd import read_seg_nrrd

    path = Path(path)
    if not path.exists():
        raise VolumeIOError(f"labels {path}: file not found")
    modality = dicom_modality(path) if is_dicom_file(path) else None
    if modality == "RTSTRUCT":
        if reference is None:
            raise VolumeIOError(
                f"labels {path}: an RT Structure Set holds contours in mm, read onto the image "
                "they were drawn on: give that image with --reference IMAGE"
            )
        from .rtstruct import read_rtstruct

        array, segments = read_rtstruct(path, reference.array.shape[:3], reference.affine)
        return Volume(array, reference.affine, reference.header), segments
    if modality == "SEG":
        array, affine, segments = read_dicom_seg(path)
        volume = Volume(array, affine)
    elif is_seg_nrrd(path):
        array, affine, segments = read_seg_nrrd(path)
        volume = Volume(array, affine)
    else:
        volume = read_volume(path)
        known = read_sidecar(path)
        values = label_values(volume.array)
        # A probability map or an image given as labels: 0.7 read as label 0, -3 as nothing.
        bad = values[~np.isfinite(values) | (values < 0) | (values != np.round(values))]
        if bad.size:
            raise VolumeIOError(
                f"labels {path}: value {bad[0]:g} is not a label (labels are whole numbers, 0 "
                "for none); an image or a probability map? threshold it first"
            )
        ids = [int(i) for i in values if i > 0]
        segments = segments_for(sorted(set(ids) | set(known)), known)
    if reference is not None:
        array = onto_grid(volume.array, volume.affine, reference, f"labels {path}")
        volume = Volume(array, reference.affine, reference.header)
    return volume, segments


def check_output(path: str | os.PathLike, source_series: str | os.PathLike | None = None) -> None:
    """Refuse, in one line, a label file that cannot be written: a DICOM output without
    the DICOM source `source_series` it must reference, or a label volume whose names file
    (`x.json` beside `x.nii.gz`) would replace a JSON file that holds no label names (`-o
    prompts.nii.gz` beside the `prompts.json` it was propagated from would otherwise
    overwrite the user's prompts). Called before the work, so nothing runs in vain."""
    from .rtstruct import is_rtstruct_path

    path = Path(path)
    if suffix_of(path) in (".dcm", ".dicom"):
        source = dicom_source(source_series)
        what = "an RT Structure Set" if is_rtstruct_path(path) else "a DICOM SEG"
        if source is None:
            raise VolumeIOError(
                f"output {path}: {what} needs the DICOM source (a series folder or a "
                "multi-frame file): propagate that, or give --reference SERIES_DIR"
            )
        if is_rtstruct_path(path) and not Path(source).is_dir():
            raise VolumeIOError(
                f"output {path}: an RT Structure Set references a series of single-frame "
                f"slices, and {source} is one multi-frame file: write a DICOM SEG (.dcm)"
            )
        return
    if is_seg_nrrd(path):
        return  # names inside the file: nothing written beside it
    beside = sidecar_path(path)
    if not beside.exists():
        return
    try:
        segments_from_json(json.loads(beside.read_text(encoding="utf-8")), str(beside))
    except (OSError, ValueError, VolumeIOError):  # JSON errors are ValueErrors
        raise VolumeIOError(
            f"output {path}: its names file {beside} would replace a file that holds no "
            "label names (a prompts file?); choose another output name"
        ) from None


def write_labels(
    path: str | os.PathLike,
    labels: np.ndarray,
    like: Volume,
    segments: list[Segment] | None = None,
    source_series: str | os.PathLike | None = None,
    algorithm: str = "SAM-Med2D suite",
) -> Path:
    """Write `labels` (voxel order, `like`'s grid) with its segments, atomically. A `.dcm`
    output is a DICOM SEG, and `x.rtstruct.dcm` an RT Structure Set; both need the DICOM
    source the labels were made on (a series folder, or for a SEG a multi-frame file)."""
    from .dicom_seg import write_dicom_seg
    from .rtstruct import is_rtstruct_path, write_rtstruct
    from .seg_nrrd import write_seg_nrrd

    path = Path(path)
    labels = np.asarray(labels)
    if labels.shape != like.array.shape[:3]:
        raise VolumeIOError(
            f"labels of shape {labels.shape} do not match the volume's {like.array.shape}"
        )
    if labels.size and labels.min() < 0:
        raise VolumeIOError("labels must be non-negative integers")
    check_output(path, source_series)
    ids = [int(i) for i in np.unique(labels) if i > 0]
    segments = segments_for(ids, {s.id: s for s in (segments or [])})
    suffix = suffix_of(path)
    if suffix in (".dcm", ".dicom"):
        if is_rtstruct_path(path):
            return atomic_write(
                path,
                lambda tmp: write_rtstruct(tmp, labels, segments, Path(source_series), algorithm),
            )
        return atomic_write(
            path,
            lambda tmp: write_dicom_seg(tmp, labels, segments, Path(source_series), algorithm),
        )
    if is_seg_nrrd(path):
        return atomic_write(path, lambda tmp: write_seg_nrrd(tmp, labels, like.affine, segments))
    if labels.max(initial=0) < 256:
        labels = labels.astype(np.uint8)
    elif labels.max() < 65536:
        labels = labels.astype(np.uint16)
    out = write_volume(path, labels, Volume(labels, like.affine, like.header))
    text = json.dumps(segments_to_json(segments), indent=1) + "\n"
    atomic_write(sidecar_path(path), lambda tmp: Path(tmp).write_text(text))
    return out


def object_segments(objects) -> list[Segment]:
    """The segments of propagated objects: their names and colours, defaults where unset."""
    out = []
    for obj in objects:
        seg = default_segment(obj.id, obj.name or None)
        out.append(Segment(obj.id, seg.name, tuple(obj.color) if obj.color else seg.color))
    return out


def seed_record(path: str | os.PathLike, volume: Volume, axis: int = 2, between: bool = False):
    """A prompts record (`PromptFile`) whose objects are seeded by the labels in `path`
    (any format `read_labels` takes, put on `volume`'s grid): every label with its name and
    colour, each labelled slice along `axis` taken as given (`objects.objects_from_labels`).
    `between`: each object's range is its first to last labelled slice, so a propagation
    fills only between them."""
    from dataclasses import replace

    from .objects import objects_from_labels
    from .prompt_files import PromptFile

    if volume.array.ndim != 3:
        raise VolumeIOError(f"seeds {path}: need a 3D volume, got {volume.array.ndim}D")
    if not -3 <= axis < 3:
        raise VolumeIOError(f"axis {axis}: expected 0, 1 or 2")
    labels, segments = read_labels(path, reference=volume)
    objects = objects_from_labels(labels.array, axis % 3, segments=segments)
    if not objects:
        raise VolumeIOError(f"seeds {path}: no labelled voxels to propagate from")
    if between:
        objects = [replace(o, range=(min(o.slices), max(o.slices))) for o in objects]
    return PromptFile(axis=axis % 3, objects=objects)


def propagation_input(image, prompts=None, seeds=None, channel=None, axis=2, between=False):
    """(volume, prompts record) of a propagation: the prompts file `prompts`, or else a
    record seeded by the labels `seeds` (`seed_record`, along `axis`). Of a 4D image the
    volume `channel`, else the one the prompts file names."""
    from .prompt_files import read_prompt_file

    record = read_prompt_file(prompts) if prompts is not None else None
    if channel is None and record is not None:
        channel = record.channel
    volume = read_volume(image, channel)
    if record is None:
        record = seed_record(seeds, volume, axis, between)
    return volume, record


def names_of(segments: list[Segment]) -> dict[int, str]:
    return {s.id: s.name for s in segments}
