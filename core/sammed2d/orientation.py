"""How a slice of a volume is shown to a model, and the exact way back.

The models learnt from images in the orientation radiologists read them in: axial and
coronal slices with the patient's right on the left of the image, anterior (axial) or
superior (coronal, sagittal) at the top. A raw array slice may be transposed or mirrored
relative to that, which costs accuracy, so slices are turned into that orientation before
the model sees them and masks are turned back. Transposes and flips are exact, pixel for
pixel; where a slice's pixels are oblong it is also stretched by a whole factor, and a
mask comes back exactly as it was (each raw pixel's block is all in or all out of it).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np


def slice_of(volume: np.ndarray, index: int, axis: int) -> np.ndarray:
    """Slice `index` along `axis`, as `np.take(volume, index, axis)` gives it, but a view.

    np.take copies through a generic loop that walks the whole volume's memory: 0.94 s for
    one slice of a 512 x 512 x 300 CT held in Fortran order, as a DICOM series is read,
    against microseconds for the view. Read-only use; copy before writing to it."""
    return volume[(slice(None),) * axis + (index,)]


@dataclass(frozen=True)
class SliceView:
    """Raw slice (rows, cols) -> view: optional transpose, then optional flips, then each
    view axis stretched by a whole factor (`stretch`, rows and columns).

    The stretch gives a slice whose pixels are far from square (a coronal or sagittal slice
    of a scan with thick slices) square pixels again, as viewers show it: the models learnt
    from images in their physical proportions, and on slices squashed 4:1 the label's box
    gave 0.627 mean Dice over the example CT's fourteen structures against 0.742 stretched
    (docs/measurements.md, "Slices with oblong pixels"). Grey levels
    are interpolated linearly; masks come back as the share of each raw pixel's block that
    they cover (at least half), and other maps as the block's mean."""

    transpose: bool = False
    flip_rows: bool = False
    flip_cols: bool = False
    stretch: tuple[int, int] = (1, 1)

    def to_view(self, image: np.ndarray) -> np.ndarray:
        out = np.swapaxes(image, 0, 1) if self.transpose else image
        if self.flip_rows:
            out = out[::-1]
        if self.flip_cols:
            out = out[:, ::-1]
        if self.stretch != (1, 1):
            return _stretched(out, self.stretch)
        return np.ascontiguousarray(out)

    def from_view(self, image: np.ndarray) -> np.ndarray:
        out = image if self.stretch == (1, 1) else _blocks(image, self.stretch)
        if self.flip_cols:
            out = out[:, ::-1]
        if self.flip_rows:
            out = out[::-1]
        if self.transpose:
            out = np.swapaxes(out, 0, 1)
        return np.ascontiguousarray(out)

    def view_shape(self, shape: tuple[int, int]) -> tuple[int, int]:
        h, w = (shape[1], shape[0]) if self.transpose else (shape[0], shape[1])
        return h * self.stretch[0], w * self.stretch[1]

    def _flipped(self, xy: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        xy = np.array(xy, dtype=np.float32).reshape(-1, 2)
        if self.transpose:
            xy = xy[:, ::-1].copy()
        vh, vw = (shape[1], shape[0]) if self.transpose else (shape[0], shape[1])
        if self.flip_rows:
            xy[:, 1] = vh - 1 - xy[:, 1]
        if self.flip_cols:
            xy[:, 0] = vw - 1 - xy[:, 0]
        return xy

    def points_to_view(self, xy: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        """(N, 2) (x, y) in the raw slice of `shape` -> (x, y) in the view.

        Coordinates follow SAM: pixel (row r, column c) has its centre at (x, y) = (c, r),
        so a flip maps x to (width - 1 - x), and a stretch by s maps a centre to the centre
        of its block, (x + 0.5) * s - 0.5.
        """
        xy = self._flipped(xy, shape)
        sy, sx = self.stretch
        return (xy + 0.5) * np.array([sx, sy], np.float32) - 0.5

    def box_to_view(self, box: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        corners = self._flipped(np.asarray(box, np.float32).reshape(2, 2), shape)
        lo, hi = corners.min(0), corners.max(0)
        # Stretched by s, a corner pixel becomes a block of s: the box takes in all of the
        # blocks of its corner pixels, as it took in all of those pixels.
        s = np.array(self.stretch[::-1], np.float32)
        return np.concatenate([lo * s, hi * s + (s - 1)])


def _stretched(image: np.ndarray, stretch: tuple[int, int]) -> np.ndarray:
    """Each axis of a 2D image made `stretch` times longer: masks by repeating pixels, grey
    levels by linear interpolation between pixel centres (edges held)."""
    if image.dtype == bool:
        return np.repeat(np.repeat(image, stretch[0], axis=0), stretch[1], axis=1)
    from scipy import ndimage

    zoomed = ndimage.zoom(
        image.astype(np.float32), stretch, order=1, grid_mode=True, mode="nearest"
    )
    return np.rint(zoomed).astype(image.dtype) if image.dtype.kind in "iu" else zoomed


def _blocks(image: np.ndarray, stretch: tuple[int, int]) -> np.ndarray:
    """The inverse of `_stretched`: each block of stretch[0] x stretch[1] view pixels back to
    one raw pixel, a mask where it covers at least half the block, a map as its mean."""
    sy, sx = stretch
    h, w = image.shape[0] // sy, image.shape[1] // sx
    mean = image.reshape(h, sy, w, sx).mean(axis=(1, 3), dtype=np.float32)
    return mean >= 0.5 if image.dtype == bool else mean


MAX_STRETCH = 32


def _pixel_spacing(affine, axis: int, view: SliceView) -> tuple[float, float] | None:
    """mm between the rows and between the columns of the view of slices along `axis`,
    before its stretch; None without an affine or with a degenerate one."""
    if affine is None:
        return None
    spacing = np.linalg.norm(np.asarray(affine, np.float64)[:3, :3], axis=0)
    rows, cols = (float(spacing[a]) for a in range(3) if a != axis)
    if view.transpose:
        rows, cols = cols, rows
    if not (np.isfinite(rows) and np.isfinite(cols)) or min(rows, cols) <= 0:
        return None
    return rows, cols


def view_pixel_spacing(affine, axis: int, view: SliceView) -> tuple[float, float] | None:
    """mm between the rows and between the columns of the view's pixels, stretch included
    (the pixels the walk measures in); None without a usable affine."""
    spacing = _pixel_spacing(affine, axis, view)
    if spacing is None:
        return None
    return spacing[0] / view.stretch[0], spacing[1] / view.stretch[1]


def stretch_for(affine: np.ndarray | None, axis: int, view: SliceView) -> tuple[int, int]:
    """Whole factors that make the view's pixels of slices along `axis` about square: the
    coarser axis stretched by its spacing over the finer one's, rounded, where that is 1.5
    or more (below, the slice is left as it is: its pixels are square enough)."""
    spacing = _pixel_spacing(affine, axis, view)
    if spacing is None:
        return (1, 1)
    rows, cols = spacing
    ratio = max(rows, cols) / min(rows, cols)
    if ratio < 1.5:
        return (1, 1)
    # Up to 32 (0.3 mm pixels, 10 mm slices): a broken header's ratio of thousands would
    # otherwise ask for a slice of millions of rows.
    factor = min(int(round(ratio)), MAX_STRETCH)
    return (factor, 1) if rows > cols else (1, factor)


def slice_view(
    affine: np.ndarray | None, axis: int, orientation: str = "radiological"
) -> SliceView:
    """How slices along `axis` are shown to a model: turned as a radiologist reads them
    (`orientation` "radiological"; "array" keeps the array's own), and stretched to about
    square pixels."""
    view = radiological_view(affine, axis) if orientation == "radiological" else SliceView()
    stretch = stretch_for(affine, axis, view)
    return view if stretch == (1, 1) else replace(view, stretch=stretch)


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


# The most slices `step_distance` may span. The thinnest clinical slices (0.4-0.5 mm) give
# 6-7 at 3 mm; a volume whose spacing reads far smaller (micro-CT, microscopy, or a file
# whose units are wrong: 0.003 "mm" slices) walked a thousand slices per step and filled
# everything between by interpolation (a generated CT's organs fell from Dice 0.999 to
# 0.85-0.95), where this cap keeps the walk on the anatomy.
MAX_REACH = 8


def slices_in(distance: float | None, affine: np.ndarray | None, axis: int) -> int:
    """How many slice steps along `axis` fit in `distance` mm; 0 without either, or where
    the affine gives the axis no length. `distance` is a setting `check_settings` passed."""
    if distance is None or affine is None:
        return 0
    spacing = float(np.linalg.norm(np.asarray(affine, np.float64)[:3, axis]))
    if not np.isfinite(spacing) or spacing <= 0:
        return 0
    return int(np.floor(distance / spacing + 1e-6))


def slices_within(distance: float | None, affine: np.ndarray | None, axis: int) -> int:
    """`slices_in`, at least 1 and at most MAX_REACH: the step of a walk."""
    return min(MAX_REACH, max(1, slices_in(distance, affine, axis)))


def pixels_within(
    distance: float | None, affine: np.ndarray | None, axis: int, view: SliceView = SliceView()
) -> int:
    """Whole pixels of `view` in `distance` mm across a slice along `axis` (by the mean of
    its two pixel spacings, stretch included, rounded half up); 0 for None, 1 without an
    affine. `distance` is a setting `check_settings` has passed."""
    if distance is None:
        return 0
    spacing = view_pixel_spacing(affine, axis, view)
    if spacing is None:
        return 1
    return int(np.floor(distance / float(np.mean(spacing)) + 0.5))
