"""Reader and writer: volumes and label files keep their geometry, names and colours.

A volume is shown in the order SimpleITK and Slicer use, (k, j, i): the slider runs over
the file's slice axis and each plane is a slice as scanners store it. Spacing becomes the
layer's `scale` and the origin, expressed along the volume's own axes, its `translate`, so
a segmentation that covers only part of the scan (a DICOM SEG without its empty frames, a
cropped `.seg.nrrd`) lands on the image it was made on. The voxel-to-RAS affine (for the
layer's own axis order) and the source path travel in `metadata["sammed2d"]`, so the
writer can put labels back on the source grid.

Label files (`.seg.nrrd`, DICOM SEG, or a label volume with a sidecar `x.json` /
`labels.json`) open as a Labels layer whose colours are the segments' and whose features
carry their names (napari shows them in the status bar).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sammed2d.errors import SamMed2DError
from sammed2d.io import (
    ITK_SUFFIXES,
    NIFTI_SUFFIXES,
    Volume,
    dicom_source,
    is_dicom_file,
    read_channels,
    suffix_of,
)
from sammed2d.labelfiles import is_seg_nrrd, read_labels, write_labels
from sammed2d.segments import Segment, default_segment, segments_for, sidecar_path

LAYER_ORDER = (2, 1, 0)  # napari axes <- voxel axes (i, j, k)


# Layer units: napari's scale bar and cursor read them, and from napari 0.6.4 on, layers
# whose units cannot be reconciled (mm against napari's default "pixel") are drawn without
# them, with a warning; so every layer this plugin makes carries its image's.
MM = ("mm",)


def layer_meta(volume: Volume, source: str) -> dict:
    affine = volume.affine[:, [*LAYER_ORDER, 3]]  # voxel order of the layer's axes
    return {"affine": affine, "source": source, "header": volume.header}


def layer_geometry(volume: Volume) -> dict:
    """`scale` and `translate` in the layer's axis order: millimetres along the volume's own
    axes, so layers on grids that differ by whole voxels overlay exactly."""
    spacing = np.array(volume.spacing[:3])
    axes = volume.affine[:3, :3] / spacing
    along = axes.T @ volume.affine[:3, 3]  # origin's coordinate along each voxel axis
    order = list(LAYER_ORDER)
    return {"scale": tuple(spacing[order]), "translate": tuple(along[order]), "units": MM * 3}


def mm_per_unit(units, ndim: int) -> np.ndarray:
    """How many mm one unit of each of a layer's last `ndim` axes is. A unit that is not a
    length (napari's default, "pixel"), or none, counts as mm: a scale from a reader that
    gives no units is taken as millimetres, as DICOM and NIfTI readers give them."""
    factors = np.ones(ndim)
    if units is None:
        return factors
    try:
        import pint
    except ImportError:
        return factors
    for axis, unit in enumerate(list(units)[-ndim:]):
        try:
            factors[axis] = float(pint.Quantity(1, str(unit)).to("mm").magnitude)
        except (pint.PintError, ValueError, TypeError, AttributeError):
            pass
    return factors


def segments_colormap(segments: list[Segment]):
    from napari.utils.colormaps import DirectLabelColormap

    # Labels painted by hand with a new id must stay visible: every id up to 255 gets the
    # palette colour it would have as a new segment, anything beyond that grey.
    colors = {None: (0.6, 0.6, 0.6, 1.0), 0: (0, 0, 0, 0)}
    for label in range(1, 256):
        colors[label] = (*(c / 255 for c in default_segment(label).color), 1.0)
    for s in segments:
        colors[s.id] = (*(c / 255 for c in s.color), 1.0)
    return DirectLabelColormap(color_dict=colors)


def labels_layer_kwargs(segments: list[Segment]) -> dict:
    return {
        "colormap": segments_colormap(segments),
        "features": {
            "index": [0] + [s.id for s in segments],
            "name": ["background"] + [s.name for s in segments],
        },
    }


def volume_to_layer_data(path: str | Path, volume: Volume | None = None):
    if volume is None:
        volumes = read_channels(path)
        if len(volumes) > 1:  # a 4D file: one layer per volume, as napari's channel_axis
            name = Path(path).name.split(".")[0]
            layers = []
            for c, v in enumerate(volumes):
                ((data, kwargs, kind),) = volume_to_layer_data(path, v)
                kwargs["name"] = f"{name} [{c}]"
                kwargs["visible"] = c == 0
                kwargs["metadata"]["sammed2d"]["channel"] = c
                layers.append((data, kwargs, kind))
            return layers
        volume = volumes[0]
    array = volume.array
    name = Path(path).name.split(".")[0]
    meta = {"sammed2d": layer_meta(volume, str(path))}
    if array.ndim == 2:
        data, scale = array.T, tuple(reversed(volume.spacing[:2]))
        kwargs = {"name": name, "scale": scale, "units": MM * 2, "metadata": meta}
        return [(data, kwargs, "image")]
    data = np.transpose(array, LAYER_ORDER)
    kwargs = {"name": name, "metadata": meta, **layer_geometry(volume)}
    window = display_window(array)
    if window is not None:
        kwargs["contrast_limits"] = window
    return [(data, kwargs, "image")]


def display_window(array) -> tuple[float, float] | None:
    """The window the model will see ("auto": CT soft tissue W400/L40, MR 0.5-99.5th
    percentile), rather than napari's full range, which washes CT out."""
    from sammed2d.intensity import intensity_range

    try:
        lo, hi = intensity_range(array, "auto")
    except SamMed2DError:  # no finite values: let napari choose
        return None
    return (float(lo), float(hi)) if hi > lo else (float(lo), float(lo) + 1.0)


def labels_to_layer_data(path: str | Path):
    volume, segments = read_labels(path)
    if volume.array.ndim != 3:
        raise SamMed2DError(f"labels {path}: expected a 3D label volume")
    data = np.transpose(volume.array, LAYER_ORDER)
    meta = {"sammed2d": {**layer_meta(volume, str(path)), "segments": segments}}
    name = Path(path).name.split(".")[0]
    kwargs = {"name": name, "metadata": meta, **layer_geometry(volume)}
    return [(data, {**kwargs, **labels_layer_kwargs(segments)}, "labels")]


def is_label_file(path: Path) -> bool:
    from sammed2d.dicom_seg import dicom_modality

    if is_seg_nrrd(path):
        return True
    # An RT Structure Set goes the labels' way too, where it is refused in one line (not
    # "no ImageIO reader" from ITK).
    if is_dicom_file(path) and dicom_modality(path) in ("SEG", "RTSTRUCT"):
        return True
    # Only the file's own sidecar (x.json beside x.nii.gz): a labels.json in the folder
    # describes the label file of that name, not the CT beside it.
    return suffix_of(path) in NIFTI_SUFFIXES + ITK_SUFFIXES and sidecar_path(path).is_file()


def get_reader(path):
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    p = Path(path)
    if p.is_dir() or suffix_of(p) in NIFTI_SUFFIXES + ITK_SUFFIXES or is_dicom_file(p):
        return read_layers
    return None


def read_layers(path):
    path = Path(path[0] if isinstance(path, list) else path)
    if not path.is_dir() and is_label_file(path):
        return labels_to_layer_data(path)
    if is_dicom_file(path):
        return dicom_file_to_layer_data(path)
    return volume_to_layer_data(path)


def dicom_file_to_layer_data(path: Path):
    """One DICOM file: an image in grey levels (an X-ray, one slice of a series), a colour
    image (ultrasound, endoscopy) as an RGB layer, or a multi-frame volume. napari itself
    reads no DICOM, so this reader is the only one that opens them."""
    from sammed2d.io import read_dicom_file

    found = read_dicom_file(path)
    if isinstance(found, np.ndarray):
        return [(found, {"name": path.name.split(".")[0], "rgb": True}, "image")]
    return volume_to_layer_data(path, found)


def layer_segments(data, meta: dict) -> list[Segment]:
    """The segments of a Labels layer: those it was read with or given by the widget,
    else named by the layer's features, coloured by its colormap."""
    info = (meta.get("metadata") or {}).get("sammed2d") or {}
    known = {s.id: s for s in info.get("segments") or []}
    names = {}
    features = meta.get("features")
    if features is not None and "index" in features and "name" in features:
        names = {int(i): str(n) for i, n in zip(features["index"], features["name"])}
    ids = [int(i) for i in np.unique(data) if i > 0]
    segments = segments_for(ids, known, names)
    colormap = meta.get("colormap")
    out = []
    for s in segments:
        if s.id not in known and hasattr(colormap, "map"):
            # What the user sees is what is exported: the layer's own colour for this id.
            rgba = np.asarray(colormap.map(s.id), float).ravel()
            s = Segment(s.id, s.name, tuple(int(round(c * 255)) for c in rgba[:3]))
        out.append(s)
    return out


def write_labels_layer(path: str, data, meta: dict) -> list[str]:
    """Write a Labels layer with its names and colours, on the source's geometry when it
    came through our reader (a DICOM SEG when the source was a DICOM series or file)."""
    info = (meta.get("metadata") or {}).get("sammed2d")
    data = np.asarray(data)
    if data.ndim != 3:
        raise SamMed2DError(f"labels of shape {data.shape}: only 3D label volumes are written")
    labels = np.transpose(data, np.argsort(LAYER_ORDER))  # back to voxel (i, j, k)
    if info is not None and info.get("affine") is not None:
        affine = np.asarray(info["affine"])[:, [*np.argsort(LAYER_ORDER), 3]]
        like = Volume(labels, affine, info.get("header"))
        source = info.get("source")
    else:
        scale = np.asarray(meta.get("scale") or (1.0, 1.0, 1.0), float)
        scale = scale * mm_per_unit(meta.get("units"), 3)
        like = Volume(labels, np.diag([*[scale[a] for a in LAYER_ORDER], 1.0]))
        source = None
    write_labels(path, labels, like, layer_segments(data, meta), source_series=dicom_source(source))
    return [path]
