"""How a slice of a volume is shown to a model, and the exact way back.

The models learnt from images in the orientation radiologists read them in: axial and
coronal slices with the patient's right on the left of the image, anterior (axial) or
superior (coronal, sagittal) at the top. A raw array slice may be transposed or mirrored
relative to that, which costs accuracy, so slices are turned into that orientation before
the model sees them and masks are turned back. Only transposes and flips are used, so the
mapping is exact, pixel for pixel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def slice_of(volume: np.ndarray, index: int, axis: int) -> np.ndarray:
    """Slice `index` along `axis`, as `np.take(volume, index, axis)` gives it, but a view.

    np.take copies through a generic loop that walks the whole volume's memory: 0.94 s for
    one slice of a 512 x 512 x 300 CT held in Fortran order, as a DICOM series is read,
    against microseconds for the view. Read-only use; copy before writing to it."""
    return volume[(slice(None),) * axis + (index,)]


@dataclass(frozen=True)
class SliceView:
    """Raw slice (rows, cols) -> view: optional transpose, then optional flips."""

    transpose: bool = False
    flip_rows: bool = False
    flip_cols: bool = False

    def to_view(self, image: np.ndarray) -> np.ndarray:
        out = np.swapaxes(image, 0, 1) if self.transpose else image
        if self.flip_rows:
            out = out[::-1]
        if self.flip_cols:
            out = out[:, ::-1]
        return np.ascontiguousarray(out)

    def from_view(self, image: np.ndarray) -> np.ndarray:
        out = image
        if self.flip_cols:
            out = out[:, ::-1]
        if self.flip_rows:
            out = out[::-1]
        if self.transpose:
            out = np.swapaxes(out, 0, 1)
        return np.ascontiguousarray(out)

    def view_shape(self, shape: tuple[int, int]) -> tuple[int, int]:
        return (shape[1], shape[0]) if self.transpose else (shape[0], shape[1])

    def points_to_view(self, xy: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        """(N, 2) (x, y) in the raw slice of `shape` -> (x, y) in the view.

        Coordinates follow SAM: pixel (row r, column c) has its centre at (x, y) = (c, r),
        so a flip maps x to (width - 1 - x).
        """
        xy = np.array(xy, dtype=np.float32).reshape(-1, 2)
        if self.transpose:
            xy = xy[:, ::-1].copy()
        vh, vw = self.view_shape(shape)
        if self.flip_rows:
            xy[:, 1] = vh - 1 - xy[:, 1]
        if self.flip_cols:
            xy[:, 0] = vw - 1 - xy[:, 0]
        return xy

    def box_to_view(self, box: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        corners = self.points_to_view(np.asarray(box, np.float32).reshape(2, 2), shape)
        return np.concatenate([corners.min(0), corners.max(0)])


def _world_axis(direction: np.ndarray) -> tuple[int, float]:
    """Dominant RAS axis (0 R, 1 A, 2 S) of a direction and its sign."""
    k = int(np.argmax(np.abs(direction)))
    return k, float(np.sign(direction[k]) or 1.0)


def radiological_view(affine: np.ndarray | None, axis: int) -> SliceView:
    """The SliceView that shows `np.take(volume, i, axis)` as a radiologist reads it.

    Rows should run anterior -> posterior (axial) or superior -> inferior (coronal,
    sagittal); columns patient right -> left (axial, coronal) or anterior -> posterior
    (sagittal). Without an affine the raw orientation is kept.
    """
    if affine is None:
        return SliceView()
    remaining = [a for a in range(3) if a != axis]
    dirs = [np.asarray(affine)[:3, a] for a in remaining]
    normal, _ = _world_axis(np.asarray(affine)[:3, axis])
    # world axis and the sign of its increase wanted along (rows, cols) of the view
    if normal == 2:  # axial
        want = [(1, -1.0), (0, -1.0)]  # rows toward posterior, cols toward patient left
    elif normal == 1:  # coronal
        want = [(2, -1.0), (0, -1.0)]  # rows toward inferior, cols toward patient left
    else:  # sagittal
        want = [(2, -1.0), (1, -1.0)]  # rows toward inferior, cols toward posterior
    axes = [_world_axis(d) for d in dirs]
    transpose = axes[0][0] != want[0][0] and axes[1][0] != want[1][0]
    if transpose:
        axes = axes[::-1]
    # RAS+ axes grow toward the patient's right, anterior and superior, so the wanted
    # directions above all carry a -1.
    flip_rows = axes[0][1] != want[0][1]
    flip_cols = axes[1][1] != want[1][1]
    return SliceView(transpose, flip_rows, flip_cols)
