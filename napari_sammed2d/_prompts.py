"""napari layers to core prompts, in the image layer's data coordinates.

Points and shapes are read through the layers' own transforms (data -> world -> image
data), so `scale`, `translate` and affines on any layer are honoured. napari and SAM both
put pixel centres on integer coordinates, so no shift is needed.
"""

from __future__ import annotations

import numpy as np

from sammed2d.propagate import SlicePrompt


def to_image_coords(layer, image_layer, coords: np.ndarray) -> np.ndarray:
    """(N, D) coordinates in `layer`'s data space -> (N, image.ndim) in the image's."""
    coords = np.atleast_2d(np.asarray(coords, dtype=float))
    if len(coords) == 0:
        return np.zeros((0, image_layer.ndim))
    world = np.array([layer.data_to_world(c) for c in coords])
    return np.array([image_layer.world_to_data(w) for w in world])


def slice_prompts(
    image_layer, points_layer, shapes_layer, object_id: int, axis: int | None
) -> dict[int | None, SlicePrompt]:
    """Prompts of one object, grouped by the slice they lie on (None for a 2D image)."""
    ndim = image_layer.ndim  # napari counts spatial axes only, RGB channels excluded
    plane = [a for a in range(ndim) if a != axis][-2:]
    out: dict[int | None, SlicePrompt] = {}

    def slot(coord):
        return None if axis is None else int(round(coord[axis]))

    if points_layer is not None and len(points_layer.data):
        feats = points_layer.features
        mine = np.asarray(feats["object"]) == object_id
        coords = to_image_coords(points_layer, image_layer, points_layer.data[mine])
        positive = np.asarray(feats["positive"])[mine]
        for c, pos in zip(coords, positive):
            p = out.setdefault(slot(c), SlicePrompt())
            xy = np.array([[c[plane[1]], c[plane[0]]]])
            p.points = xy if p.points is None else np.vstack([p.points, xy])
            lab = np.array([1 if pos else 0])
            p.labels = lab if p.labels is None else np.concatenate([p.labels, lab])
    if shapes_layer is not None and len(shapes_layer.data):
        feats = shapes_layer.features
        for i, (verts, kind) in enumerate(zip(shapes_layer.data, shapes_layer.shape_type)):
            if kind != "rectangle" or int(feats["object"].iloc[i]) != object_id:
                continue
            coords = to_image_coords(shapes_layer, image_layer, verts)
            rows, cols = coords[:, plane[0]], coords[:, plane[1]]
            p = out.setdefault(slot(coords[0]), SlicePrompt())
            # the last rectangle drawn on a slice wins: one box per object and slice
            p.box = np.array([cols.min(), rows.min(), cols.max(), rows.max()])
    return out


def clip_box_to(prompt: SlicePrompt, shape: tuple[int, int]) -> SlicePrompt:
    """A rectangle drawn past the image edge is clipped rather than refused."""
    if prompt.box is not None:
        h, w = shape
        prompt.box = np.clip(prompt.box, 0, [w, h, w, h]).astype(np.float32)
    return prompt
