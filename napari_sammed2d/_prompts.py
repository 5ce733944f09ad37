"""napari layers to core prompts, in the image layer's data coordinates.

Points and shapes are read through the layers' own transforms (data -> world -> image
data), so `scale`, `translate` and affines on any layer are honoured. napari and SAM both
put pixel centres on integer coordinates, so no shift is needed.
"""

from __future__ import annotations

import numpy as np

from sammed2d.objects import SlicePrompt


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


def swap_xy(prompt: SlicePrompt) -> SlicePrompt:
    """The same prompt with x and y exchanged (the slice's two axes in the other order)."""
    box = None if prompt.box is None else np.asarray(prompt.box, float)[[1, 0, 3, 2]]
    points = None if prompt.points is None else np.asarray(prompt.points, float)[:, ::-1]
    return SlicePrompt(box=box, points=points, labels=prompt.labels)


def reorder_objects(axis: int, objects, ndim: int = 3):
    """Prompts between a layer from our reader, whose axes are the file's (k, j, i), and the
    file's voxel order (i, j, k) that the CLI uses: the slice axis maps to 2 - axis and the
    remaining two axes swap, so x and y swap. The mapping is its own inverse."""
    from dataclasses import replace

    if ndim != 3:
        return axis, objects
    out = [replace(obj, slices={k: swap_xy(p) for k, p in obj.slices.items()}) for obj in objects]
    return 2 - axis, out


def add_prompt_shapes(points_layer, shapes_layer, axis: int, objects) -> None:
    """Put saved prompts back as rectangles and points, in the layers' data coordinates
    (which are the image's: the prompt layers share its scale and translate)."""
    ndim = shapes_layer.ndim
    plane = [a for a in range(ndim) if a != axis]
    for obj in objects:
        for index, p in obj.slices.items():
            if p.box is not None:
                x0, y0, x1, y1 = (float(v) for v in p.box)
                corners = []
                for y, x in ((y0, x0), (y0, x1), (y1, x1), (y1, x0)):
                    c = np.zeros(ndim)
                    c[axis], c[plane[0]], c[plane[1]] = index, y, x
                    corners.append(c)
                shapes_layer.feature_defaults["object"] = obj.id
                shapes_layer.add_rectangles(np.array(corners))
            if p.points is not None:
                for (x, y), label in zip(np.asarray(p.points), np.asarray(p.labels)):
                    c = np.zeros(ndim)
                    c[axis], c[plane[0]], c[plane[1]] = index, y, x
                    points_layer.feature_defaults["object"] = obj.id
                    points_layer.feature_defaults["positive"] = bool(label)
                    points_layer.add(c[None])
