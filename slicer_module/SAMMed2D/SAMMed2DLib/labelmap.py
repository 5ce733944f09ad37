"""Writing a stretch of slices into a segment, without Slicer.

A click changes one slice and a propagation a run of slices; writing the whole volume back
each time costs a full copy of the segment and makes Slicer re-convert all of it. The
module writes only the slab of slices that changed: a VTK image whose extent covers those
slices in the volume's own IJK index space, handed to Slicer's
`SetBinaryLabelmapToSegment(..., MODE_REPLACE, extent)`.
"""

from __future__ import annotations

import numpy as np


def changed_range(before: np.ndarray, after: np.ndarray, axis: int) -> tuple[int, int] | None:
    """First and last slice along `axis` where the masks differ, or None."""
    other = tuple(a for a in range(3) if a != axis)
    differs = np.flatnonzero((np.asarray(before) != np.asarray(after)).any(axis=other))
    if differs.size == 0:
        return None
    return int(differs[0]), int(differs[-1])


def slab_extent(shape_ijk, axis: int, lo: int, hi: int) -> list[int]:
    """VTK extent [i0, i1, j0, j1, k0, k1] of slices lo..hi along `axis`."""
    if not 0 <= lo <= hi < shape_ijk[axis]:
        raise ValueError(f"slices {lo}..{hi} outside 0..{shape_ijk[axis] - 1}")
    extent = []
    for a in range(3):
        extent += [lo, hi] if a == axis else [0, int(shape_ijk[a]) - 1]
    return extent


def slab_image(slab_ijk: np.ndarray, axis: int, lo: int, shape_ijk):
    """A `vtkImageData` (unsigned char, 0/1) holding `slab_ijk` (i, j, k order: the slices
    lo, lo+1, ... along `axis` of a volume of `shape_ijk`) at their own IJK indices. Spacing
    and origin stay 1 and 0: the module puts the geometry (the volume's IJK to the
    segmentation's coordinates) on the oriented copy."""
    import vtk
    from vtk.util import numpy_support

    slab_ijk = np.asarray(slab_ijk)
    shape_ijk = tuple(int(n) for n in shape_ijk)
    expected = tuple(n if a != axis else slab_ijk.shape[axis] for a, n in enumerate(shape_ijk))
    if slab_ijk.ndim != 3 or slab_ijk.shape != expected:
        raise ValueError(f"slab of shape {slab_ijk.shape} does not fit a volume of {shape_ijk}")
    extent = slab_extent(shape_ijk, axis, lo, lo + slab_ijk.shape[axis] - 1)
    # VTK scalars run i fastest: that is the (k, j, i) C-order array.
    flat = np.ascontiguousarray(np.transpose(slab_ijk > 0, (2, 1, 0)), dtype=np.uint8).ravel()
    image = vtk.vtkImageData()
    image.SetExtent(*extent)
    scalars = numpy_support.numpy_to_vtk(flat, deep=True, array_type=vtk.VTK_UNSIGNED_CHAR)
    image.GetPointData().SetScalars(scalars)
    return image


def ijk_to_segmentation(ijk_to_ras, volume_to_world=None, segmentation_to_world=None):
    """4 x 4 from the volume's IJK to the segmentation's own coordinates, through the linear
    parent transforms of both nodes (None: not transformed)."""
    m = np.asarray(ijk_to_ras, float)
    if volume_to_world is not None:
        m = np.asarray(volume_to_world, float) @ m
    if segmentation_to_world is not None:
        m = np.linalg.inv(np.asarray(segmentation_to_world, float)) @ m
    return m
