"""Sizes of labelled objects in physical units: what a report quotes from a segmentation.

Each object's volume (its voxels times a voxel's volume, from the affine, in mL) and its
longest diameter in the slice plane (in mm, on the slice where it is longest: the single
axial measurement RECIST and most tumour reports use), with the slices it spans. The
diameter is the longest distance between two corners of the object's pixels on a slice,
so one pixel measures its diagonal, and it is taken in mm through the affine, so oblique
and oblong pixels measure true lengths.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import SamMed2DError


@dataclass(frozen=True)
class ObjectSize:
    id: int
    voxels: int
    volume_ml: float
    slices: tuple[int, int]  # first and last slice along the measured axis
    diameter_mm: float  # longest in-plane diameter
    diameter_slice: int | None  # the slice where it is longest


def slice_axis_across(affine: np.ndarray, world: int = 2) -> int:
    """The array axis that steps most along world axis `world` (2: the patient's
    superior-inferior axis, whose slices are axial)."""
    directions = np.asarray(affine, float)[:3, :3]
    lengths = np.linalg.norm(directions, axis=0)
    return int(np.argmax(np.abs(directions[world]) / np.where(lengths > 0, lengths, 1.0)))


def voxel_ml(affine: np.ndarray) -> float:
    """One voxel's volume in mL (1 mL = 1000 mm³)."""
    return abs(float(np.linalg.det(np.asarray(affine, float)[:3, :3]))) / 1000.0


def object_sizes(
    labels: np.ndarray, affine: np.ndarray, axis: int | None = None, ids=None
) -> list[ObjectSize]:
    """The size of each object in `labels` (whole numbers, 0 for none; `ids`: only these),
    ordered by id. `axis`: the slices the diameter is measured on (default: the axial
    ones, `slice_axis_across`). An id with no voxels is left out."""
    from scipy import ndimage

    labels = np.asarray(labels)
    affine = np.asarray(affine, float)
    if labels.ndim != 3:
        raise SamMed2DError(f"measuring needs a 3D label volume, got {labels.ndim}D")
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise SamMed2DError("measuring needs the labels' voxel-to-mm affine (4 x 4, finite)")
    axis = slice_axis_across(affine) if axis is None else axis % 3
    if not np.issubdtype(labels.dtype, np.integer):
        labels = labels.astype(np.int64)  # whole numbers stored as floats (a NIfTI may)
    wanted = None if ids is None else {int(i) for i in ids}
    top = int(labels.max(initial=0)) if wanted is None else max(wanted, default=0)
    boxes = ndimage.find_objects(labels, max_label=top) if top > 0 else []
    per_voxel = voxel_ml(affine)
    plane = [a for a in range(3) if a != axis]
    steps = affine[:3, plane]  # mm moved by one pixel along each in-plane axis
    sizes = []
    for oid, box in enumerate(boxes, start=1):
        if box is None or (wanted is not None and oid not in wanted):
            continue
        inside = labels[box] == oid
        voxels = int(np.count_nonzero(inside))
        if not voxels:
            continue
        # (slice, row, column) order, the in-plane axes as `plane` names them
        inside = np.moveaxis(inside, axis, 0)
        diameter, where = _longest_section(inside, steps)
        first = box[axis].start
        sizes.append(
            ObjectSize(
                oid,
                voxels,
                voxels * per_voxel,
                (first, box[axis].stop - 1),
                diameter,
                first + where,
            )
        )
    return sizes


def _longest_section(inside: np.ndarray, steps: np.ndarray) -> tuple[float, int]:
    """The longest in-plane diameter among the sections inside[k] and its k. Each
    section's box bounds its diameter, so sections are measured largest box first until
    no box left could hold a longer one."""
    rows, cols = inside.any(axis=2), inside.any(axis=1)  # (slices, rows), (slices, cols)
    present = rows.any(axis=1)
    span_r = rows.shape[1] - np.argmax(rows[:, ::-1], axis=1) - np.argmax(rows, axis=1)
    span_c = cols.shape[1] - np.argmax(cols[:, ::-1], axis=1) - np.argmax(cols, axis=1)
    # the farthest corners of a box of pixels: one of its two diagonals
    a, b = span_r[:, None] * steps[:, 0], span_c[:, None] * steps[:, 1]
    bound = np.maximum(np.linalg.norm(a + b, axis=1), np.linalg.norm(a - b, axis=1))
    bound[~present] = -1.0
    best, where = 0.0, int(np.argmax(present))
    tie = 1e-9  # equal lengths measured through another axis order differ in the last bits
    for k in np.argsort(-bound, kind="stable"):
        if bound[k] < best - tie * best:
            break
        length = longest_diameter(inside[k], steps)
        # of sections as long, the first slice: the same whichever way the array is held
        if length > best + tie * best or (length >= best - tie * best and k < where):
            best, where = max(length, best), int(k)
    return best, where


def longest_diameter(section: np.ndarray, steps: np.ndarray) -> float:
    """The longest distance in mm between two corners of the pixels of the 2D mask
    `section`; `steps`: a (3, 2) array, the mm moved by one pixel along its rows and
    columns."""
    section = np.asarray(section, bool)
    # The convex hull of a row's pixels is that of its first and last: the farthest
    # corners are among theirs.
    rows = np.flatnonzero(section.any(axis=1))
    if rows.size == 0:
        return 0.0
    band = section[rows]
    left = np.argmax(band, axis=1)
    right = band.shape[1] - 1 - np.argmax(band[:, ::-1], axis=1)
    ends = np.concatenate([np.stack([rows, left], 1), np.stack([rows, right], 1)])
    corners = np.concatenate([ends + (dr, dc) for dr in (-0.5, 0.5) for dc in (-0.5, 0.5)])
    points = corners @ np.asarray(steps, float).T  # mm
    if len(points) > 16:
        points = _hull(points)
    gaps = points[:, None, :] - points[None, :, :]
    return float(np.sqrt((gaps**2).sum(-1).max()))


def _hull(points: np.ndarray) -> np.ndarray:
    """The vertices of the convex hull of points that lie in one plane (3D coordinates):
    the farthest pair is among them."""
    from scipy.spatial import ConvexHull, QhullError

    centred = points - points.mean(axis=0)
    # The plane's own 2D coordinates: qhull needs full-dimensional input.
    _, _, axes = np.linalg.svd(centred, full_matrices=False)
    flat = centred @ axes[:2].T
    try:
        return points[ConvexHull(flat).vertices]
    except QhullError:  # all in a line: its ends are among the points
        return points


def size_rows(sizes: list[ObjectSize], names: dict[int, str] | None = None) -> list[dict]:
    """Rows for a table or CSV: id, name, voxels, volume_ml, first_slice, last_slice,
    diameter_mm, diameter_slice."""
    return [
        {
            "id": s.id,
            "name": (names or {}).get(s.id, ""),
            "voxels": s.voxels,
            "volume_ml": f"{s.volume_ml:.3f}",
            "first_slice": s.slices[0],
            "last_slice": s.slices[1],
            "diameter_mm": f"{s.diameter_mm:.1f}",
            "diameter_slice": s.diameter_slice,
        }
        for s in sizes
    ]


def write_sizes_csv(
    path: str | os.PathLike, sizes: list[ObjectSize], names: dict[int, str] | None = None
) -> Path:
    """The sizes as CSV, written to a temporary file and renamed."""
    from .io import atomic_write

    fields = list(size_rows([ObjectSize(0, 0, 0.0, (0, 0), 0.0, 0)])[0])

    def write(tmp):
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(size_rows(sizes, names))

    return atomic_write(Path(path), write)


def size_text(size: ObjectSize, label: str, physical: bool = True) -> str:
    """One line: 'liver: 1523.4 mL, longest diameter 187.3 mm (slice 15), slices 3-28',
    the object named `label`. `physical`: False where the affine was a stand-in (no voxel
    size known), in voxels and pixels. A size without a `diameter_slice` is of one 2D
    image, measured as a slice 1 mm thick: its area."""
    flat = size.diameter_slice is None
    if flat:
        amount = f"{size.volume_ml * 1000:.1f} mm²" if physical else f"{size.voxels} pixels"
    else:
        amount = f"{size.volume_ml:.1f} mL" if physical else f"{size.voxels} voxels"
    length = f"{size.diameter_mm:.1f} {'mm' if physical else 'pixels'}"
    where = (
        "" if flat else f" (slice {size.diameter_slice}), slices {size.slices[0]}-{size.slices[1]}"
    )
    return f"{label}: {amount}, longest diameter {length}{where}"
