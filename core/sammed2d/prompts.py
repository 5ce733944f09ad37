"""Prompts in image pixels, checked before they reach a model, and prompts made from masks.

Coordinates are (x, y) = (column, row) in pixels of the image the prompt is for, as in
Segment Anything: pixel (r, c) is at (c, r). Boxes are [x0, y0, x1, y1]; point labels are
1 (foreground) and 0 (background). `box_from_mask` covers the mask's pixels whole, so its
far edges are the last index + 1 (plus any margin).
"""

from __future__ import annotations

import numpy as np

from .errors import PromptError


def check_points(
    coords, labels, image_size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray] | tuple[None, None]:
    """(..., N, 2) coordinates and (..., N) labels as float32/int64 arrays, validated."""
    if coords is None and labels is None:
        return None, None
    if coords is None or labels is None:
        raise PromptError("points need both coordinates and labels (1 foreground, 0 background)")
    coords = np.asarray(coords, dtype=np.float64)
    labels = np.asarray(labels)
    if coords.ndim < 2 or coords.shape[-1] != 2:
        raise PromptError(f"point coordinates of shape {coords.shape}: expected (N, 2) as (x, y)")
    if labels.shape != coords.shape[:-1]:
        raise PromptError(
            f"{coords.shape[-2]} points but labels of shape {labels.shape}: expected one label each"
        )
    if coords.shape[-2] == 0:
        return None, None
    if not np.all(np.isfinite(coords)):
        raise PromptError("point coordinates contain NaN or inf")
    if not np.all(np.isin(labels, (0, 1))):
        bad = labels[~np.isin(labels, (0, 1))].ravel()[0]
        raise PromptError(f"point label {bad}: expected 1 (foreground) or 0 (background)")
    h, w = image_size
    outside = (
        (coords[..., 0] < 0) | (coords[..., 0] > w) | (coords[..., 1] < 0) | (coords[..., 1] > h)
    )
    if outside.any():
        x, y = coords[outside][0]
        raise PromptError(f"point ({x:g}, {y:g}) lies outside the {w} x {h} image")
    return coords.astype(np.float32), labels.astype(np.int64)


def check_boxes(boxes, image_size: tuple[int, int]) -> np.ndarray | None:
    """(K, 4) [x0, y0, x1, y1] float32, corners put in order, validated against the image."""
    if boxes is None:
        return None
    boxes = np.asarray(boxes, dtype=np.float64)
    if boxes.size == 0:
        return None
    if boxes.shape[-1] != 4 or boxes.ndim > 2:
        raise PromptError(f"box of shape {boxes.shape}: expected [x0, y0, x1, y1] or (K, 4)")
    boxes = boxes.reshape(-1, 4)
    if not np.all(np.isfinite(boxes)):
        raise PromptError("box contains NaN or inf")
    # Drawn from any corner to its opposite: normalise to top-left, bottom-right.
    boxes = np.concatenate(
        [np.minimum(boxes[:, :2], boxes[:, 2:]), np.maximum(boxes[:, :2], boxes[:, 2:])], axis=1
    )
    h, w = image_size
    for box in boxes:
        if box[0] < 0 or box[1] < 0 or box[2] > w or box[3] > h:
            raise PromptError(
                f"box [{', '.join(f'{v:g}' for v in box)}] reaches outside the {w} x {h} image"
            )
        if box[2] - box[0] < 1 and box[3] - box[1] < 1:
            raise PromptError(f"box [{', '.join(f'{v:g}' for v in box)}] is empty")
    return boxes.astype(np.float32)


def clip_box(box, image_size: tuple[int, int]) -> np.ndarray:
    """Clip [x0, y0, x1, y1] to the image (for boxes made by code, not by a user)."""
    h, w = image_size
    box = np.asarray(box, dtype=np.float32).copy()
    box[[0, 2]] = np.clip(box[[0, 2]], 0, w)
    box[[1, 3]] = np.clip(box[[1, 3]], 0, h)
    return box


def box_from_mask(mask: np.ndarray, margin: float = 0.0) -> np.ndarray | None:
    """Tight [x0, y0, x1, y1] around a mask (pixel edges) grown by `margin` px; None if empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    box = np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], dtype=np.float32)
    box += np.array([-margin, -margin, margin, margin], dtype=np.float32)
    return clip_box(box, mask.shape)


def interior_point(mask: np.ndarray) -> np.ndarray | None:
    """The (x, y) of the mask pixel farthest from its border; None if empty."""
    if not mask.any():
        return None
    from scipy.ndimage import distance_transform_edt

    dist = distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    y, x = np.unravel_index(np.argmax(dist), dist.shape)
    return np.array([x, y], dtype=np.float32)
