"""Slicer geometry without Slicer: RAS <-> IJK, views to slice axes, markups to prompts.

Everything here takes plain NumPy arrays that the module reads off MRML nodes (4 x 4
matrices, control point positions), so it is tested with pytest outside Slicer.

Conventions: IJK voxel indices have voxel centres on integers; a volume array for the core
is in (i, j, k) order (the transpose of `slicer.util.arrayFromVolume`, which is (k, j, i));
a slice along axis `a` is `numpy.take(volume_ijk, index, a)`, whose rows run along the
earlier remaining IJK axis and columns along the later one. Core prompts follow SAM, with
pixel centres on integers, so (x, y) = (later, earlier) in continuous IJK.
"""

from __future__ import annotations

import numpy as np

from sammed2d.errors import PromptError
from sammed2d.objects import SlicePrompt

OBLIQUE_TOLERANCE_DEG = 1.0


class ObliqueViewError(PromptError):
    """The slice view is not aligned with any of the volume's axes."""


def world_to_ijk_matrix(ijk_to_ras: np.ndarray, parent_to_world: np.ndarray | None = None):
    """4 x 4 matrix from world RAS to continuous IJK.

    `ijk_to_ras` is the volume's own IJKToRAS (direction, spacing, origin); a transform
    above the volume (`parent_to_world`, the volume's parent transform to world, linear)
    moves the volume in the scene, so world points go through its inverse first.
    """
    ijk_to_world = np.asarray(ijk_to_ras, float)
    if parent_to_world is not None:
        ijk_to_world = np.asarray(parent_to_world, float) @ ijk_to_world
    return np.linalg.inv(ijk_to_world)


def world_to_ijk(points_ras, ijk_to_ras, parent_to_world=None) -> np.ndarray:
    """(N, 3) world RAS positions -> (N, 3) continuous IJK."""
    pts = np.atleast_2d(np.asarray(points_ras, float))
    homogeneous = np.c_[pts, np.ones(len(pts))]
    return (homogeneous @ world_to_ijk_matrix(ijk_to_ras, parent_to_world).T)[:, :3]


def inside(ijk: np.ndarray, dims_ijk) -> np.ndarray:
    """Which continuous IJK positions fall in a voxel of a volume of `dims_ijk` voxels."""
    ijk = np.atleast_2d(ijk)
    nearest = np.floor(ijk + 0.5)
    return np.all((nearest >= 0) & (nearest < np.asarray(dims_ijk)), axis=1)


def slice_axis_of_view(slice_to_ras: np.ndarray, ijk_to_ras, parent_to_world=None) -> int:
    """The IJK axis a slice view (Red, Yellow, Green or any) looks along.

    The view's normal is the third column of its SliceToRAS. Raises ObliqueViewError when
    no IJK axis lies within OBLIQUE_TOLERANCE_DEG of it: a 2D model then has no slice.
    """
    normal = np.asarray(slice_to_ras, float)[:3, 2]
    normal = normal / np.linalg.norm(normal)
    ijk_to_world = np.asarray(ijk_to_ras, float)
    if parent_to_world is not None:
        ijk_to_world = np.asarray(parent_to_world, float) @ ijk_to_world
    axes = ijk_to_world[:3, :3] / np.linalg.norm(ijk_to_world[:3, :3], axis=0)
    cosines = np.abs(axes.T @ normal)
    axis = int(np.argmax(cosines))
    angle = np.degrees(np.arccos(np.clip(cosines[axis], -1, 1)))
    if angle > OBLIQUE_TOLERANCE_DEG:
        raise ObliqueViewError(
            f"the slice view is oblique to the volume ({angle:.1f} degrees from its nearest "
            "axis): reset the view's orientation (Reformat module) to segment"
        )
    return axis


def slice_index_of_view(slice_to_ras, ijk_to_ras, parent_to_world, dims_ijk, axis: int) -> int:
    """The slice index shown by a view: its origin's IJK coordinate on `axis`."""
    origin = np.asarray(slice_to_ras, float)[:3, 3]
    index = int(np.floor(world_to_ijk(origin, ijk_to_ras, parent_to_world)[0, axis] + 0.5))
    if not 0 <= index < dims_ijk[axis]:
        raise PromptError(
            f"the view shows slice {index}, outside the volume (0..{dims_ijk[axis] - 1})"
        )
    return index


def point_on_slice(slice_to_ras, ijk_to_ras, parent_to_world, axis: int, index: int):
    """World RAS of a view's centre moved along the volume's `axis` onto slice `index`: the
    point a view jumps to (vtkMRMLSliceNode.JumpSliceByOffsetting) to show that slice
    without panning."""
    ijk = world_to_ijk(np.asarray(slice_to_ras, float)[:3, 3], ijk_to_ras, parent_to_world)[0]
    ijk[axis] = index
    ijk_to_world = np.linalg.inv(world_to_ijk_matrix(ijk_to_ras, parent_to_world))
    return (ijk_to_world @ np.append(ijk, 1.0))[:3]


def _plane_xy(ijk: np.ndarray, axis: int) -> np.ndarray:
    earlier, later = [a for a in range(3) if a != axis]
    return np.stack([ijk[:, later], ijk[:, earlier]], axis=1)


def prompt_from_markups(
    positive_ras,
    negative_ras,
    roi_corners_ras,
    ijk_to_ras,
    parent_to_world,
    dims_ijk,
    axis: int,
    index: int,
) -> SlicePrompt | None:
    """Core prompt for slice `index` from markups in world RAS.

    Points are kept when they lie on that slice; a point outside the volume is an error,
    not a silent drop. The ROI (its 8 corners) becomes a box when it spans the slice.
    Returns None when nothing lies on the slice.
    """
    points, labels = [], []
    for ras, label in ((positive_ras, 1), (negative_ras, 0)):
        if ras is None or len(ras) == 0:
            continue
        ijk = world_to_ijk(ras, ijk_to_ras, parent_to_world)
        ok = inside(ijk, dims_ijk)
        if not ok.all():
            bad = np.asarray(ras, float).reshape(-1, 3)[~ok][0]
            raise PromptError(
                "point at RAS ({:.1f}, {:.1f}, {:.1f}) lies outside the volume".format(*bad)
            )
        on_slice = np.floor(ijk[:, axis] + 0.5) == index
        points.append(_plane_xy(ijk[on_slice], axis))
        labels.append(np.full(on_slice.sum(), label))
    prompt = SlicePrompt()
    if points and sum(len(p) for p in points):
        prompt.points = np.concatenate(points).astype(np.float32)
        prompt.labels = np.concatenate(labels).astype(np.int64)
    if roi_corners_ras is not None and len(roi_corners_ras):
        ijk = world_to_ijk(roi_corners_ras, ijk_to_ras, parent_to_world)
        lo, hi = ijk[:, axis].min(), ijk[:, axis].max()
        if lo - 0.5 <= index <= hi + 0.5:
            xy = _plane_xy(ijk, axis)
            earlier, later = [a for a in range(3) if a != axis]
            w, h = dims_ijk[later], dims_ijk[earlier]
            box = np.array([xy[:, 0].min(), xy[:, 1].min(), xy[:, 0].max(), xy[:, 1].max()])
            prompt.box = np.clip(box, 0, [w, h, w, h]).astype(np.float32)
    if prompt.points is None and prompt.box is None:
        return None
    return prompt


def roi_corners(center, size, roi_to_ras=None) -> np.ndarray:
    """(8, 3) RAS corners of a markups ROI from its centre, size and orientation."""
    half = np.asarray(size, float) / 2
    signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)])
    local = signs * half
    rotation = np.eye(3) if roi_to_ras is None else np.asarray(roi_to_ras, float)[:3, :3]
    return np.asarray(center, float) + local @ rotation.T


def changed_slices(before: np.ndarray, after: np.ndarray, axis: int) -> list[int]:
    """Indices along `axis` where two label arrays differ: only those get written."""
    differs = before != after
    other = tuple(a for a in range(differs.ndim) if a != axis)
    return [int(i) for i in np.flatnonzero(differs.any(axis=other))]


def ijk_volume_from_slicer_array(array_kji: np.ndarray) -> np.ndarray:
    """`slicer.util.arrayFromVolume` order (k, j, i) -> the core's (i, j, k)."""
    return np.transpose(array_kji, (2, 1, 0))


def slicer_array_from_ijk_volume(volume_ijk: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.transpose(volume_ijk, (2, 1, 0)))


def view_containing(point_ras, slice_to_ras_by_view: dict, tolerance_mm: float) -> str | None:
    """Name of the slice view whose plane holds a just-placed point (the one it was placed
    in), or None. Slicer places a point on the plane of the view under the mouse."""
    best, best_distance = None, tolerance_mm
    p = np.asarray(point_ras, float)
    for name, matrix in slice_to_ras_by_view.items():
        m = np.asarray(matrix, float)
        normal = m[:3, 2] / np.linalg.norm(m[:3, 2])
        distance = abs(float(normal @ (p - m[:3, 3])))
        if distance <= best_distance:
            best, best_distance = name, distance
    return best
