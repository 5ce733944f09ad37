"""Prompts simulated from reference labels, and Dice: measuring a model on your own data.

3D protocols (propagation from reference boxes):
  A: a box on the organ's middle slice, plus its slice range;
  B: a box on the middle slice only, so propagation must stop by itself;
  C: boxes on three slices (a quarter, half, three quarters through), plus the range.
"""

from __future__ import annotations

import numpy as np

from .orientation import slice_of
from .prompts import box_from_mask
from .propagate import ObjectPrompts, SlicePrompt


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two boolean masks; 1.0 when both are empty."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2 * np.logical_and(a, b).sum() / total)


def slice_box(mask2d: np.ndarray) -> np.ndarray:
    """Box [x0, y0, x1, y1] around a slice's reference mask: its first and last column and
    row indices, as the LiteMedSAM and SAM-Med2D evaluations take it."""
    box = box_from_mask(mask2d)
    return box - np.array([0, 0, 1, 1], np.float32)


def middle_slice(present: np.ndarray) -> int:
    """The middle of an object's slices as the public LiteMedSAM recipe takes it,
    `int((hi - lo) / 2 + lo)` of its first and last slice (the lower of the two middles of
    an even count); where the object is absent there, the nearest slice that holds it."""
    lo, hi = int(present[0]), int(present[-1])
    mid = int((hi - lo) / 2 + lo)
    return int(present[np.argmin(np.abs(present - mid))])


def protocol_objects(
    labels: np.ndarray, axis: int, protocol: str, names: dict[int, str] | None = None
) -> list[ObjectPrompts]:
    """ObjectPrompts for every label present, following protocol A, B or C."""
    ids = [int(i) for i in np.unique(labels) if i != 0]
    if names:
        ids = [i for i in ids if i in names]
    objects = []
    for oid in ids:
        present = np.flatnonzero(
            np.any(labels == oid, axis=tuple(a for a in range(3) if a != axis))
        )
        lo, hi = int(present[0]), int(present[-1])
        if protocol == "C":
            picks = sorted(
                {
                    present[len(present) // 4],
                    middle_slice(present),
                    present[(3 * len(present)) // 4],
                }
            )
        else:
            picks = [middle_slice(present)]
        slices = {
            int(i): SlicePrompt(box=slice_box(slice_of(labels, i, axis) == oid)) for i in picks
        }
        rng = None if protocol == "B" else (lo, hi)
        objects.append(ObjectPrompts(oid, slices, rng, (names or {}).get(oid, "")))
    return objects


def simulated_prompt_2d(mask: np.ndarray, kind: str, rng: np.random.Generator) -> dict:
    """SAM-Med2D's 2D evaluation prompts from a reference mask: a box, or 1/3/5 points
    sampled inside it (fixed seed for repeatability)."""
    if kind == "box":
        return {"box": slice_box(mask)}
    count = {"point1": 1, "point3": 3, "point5": 5}[kind]
    rows, cols = np.nonzero(mask)
    pick = rng.choice(len(rows), size=min(count, len(rows)), replace=False)
    points = np.stack([cols[pick], rows[pick]], axis=1).astype(np.float32)
    return {"point_coords": points, "point_labels": np.ones(len(points), np.int64)}


def official_chaining(
    volume: np.ndarray,
    obj: ObjectPrompts,
    model,
    axis: int = 2,
    affine: np.ndarray | None = None,
    preset: str = "abdomen",
    orientation: str = "radiological",
    cache=None,
    shift: int = 3,
) -> np.ndarray:
    """The public LiteMedSAM 3D recipe (`CVPR24_LiteMedSAM_infer.py`), as a baseline: the
    middle annotated slice's box, then on each next slice the box of the previous mask at
    256 scale grown by `shift` px; where the previous mask is empty, the middle slice's box
    again. Single-mask output, through the object's whole range. Returns a boolean volume.

    Its conventions, which move small structures' Dice by tenths: the middle slice's box is
    scaled to 256 and truncated to whole pixels; the previous mask is taken to 256 scale by
    OpenCV's INTER_AREA (as its `resize_longest_side`), every pixel above 0 counting; the
    grown box is clipped to [0, 256] of the padded input."""
    from .predictor import decode
    from .preprocess import resize_area, resized_shape
    from .propagate import volume_slices

    slices = volume_slices(model, volume, axis % 3, affine, preset, None, orientation, cache)
    raw_shape = slices.raw_shape
    view_shape = slices.view.view_shape(raw_shape)
    scale = 256 / max(view_shape)
    seed = sorted(obj.slices)[len(obj.slices) // 2]
    seed_box = slices.view.box_to_view(np.asarray(obj.slices[seed].box, np.float32), raw_shape)
    seed_box = np.trunc(seed_box * scale) / scale
    lo, hi = obj.range if obj.range is not None else (0, volume.shape[axis % 3] - 1)
    size_256 = resized_shape(*view_shape, 256)

    def box_256(mask: np.ndarray) -> np.ndarray | None:
        small = resize_area(mask.astype(np.uint8), size_256)
        ys, xs = np.nonzero(small)
        if len(xs) == 0:
            return None
        box = [xs.min() - shift, ys.min() - shift, xs.max() + shift, ys.max() + shift]
        return np.clip(np.array(box, np.float32), 0, 256) / scale  # back to view pixels

    def segment(index: int, box: np.ndarray) -> np.ndarray:
        emb = slices.embedding(index)
        low, _ = decode(model, emb, boxes=box[None], multimask_output=False)
        return (emb.geometry.logits_to_original(low)[0, 0] > 0).numpy()

    out = np.zeros(volume.shape, bool)
    masks = {seed: segment(seed, seed_box)}
    for direction, limit in ((1, hi), (-1, lo)):
        prev = masks[seed]
        for index in range(seed + direction, limit + direction, direction):
            box = box_256(prev)
            prev = segment(index, seed_box if box is None else box)
            masks[index] = prev
    for index, mask in masks.items():
        sl = [slice(None)] * 3
        sl[axis % 3] = index
        out[tuple(sl)] = slices.view.from_view(mask)
    return out
