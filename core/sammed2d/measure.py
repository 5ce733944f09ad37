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
    diameter_slice: int  # the slice where it is longest


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
    labels = _whole(labels)
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


SIZE_FIELDS = (
    "id", "name", "voxels", "volume_ml", "first_slice", "last_slice", "diameter_mm",
    "diameter_slice",
)  # fmt: skip


def size_rows(sizes: list[ObjectSize], names: dict[int, str] | None = None) -> list[dict]:
    """Rows for a table or CSV, with the keys of SIZE_FIELDS."""
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

    def write(tmp):
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=SIZE_FIELDS)
            writer.writeheader()
            writer.writerows(size_rows(sizes, names))

    return atomic_write(Path(path), write)


def size_text(size: ObjectSize, label: str, physical: bool = True, flat: bool = False) -> str:
    """One line: 'liver: 1523.4 mL, longest diameter 187.3 mm (slice 15), slices 3-28',
    the object named `label`. `physical`: False where the affine was a stand-in (no voxel
    size known), in voxels and pixels. `flat`: the size of one 2D image, measured as a
    slice 1 mm thick: its area, and no slices to name."""
    if flat:
        amount = f"{size.volume_ml * 1000:.1f} mm²" if physical else f"{size.voxels} pixels"
    else:
        amount = f"{size.volume_ml:.1f} mL" if physical else f"{size.voxels} voxels"
    length = f"{size.diameter_mm:.1f} {'mm' if physical else 'pixels'}"
    where = (
        "" if flat else f" (slice {size.diameter_slice}), slices {size.slices[0]}-{size.slices[1]}"
    )
    return f"{label}: {amount}, longest diameter {length}{where}"


@dataclass(frozen=True)
class Agreement:
    """How one object's labels in two segmentations of the same image agree."""

    id: int
    dice: float
    volume_ml: tuple[float, float]  # in the first, in the second
    hd95_mm: float | None  # None where either is empty
    mean_surface_mm: float | None


def agreements(first: np.ndarray, second: np.ndarray, affine: np.ndarray) -> list[Agreement]:
    """Each object (a label value in either) of two label volumes on one grid (`affine`,
    voxel to mm), ordered by id: Dice, both volumes, and the distances between their
    surfaces in mm: the 95th percentile of each surface's distances to the other, the
    larger of the two (HD95, as MONAI and the Medical Segmentation Decathlon take it), and
    the mean of both (the average symmetric surface distance). A surface is an object's
    voxels with a face neighbour outside it; distances are between voxel centres, along the
    grid's axes at their spacing."""
    from scipy import ndimage

    first, second = np.asarray(first), np.asarray(second)
    affine = np.asarray(affine, float)
    if first.shape != second.shape or first.ndim != 3:
        raise SamMed2DError(
            f"comparing needs two 3D label volumes on one grid, got {first.shape} and "
            f"{second.shape}"
        )
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    per_voxel = voxel_ml(affine)
    first, second = _whole(first), _whole(second)
    top = int(max(first.max(initial=0), second.max(initial=0)))
    boxes = [ndimage.find_objects(v, max_label=top) if top > 0 else [] for v in (first, second)]
    found = []
    for oid, (in_first, in_second) in enumerate(zip(*boxes), start=1):
        if in_first is None and in_second is None:
            continue
        # each object within the box of both (a voxel of margin, for its surface)
        box = tuple(
            slice(max(min(b.start for b in pair if b) - 1, 0), max(b.stop for b in pair if b) + 1)
            for pair in zip(in_first or (None,) * 3, in_second or (None,) * 3)
        )
        a, b = first[box] == oid, second[box] == oid
        na, nb = int(np.count_nonzero(a)), int(np.count_nonzero(b))
        hd95 = mean = None
        if na and nb:
            there, back = _surface_distances(a, b, spacing)
            hd95 = float(max(np.percentile(there, 95), np.percentile(back, 95)))
            mean = float(np.concatenate([there, back]).mean())
        dice = 2 * int(np.count_nonzero(a & b)) / (na + nb)
        found.append(Agreement(oid, dice, (na * per_voxel, nb * per_voxel), hd95, mean))
    return found


def _whole(labels: np.ndarray) -> np.ndarray:
    """Labels as integers (whole numbers stored as floats, as a NIfTI may hold them)."""
    return labels if np.issubdtype(labels.dtype, np.integer) else labels.astype(np.int64)


def _surface_distances(a: np.ndarray, b: np.ndarray, spacing) -> tuple[np.ndarray, np.ndarray]:
    """The distances in mm from each surface voxel of `a` to the nearest of `b`'s, and back
    (a nearest-neighbour search among the surface voxels' centres: the distance transform
    of the whole box gave the same figures 20 times slower)."""
    from scipy import ndimage
    from scipy.spatial import cKDTree

    def surface(mask):
        return np.argwhere(mask & ~ndimage.binary_erosion(mask, border_value=0)) * spacing

    sa, sb = surface(a), surface(b)
    return cKDTree(sb).query(sa)[0], cKDTree(sa).query(sb)[0]


def agreement_text(item: Agreement, label: str) -> str:
    """One line: 'liver: Dice 0.962, 1062.5 / 1050.1 mL (-1.2 %), HD95 3.0 mm, mean surface
    distance 0.8 mm'."""
    va, vb = item.volume_ml
    change = f" ({100 * (vb - va) / va:+.1f} %)" if va > 0 else ""
    text = f"{label}: Dice {item.dice:.3f}, {va:.1f} / {vb:.1f} mL{change}"
    if item.hd95_mm is None:
        return text + ", only in " + ("the second" if va == 0 else "the first")
    return (
        f"{text}, HD95 {item.hd95_mm:.1f} mm, mean surface distance {item.mean_surface_mm:.1f} mm"
    )


def write_agreements_csv(
    path: str | os.PathLike, items: list[Agreement], names: dict[int, str] | None = None
) -> Path:
    """The agreements as CSV (id, name, dice, volume_ml_first, volume_ml_second, hd95_mm,
    mean_surface_mm; the distances empty where an object is in one only), written to a
    temporary file and renamed."""
    from .io import atomic_write

    def number(value, digits):
        return "" if value is None else f"{value:.{digits}f}"

    def write(tmp):
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(
                ["id", "name", "dice", "volume_ml_first", "volume_ml_second", "hd95_mm",
                 "mean_surface_mm"]
            )  # fmt: skip
            for t in items:
                writer.writerow(
                    [t.id, (names or {}).get(t.id, ""), f"{t.dice:.4f}",
                     f"{t.volume_ml[0]:.3f}", f"{t.volume_ml[1]:.3f}",
                     number(t.hd95_mm, 2), number(t.mean_surface_mm, 2)]
                )  # fmt: skip

    return atomic_write(Path(path), write)
