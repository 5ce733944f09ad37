"""Reader and writer: volumes keep their geometry through napari.

A volume is shown in the order SimpleITK and Slicer use, (k, j, i): the slider runs over
the file's slice axis and each plane is a slice as scanners store it. Spacing becomes the
layer's `scale`; the voxel-to-RAS affine (for the layer's own axis order) and the source
path travel in `metadata["sammed2d"]`, so the writer can put labels back on the source grid.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sammed2d.errors import SamMed2DError
from sammed2d.io import ITK_SUFFIXES, NIFTI_SUFFIXES, Volume, read_volume, suffix_of, write_volume

LAYER_ORDER = (2, 1, 0)  # napari axes <- voxel axes (i, j, k)


def layer_meta(volume: Volume, source: str) -> dict:
    affine = volume.affine[:, [*LAYER_ORDER, 3]]  # voxel order of the layer's axes
    return {"affine": affine, "source": source, "header": volume.header}


def volume_to_layer_data(path: str | Path):
    volume = read_volume(path)
    array = volume.array
    if array.ndim == 2:
        data, scale = array.T, tuple(reversed(volume.spacing[:2]))
    else:
        data = np.transpose(array, LAYER_ORDER)
        scale = tuple(volume.spacing[a] for a in LAYER_ORDER)
    meta = {"sammed2d": layer_meta(volume, str(path))}
    name = Path(path).name.split(".")[0]
    return [(data, {"name": name, "scale": scale, "metadata": meta}, "image")]


def get_reader(path):
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    p = Path(path)
    if p.is_dir() or suffix_of(p) in NIFTI_SUFFIXES + ITK_SUFFIXES:
        return read_layers
    return None


def read_layers(path):
    path = path[0] if isinstance(path, list) else path
    return volume_to_layer_data(path)


def write_labels(path: str, data, meta: dict) -> list[str]:
    """Write a Labels layer; with the source's geometry when it came through our reader."""
    info = (meta.get("metadata") or {}).get("sammed2d")
    data = np.asarray(data)
    if data.ndim != 3:
        raise SamMed2DError(f"labels of shape {data.shape}: only 3D label volumes are written")
    labels = np.transpose(data, np.argsort(LAYER_ORDER))  # back to voxel (i, j, k)
    dtype = np.uint8 if labels.max() < 256 else np.uint16
    labels = labels.astype(dtype)
    if info is not None:
        affine = np.asarray(info["affine"])[:, [*np.argsort(LAYER_ORDER), 3]]
        like = Volume(labels, affine, info.get("header"))
    else:
        scale = meta.get("scale") or (1.0, 1.0, 1.0)
        like = Volume(labels, np.diag([*[scale[a] for a in LAYER_ORDER], 1.0]))
    write_volume(path, labels, like)
    return [path]
