"""Segment structures through a volume from prompts on one or a few slices.

From every annotated slice the mask is carried outward, one slice at a time (on slices
under 2 mm apart, one step of about 3 mm at a time, the slices between interpolated): the
previous mask gives the next slice's prompt (its box grown by a margin, optionally its
logits as a mask prompt and its innermost point). Between two annotated slices the gap is
filled from both ends. A walk stops when the mask vanishes, the model's predicted IoU or the
overlap with the previous slice falls below a threshold, or the object's slice range ends.
The objects' walks take turns slice by slice, so that objects on the same slice share one
decoder call.

Slices are shown to the model in the radiological orientation derived from the affine
(see `orientation`), and prompts and masks are mapped back exactly.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import torch

from .cache import EmbeddingCache
from .errors import Cancelled, ImageError, PromptError
from .intensity import intensity_range, prompt_window, resolve_preset, to_rgb, to_uint8
from .models import SamModel
from .objects import (  # noqa: F401 (re-exported: the engine's public names)
    ObjectPrompts,
    PropagationResult,
    PropagationSettings,
    SlicePrompt,
    check_objects_fit,
    check_settings,
    objects_from_json,
    objects_to_json,
)
from .orientation import (  # noqa: F401 (MAX_REACH re-exported)
    MAX_REACH,
    SliceView,
    pixels_within,
    slice_of,
    slice_view,
    slices_in,
    slices_within,
)
from .predictor import ImageEmbedding, ProgressCallback, decode, embed_slices
from .prompts import box_from_mask, check_boxes, check_points, clip_box, interior_point

MAX_ID = 65535
# Bytes of slices' 8-bit images kept while walking (256 slices of 512 x 512).
_GRAYS_BYTES = 64 << 20


class VolumeSlices:
    """The slices of a volume along one axis, as the model sees them, embedded on demand."""

    def __init__(
        self,
        model: SamModel,
        volume: np.ndarray,
        axis: int,
        view: SliceView,
        value_range: tuple[float, float],
        cache: EmbeddingCache | None,
        batch_size: int = 1,
    ) -> None:
        self.model, self.volume, self.axis, self.view = model, volume, axis, view
        self.value_range = value_range
        self.cache = cache if cache is not None else EmbeddingCache(max_bytes=2 << 30)
        self.batch_size = max(1, batch_size)
        self._embeddings: dict[int, ImageEmbedding] = {}
        self._grays: OrderedDict[int, np.ndarray] = OrderedDict()
        self._grays_lock = threading.Lock()
        self.count = volume.shape[axis]

    def raw(self, index: int) -> np.ndarray:
        # Every step reads its slices' grey levels several times (stopping rules, band).
        return slice_of(self.volume, index, self.axis)

    @property
    def raw_shape(self) -> tuple[int, int]:
        return tuple(s for a, s in enumerate(self.volume.shape) if a != self.axis)

    def gray(self, index: int) -> np.ndarray:
        """The slice as the model sees it, one 8-bit channel (read-only)."""
        # A walk reads each slice's grey levels several times (embedding lookup, band,
        # stopping rules), and every object's walk reads them again: kept up to a bound.
        # (A server's embed-ahead thread and its requests share one VolumeSlices.)
        with self._grays_lock:
            found = self._grays.get(index)
            if found is not None:
                self._grays.move_to_end(index)
                return found
        found = to_uint8(self.view.to_view(self.raw(index)), *self.value_range)
        found.flags.writeable = False
        with self._grays_lock:
            self._grays[index] = found
            while self._grays and len(self._grays) * found.nbytes > _GRAYS_BYTES:
                self._grays.popitem(last=False)
        return found

    def rgb(self, index: int) -> np.ndarray:
        return to_rgb(self.gray(index))

    def embedding(self, index: int, step: int = 1) -> ImageEmbedding:
        """Embedding of slice `index`; on a miss also embeds the next slices in direction `step`."""
        if index not in self._embeddings:
            batch = [index]
            nxt = index + step
            while len(batch) < self.batch_size and 0 <= nxt < self.count:
                if nxt not in self._embeddings:
                    batch.append(nxt)
                nxt += step
            done = embed_slices(self.model, [self.rgb(i) for i in batch], len(batch), self.cache)
            self._embeddings.update(zip(batch, done))
        return self._embeddings[index]


def _overlap(a: np.ndarray, b: np.ndarray, of: str, grow: int = 0) -> float:
    """Intersection of two masks over their union (IoU) or over the smaller one's area,
    after growing each by `grow` pixels (`_grown_both`)."""
    if grow > 0:
        a, b = _grown_both(a, b, grow)
    if of == "union":
        return _iou(a, b)
    smaller = min(a.sum(), b.sum())
    return 1.0 if smaller == 0 else float(np.logical_and(a, b).sum() / smaller)


def _grown_both(a: np.ndarray, b: np.ndarray, grow: int):
    """Both masks grown by `grow` pixels (4-connected steps), inside the box around them
    plus that border: the rest of the slice stays empty either way."""
    from scipy.ndimage import binary_dilation

    both = a | b
    if not both.any():
        return a, b
    rows, cols = np.nonzero(both)
    h, w = a.shape
    window = np.s_[
        max(rows.min() - grow, 0) : min(rows.max() + grow + 1, h),
        max(cols.min() - grow, 0) : min(cols.max() + grow + 1, w),
    ]
    return (
        binary_dilation(a[window], iterations=grow),
        binary_dilation(b[window], iterations=grow),
    )


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


# The share of the separate boxes' mask that one box around all parts must keep.
JOIN_COVER = 0.8


class _Walker:
    """Carries one object's masks from slice to slice."""

    def __init__(
        self, slices: VolumeSlices, settings: PropagationSettings, overlap_grow: int = 0
    ) -> None:
        self.slices, self.settings = slices, settings
        # pixels each mask grows by before the overlap stop compares them
        self.overlap_grow = overlap_grow
        shape = slices.view.view_shape(slices.raw_shape)
        self.view_shape = shape
        self.pixels_per_unit = max(shape) / 256.0
        self.band: tuple[float, float] | None = None

    def _best(self, low_res: torch.Tensor, iou: torch.Tensor, emb: ImageEmbedding):
        k = int(iou.argmax())
        row, col = divmod(k, iou.shape[1])
        logits = emb.geometry.logits_to_original(low_res[row : row + 1, col : col + 1])[0, 0]
        low = low_res[row : row + 1, col : col + 1][0]
        return (logits > 0).numpy(), float(iou[row, col]), low, logits.numpy()

    def from_prompt(self, index: int, prompt: SlicePrompt):
        """Mask of an annotated slice from the user's prompts (raw coordinates)."""
        raw_shape = self.slices.raw_shape
        if prompt.mask is not None:
            mask = np.asarray(prompt.mask, bool)
            if mask.shape != raw_shape:
                raise PromptError(
                    f"mask on slice {index} has shape {mask.shape}, expected {raw_shape}"
                )
            return self.slices.view.to_view(mask), 1.0, None, None
        size = raw_shape
        coords, labels = check_points(prompt.points, prompt.labels, size)
        boxes = check_boxes(prompt.box, size)
        if coords is None and boxes is None:
            raise PromptError(f"slice {index}: prompt has no box, points or mask")
        view = self.slices.view
        if coords is not None:
            coords = view.points_to_view(coords, raw_shape)[None]
            labels = labels[None]
        if boxes is not None:
            boxes = view.box_to_view(boxes[0], raw_shape)[None]
        if coords is None and boxes is not None and self.settings.box_agreement is not None:
            return self._agreeing(index, boxes[0])
        return self._decode(index, coords, labels, boxes)

    def _agreeing(self, index: int, box: np.ndarray):
        """(mask, score, low-res logits, logits) for a prompted box: the decoder's single
        mask, or, where its own box agrees with the prompt less than `box_agreement`, the
        candidate whose box agrees best (a box prompt says where the object's edges are).
        One decoder call gives all four masks."""
        emb = self.slices.embedding(index)
        low_res, iou = decode(self.slices.model, emb, None, None, box[None], None, None)
        found, agree = None, -1.0
        for k in range(low_res.shape[1]):  # the single mask first, then the three proposals
            logits = low_res[0:1, k : k + 1]
            full = emb.geometry.logits_to_original(logits)[0, 0].numpy()
            mask = full > 0
            candidate = box_iou(box_from_mask(mask), box)
            if candidate > agree:
                found, agree = (mask, float(iou[0, k]), logits[0], full), candidate
            if k == 0 and agree >= self.settings.box_agreement:
                break
        return found

    def from_box(self, index: int, box: np.ndarray):
        """Mask on slice `index` from one box in view pixels, inside the walk's band."""
        mask, score, low, logits = self._decode(
            index, None, None, np.asarray(box, np.float32)[None]
        )
        return self._in_band(index, mask), score, low, logits

    def _decode(self, index: int, coords, labels, boxes):
        emb = self.slices.embedding(index)
        low_res, iou = decode(
            self.slices.model,
            emb,
            coords,
            labels,
            boxes,
            None,
            multimask_output=coords is not None and boxes is None,
        )
        return self._best(low_res, iou, emb)

    def _grown_box(self, part: np.ndarray, margin: float | None = None) -> np.ndarray:
        """The box around one part of the previous mask, grown relative to its own size."""
        s = self.settings
        box = box_from_mask(part)
        floor = (s.box_margin if margin is None else margin) * self.pixels_per_unit
        mx = max(floor, s.box_margin_fraction * float(box[2] - box[0]))
        my = max(floor, s.box_margin_fraction * float(box[3] - box[1]))
        if s.box_margin_max is not None:
            cap = max(floor, s.box_margin_max * self.pixels_per_unit)
            mx, my = min(mx, cap), min(my, cap)
        return clip_box(box + np.array([-mx, -my, mx, my], np.float32), part.shape)

    def _zoom_region(self, boxes: np.ndarray):
        """(y0, y1, x0, x1) of the square to segment in when the boxes are small, else None."""
        s = self.settings
        if s.zoom_below <= 0:
            return None
        x0, y0 = boxes[:, 0].min(), boxes[:, 1].min()
        x1, y1 = boxes[:, 2].max(), boxes[:, 3].max()
        h, w = self.view_shape
        side = max(x1 - x0, y1 - y0)
        if side >= s.zoom_below * max(h, w):
            return None
        side = min(side * s.zoom_context, max(h, w))
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        left = int(np.clip(np.floor(cx - side / 2), 0, max(w - side, 0)))
        top = int(np.clip(np.floor(cy - side / 2), 0, max(h - side, 0)))
        return top, min(h, top + int(np.ceil(side))), left, min(w, left + int(np.ceil(side)))

    def _decoded(self, steps):
        """Run a generator of this class to its result, making each decoder call it yields."""
        try:
            request = next(steps)
            while True:
                emb, boxes, _ = request
                request = steps.send(_decode_boxes(self.slices.model, emb, boxes, self.settings))
        except StopIteration as done:
            return done.value

    def step(
        self,
        index: int,
        prev_mask: np.ndarray,
        prev_low_res,
        direction: int,
        strict=True,
        back: int | None = None,
        ref: tuple[int, np.ndarray] | None = None,
    ):
        """Mask on slice `index` from the mask on slice `back` (default: the one before, in
        `direction`); None where it should stop.

        A generator: its main decoder call, boxes alone on this slice's embedding, is yielded
        as (embedding, boxes, (direction, index)) and the (low-res logits, IoUs) are sent
        back, so that `propagate` can decode several objects' boxes on one slice in one call.

        `strict=False` (inside a slice range the user gave): the stopping rules never stop
        the walk; a non-empty mask is kept, and only an empty one returns None.

        Each sizeable connected part of the previous mask gets its own box (all in one
        decoder call) and the masks are united, so a structure that splits in two (a vessel
        at a bifurcation, an organ's two lobes) keeps both branches; parts closer together
        than `split_gap` share one box (see `_parts`).
        """
        s = self.settings
        back = index - direction if back is None else back
        parts = self._parts(prev_mask)
        found = yield from self._from_parts_steps(index, parts, direction, prev_low_res)
        mask = found[0]
        # The cycle check guards ranged walks, whose only failure is drift; a walk without
        # a range has the stopping rules, and a tighter mask there only walks it further.
        if not strict and s.cycle_margin is not None and mask.sum() >= s.min_area:
            alt = self._from_parts(index, parts, direction, prev_low_res, s.cycle_margin)
            if alt[0].sum() >= s.min_area and not np.array_equal(alt[0], mask):
                if self._back_iou(back, alt[0], prev_mask) > s.cycle_gain + self._back_iou(
                    back, mask, prev_mask
                ):
                    found = alt
                    mask = found[0]
        score = found[1]
        if mask.sum() < s.min_area:
            return None
        if not strict:
            return found
        if score < s.iou_threshold:
            return None
        ref_index, ref_mask = (back, prev_mask) if ref is None else ref
        if _overlap(mask, ref_mask, s.overlap_of, self.overlap_grow) < s.overlap_threshold:
            return None
        if s.intensity_change is not None:
            before = np.median(self.slices.gray(ref_index)[ref_mask])
            after = np.median(self.slices.gray(index)[mask])
            if abs(float(after) - float(before)) > s.intensity_change:
                return None
        return found

    def _in_band(self, index: int, mask: np.ndarray) -> np.ndarray:
        """`mask` without the pixels whose grey level is outside the object's band, except
        where what stays encloses them: the band trims the rim a grown box takes in, not the
        gas inside a bowel loop or the calcium inside a vessel's wall, which the model's
        mask holds and the object's outline encloses."""
        if self.band is None or not mask.any():
            return mask
        from scipy.ndimage import binary_fill_holes

        rows, cols = np.nonzero(mask)
        window = np.s_[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        gray = self.slices.gray(index)[window]
        kept = mask[window] & (gray >= self.band[0]) & (gray <= self.band[1])
        out = np.zeros_like(mask)
        out[window] = mask[window] & binary_fill_holes(kept)
        return out

    def set_band(self, index: int, mask: np.ndarray) -> None:
        """The grey-level band for the next step, from the mask on slice `index`.

        A box grown around the previous mask takes in some of the neighbourhood, and the
        model often fills part of it: the canal and bone around the spinal cord, fat beside
        a muscle. That excess widens the next box, which takes in more. Pixels far outside
        the grey levels of the previous slice's mask are dropped before the next box is
        taken. The band follows the walk slice by slice, so a gradual change along the
        object (an MR bias field, contrast fading along a vessel) moves it with it: a band
        fixed at the prompted slice lost the liver and spleen (0.93 -> 0.68, 0.96 -> 0.72)
        under a drift of 6 HU per slice. Its 5th and 95th percentiles leave out the mask's
        edge pixels, which mix with the neighbours."""
        self.band = None
        if self.settings.intensity_band is None or not mask.any():
            return
        lo, hi = np.percentile(self.slices.gray(index)[mask], [5, 95])
        self.band = (lo - self.settings.intensity_band, hi + self.settings.intensity_band)

    def _parts(self, mask: np.ndarray) -> list[np.ndarray]:
        """The parts of a carried mask that get a box each."""
        s = self.settings
        return _parts(mask, s.min_part_fraction, s.split_gap) if s.follow_splits else [mask]

    def _back_iou(self, index: int, mask: np.ndarray, prev_mask: np.ndarray) -> float:
        """How well `mask`, carried back to the slice it came from, gives that slice's mask."""
        back = self._from_parts(index, self._parts(mask), 0, None)[0]
        return _iou(back, prev_mask)

    def _joined(self, index, parts, direction, margin, mask, score):
        """The mask from one box around all `parts`, where it joins them; else None.

        Branches that meet (the aorta's ascending and descending limbs at the arch, veins
        at a confluence), followed with a box each, never take in what lies between them:
        each box grows only by its margin, and LiteMedSAM stops its mask short of the box
        even where the object goes on. The joined mask is kept where it has fewer parts
        than there were boxes, the model rates it at least as high as theirs, and it holds
        JOIN_COVER of what they found; elsewhere (branches apart, tissue between them) it
        is dropped. One more decoder call, on slices where the mask is in pieces."""
        joined = self._from_parts(index, [np.logical_or.reduce(parts)], direction, None, margin)
        if joined[1] < score or np.logical_and(joined[0], mask).sum() < JOIN_COVER * mask.sum():
            return None
        # last: its connected parts are the costliest of the three to find
        return joined if len(self._parts(joined[0])) < len(parts) else None

    def _jittered(self, emb: ImageEmbedding, boxes: np.ndarray, jitter: float):
        """(logits, IoUs) of each box as the mean over the box, the box shrunk by `jitter`
        view pixels a side and the box grown by as much, decoded in one call.

        A carried box is a guess: a pixel more or less of margin moves LiteMedSAM's mask by
        more than the object moves between slices, most where the object's edges are faint
        (a wide window, an MR), and each slice's error is the next one's prompt. The mean
        of the three logit maps is the mask the model gives for a box known to within
        `jitter`, not for one exact box."""
        k = len(boxes)
        grow = np.array([-jitter, -jitter, jitter, jitter], np.float32)
        shrunk = boxes - grow
        shrunk[:, 2:] = np.maximum(shrunk[:, 2:], shrunk[:, :2] + 1.0)  # never inside out
        grown = np.stack([clip_box(box, self.view_shape) for box in boxes + grow])
        low_res, iou = decode(
            self.slices.model,
            emb,
            None,
            None,
            np.concatenate([boxes, shrunk, grown]),
            None,
            self.settings.multimask,
        )
        # The score stays the given box's: the stopping rules and the composition read it
        # as before, and a shrunk box's low rating says nothing about the object.
        return low_res.view(3, k, *low_res.shape[1:]).mean(dim=0), iou.view(3, k, -1)[0]

    def _from_parts(self, index, parts, direction, prev_low_res, margin=None):
        """(mask, score, low-res logits, logits) on slice `index` from boxes around `parts`;
        the logits (view pixels, the highest of the parts' maps) rank the mask's pixels
        against other objects' where they overlap (`compose_by`)."""
        return self._decoded(self._from_parts_steps(index, parts, direction, prev_low_res, margin))

    def _from_parts_steps(self, index, parts, direction, prev_low_res, margin=None):
        """`_from_parts` as a generator that yields its decoder call where it is boxes
        alone on the slice's own embedding (see `step`)."""
        s = self.settings
        boxes = np.stack([self._grown_box(part, margin) for part in parts])
        k = len(boxes)
        region = self._zoom_region(boxes)
        mask_in = None
        if s.mask_prompt and prev_low_res is not None and region is None:
            mask_in = np.repeat(prev_low_res[None].numpy(), k, axis=0)
        model = self.slices.model
        points = labels = None
        if s.point_prompt:
            points = np.stack([interior_point(part)[None] for part in parts])
            labels = np.ones((k, 1), np.int64)
        if region is None:
            emb = self.slices.embedding(index, (direction or 1) * s.slice_step)
            offset = np.zeros(2, np.float32)
        else:
            y0, y1, x0, x1 = region
            crop = np.ascontiguousarray(self.slices.rgb(index)[y0:y1, x0:x1])
            emb = embed_slices(model, [crop], 1, self.slices.cache)[0]
            offset = np.array([x0, y0], np.float32)
            boxes = boxes - np.tile(offset, 2)
            if points is not None:
                points = points - offset
        if points is None and mask_in is None and s.box_jitter is None and region is None:
            low_res, iou = yield emb, boxes, (direction, index)
        elif s.box_jitter is None or points is not None or mask_in is not None:
            low_res, iou = decode(model, emb, points, labels, boxes, mask_in, s.multimask)
        else:
            low_res, iou = self._jittered(emb, boxes, s.box_jitter * self.pixels_per_unit)
        best = iou.argmax(dim=1)
        rows = torch.arange(k)
        low_res, iou = low_res[rows, best][:, None], iou[rows, best]
        logits = emb.geometry.logits_to_original(low_res)[:, 0].numpy()
        masks = logits > 0
        if region is not None:
            full = np.zeros((k, *self.view_shape), bool)
            full[:, y0:y1, x0:x1] = masks
            masks = full
            wide = np.full((k, *self.view_shape), -np.inf, np.float32)
            wide[:, y0:y1, x0:x1] = logits
            logits = wide
        mask = self._in_band(index, masks.any(axis=0))
        areas = masks.reshape(k, -1).sum(axis=1)
        score = float((iou.numpy() * areas).sum() / max(areas.sum(), 1))
        low = low_res.max(dim=0).values if region is None else None
        if k > 1 and s.join_parts:
            joined = self._joined(index, parts, direction, margin, mask, score)
            if joined is not None:
                return joined
        return mask, score, low, logits.max(axis=0)


def _decode_boxes(model, emb: ImageEmbedding, boxes: np.ndarray, settings) -> tuple:
    """(low-res logits, IoUs) for boxes alone on `emb`: a walk's step, or several walks'
    steps on one slice in one call. Masks are computed around the boxes only (the same
    masks, `decode`'s near_boxes), except where a step's logits become the next step's
    mask prompt."""
    near = not settings.mask_prompt
    return decode(model, emb, None, None, boxes, None, settings.multimask, near_boxes=near)


def box_iou(a: np.ndarray | None, b: np.ndarray) -> float:
    """IoU of two [x0, y0, x1, y1] boxes; 0 when `a` is None (an empty mask's box)."""
    if a is None:
        return 0.0
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(w, 0.0) * max(h, 0.0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def _advance(index: int, direction: int, limit: int, step: int) -> int:
    """The next slice to visit: the next multiple of `step` (so that all objects' walks
    visit, and embed, the same slices), but never past the walk's last slice, which is
    always visited."""
    nxt = (index // step + 1) * step if direction > 0 else -((-index // step) + 1) * step
    if (nxt - limit) * direction > 0 and (index - limit) * direction < 0:
        return limit
    return nxt


def fill_between(out: dict[int, tuple], step: int) -> None:
    """Fill the slices between two found masks at most `step` apart by shape-based
    interpolation: each slice takes the zero level of the two masks' signed distance maps,
    weighted by how near it lies to each. Its score is the lower of the two, and its
    pixels' logits the lower of the two masks' medians. A wider gap is a slice where
    nothing was found, and stays empty, as it does when every slice is walked."""
    found = sorted(i for i, (m, *_) in out.items() if m.any())
    for a, b in zip(found[:-1], found[1:]):
        if 1 < b - a <= step:
            interpolate(out, a, b)


def interpolate(out: dict[int, tuple], a: int, b: int) -> None:
    """Fill slices a+1..b-1 of `out` from its masks on slices a and b (see fill_between)."""
    (mask_a, score_a, kept_a), (mask_b, score_b, kept_b) = out[a], out[b]
    level = None
    if kept_a is not None and kept_b is not None:
        level = min(float(np.median(kept_a)), float(np.median(kept_b)))
    window, dist_a, dist_b = _signed_distances(mask_a, mask_b)
    for t in range(a + 1, b):
        w = (t - a) / (b - a)
        mask = np.zeros_like(mask_a)
        mask[window] = (1 - w) * dist_a + w * dist_b < 0
        kept = None if level is None else np.full(int(mask.sum()), level, np.float16)
        out[t] = (mask, min(score_a, score_b), kept)


def _kept_logits(mask: np.ndarray, logits: np.ndarray | None) -> np.ndarray | None:
    """The decoder's logits at the mask's pixels (float16, in the mask's pixel order), kept
    for the composition; None for a mask the user gave."""
    return None if logits is None else logits[mask].astype(np.float16)


def _signed_distances(a: np.ndarray, b: np.ndarray):
    """(window, signed distance of `a`, of `b`) inside the box around both masks plus a
    two-pixel border: negative inside, positive outside. The border is background, so the
    distances are those of the whole slice wherever the interpolated mask can lie (inside
    one of the two masks' box)."""
    from scipy.ndimage import distance_transform_edt

    rows, cols = np.nonzero(a | b)
    h, w = a.shape
    window = np.s_[
        max(rows.min() - 2, 0) : min(rows.max() + 3, h),
        max(cols.min() - 2, 0) : min(cols.max() + 3, w),
    ]

    def signed(mask):
        mask = mask[window]
        return distance_transform_edt(~mask) - distance_transform_edt(mask)

    return window, signed(a), signed(b)


def seed_box(slices: VolumeSlices, prompt: SlicePrompt, mask_view: np.ndarray) -> np.ndarray | None:
    """A box in view pixels that can prompt another slice than the seed's: the user's box,
    else the box around the mask found on the seed slice (points and masks belong to their
    own slice)."""
    if prompt.box is not None and prompt.mask is None:
        box = check_boxes(prompt.box, slices.raw_shape)[0]
        return slices.view.box_to_view(box, slices.raw_shape)
    return box_from_mask(mask_view)


def _parts(
    mask: np.ndarray, min_fraction: float, split_gap: float | None = None
) -> list[np.ndarray]:
    """Connected parts of a mask holding at least `min_fraction` of its largest part, each
    to be followed with a box of its own.

    With `split_gap`, parts closer to each other than that fraction of the smaller one's
    diameter (of the disc of its area) stay together under one box: two pieces of one organ
    whose middle the model missed are one object to recover, not two to follow apart."""
    from scipy.ndimage import distance_transform_edt, label
    from scipy.sparse.csgraph import connected_components

    labelled, count = label(mask)
    if count <= 1:
        return [mask]
    sizes = np.bincount(labelled.ravel())[1:]
    keep = np.flatnonzero(sizes >= min_fraction * sizes.max()) + 1
    parts = [labelled == i for i in keep]
    if split_gap is None or len(parts) < 2:
        return parts
    diameters = [2.0 * np.sqrt(sizes[i - 1] / np.pi) for i in keep]
    # Distances between the parts are measured inside the box around all of them (exact:
    # every part lies in it), so the cost follows the object's size, not the slice's.
    rows, cols = np.nonzero(np.logical_or.reduce(parts))
    window = np.s_[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    inside = [part[window] for part in parts]
    near = np.zeros((len(parts), len(parts)), bool)
    for i in range(len(parts) - 1):
        distance = distance_transform_edt(~inside[i])
        for j in range(i + 1, len(parts)):
            # the gap: background pixels between the two parts' nearest pixels
            gap = float(distance[inside[j]].min()) - 1.0
            near[i, j] = gap < split_gap * min(diameters[i], diameters[j])
    count, group = connected_components(near, directed=False)
    return [np.isin(labelled, keep[group == g]) for g in range(count)]


def with_object_windows(
    volume: np.ndarray, axis: int, objects: list[ObjectPrompts], own: str, affine=None
):
    """`auto`: each object without a window of its own gets the one its first prompted
    slice's box asks for: on a CT a standard window (lung for a lung lobe, bone for a
    vertebra), on other scans one from the box's grey levels (`intensity.box_window`).
    `own` is `resolve_preset(volume, "auto")`; `affine` the volume's voxel-to-mm matrix
    (`intensity.prompt_window`)."""
    out = []
    for obj in objects:
        if obj.window is None and obj.slices:
            index = sorted(obj.slices)[0]
            if 0 <= index < volume.shape[axis]:
                window = prompt_window(volume, axis, index, obj.slices[index], own, affine)
                if window is not None:
                    obj = replace(obj, window=window)
        out.append(obj)
    return out


def propagate(
    volume: np.ndarray,
    objects: list[ObjectPrompts],
    model: SamModel,
    axis: int = 2,
    affine: np.ndarray | None = None,
    preset: str = "auto",
    value_range: tuple[float, float] | None = None,
    orientation: str = "radiological",
    settings: PropagationSettings | None = None,
    cache: EmbeddingCache | None = None,
    batch_size: int = 1,
    progress: ProgressCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> PropagationResult:
    """Segment each object through `volume` along `axis` from its prompts.

    `volume` is in voxel order with `affine` (voxel -> RAS mm, used only to orient slices
    radiologically; `orientation="array"` keeps raw slices). Returns a label volume of the
    same shape (objects' ids; where objects overlap, `settings.compose_by` says who wins), per-slice
    scores, the slice range each object reached, and whether the run was cancelled (then
    the labels hold exactly the slices finished before).
    """
    volume = np.asarray(volume)
    axis = _checked_axis(volume, axis, "propagation needs a 3D volume")
    if not objects:
        raise PromptError("no objects to propagate")
    n = volume.shape[axis]
    ids = [o.id for o in objects]
    # Labels are stored as 8- or 16-bit integers (as DICOM SEG numbers its segments).
    if len(set(ids)) != len(ids) or any(not 0 < i <= MAX_ID for i in ids):
        raise PromptError(f"object ids {ids}: expected distinct integers from 1 to {MAX_ID}")
    check_objects_fit(objects, volume.shape, axis)
    settings = settings or PropagationSettings()
    check_settings(settings)
    reach = slices_within(settings.step_distance, affine, axis)
    drawn_reach = slices_in(settings.interpolate_drawn, affine, axis)
    step = settings.slice_step
    if step is None:
        step = reach
        settings = replace(settings, slice_step=step)
    resolved = resolve_preset(volume, preset)  # once: `auto` reads the whole volume
    if preset == "auto":
        objects = with_object_windows(volume, axis, objects, resolved, affine)
    slices = volume_slices(
        model, volume, axis, affine, preset, value_range, orientation, cache, batch_size
    )
    grow = pixels_within(settings.overlap_tolerance, affine, axis, slices.view)
    # A range given that is the preset's own (the server and napari pass the session's)
    # still names the preset; only another range is "custom".
    shown = resolved
    if value_range is not None and not np.allclose(value_range, intensity_range(volume, resolved)):
        shown = "custom"
    windows = {o.id: o.window or shown for o in objects}
    views = {slices.value_range: slices}

    def slices_for(obj):
        """Slices in the object's own window, when it has one (embedded separately, once
        per distinct window)."""
        if obj.window is None:
            return slices
        key = intensity_range(volume, obj.window)
        if key not in views:
            views[key] = volume_slices(
                model, volume, axis, affine, obj.window, key, orientation, cache, batch_size
            )
        return views[key]

    spans = {o.id: (o.range or (0, n - 1)) for o in objects}
    total = sum(hi - lo + 1 for lo, hi in spans.values())
    # per object: slice -> (mask, predicted IoU, logits at the mask's pixels or None)
    results: dict[int, dict[int, tuple]] = {o.id: {} for o in objects}
    seconds = {o.id: 0.0 for o in objects}
    counted = {o.id: 0 for o in objects}  # slices of each object's span reached so far
    cancelled = False

    def report() -> None:
        if progress is not None:
            done = sum(min(counted[i], hi - lo + 1) for i, (lo, hi) in spans.items())
            progress(min(done, total), total)

    def check_stop() -> None:
        if should_stop is not None and should_stop():
            raise Cancelled("propagation cancelled")

    def walk(obj):
        """One object's seeds and walks; a generator that yields its walk's decoder calls
        (`_Walker.step`), so that objects on the same slice share one."""
        lo, hi = spans[obj.id]
        obj_slices = slices_for(obj)
        # a walker per object: it carries the object's intensity band
        walker = _Walker(obj_slices, settings, grow)
        out = results[obj.id]
        seeds = {}
        for index in sorted(obj.slices):
            check_stop()
            mask, score, low, logits = walker.from_prompt(index, obj.slices[index])
            seeds[index] = (mask, low)
            out[index] = (mask, score, _kept_logits(mask, logits))
            counted[obj.id] += 1
        # Walks: outward from the first and last seeds, and from both ends of each gap,
        # but a short gap between two drawn masks is interpolated (`interpolate_drawn`).
        ordered = sorted(seeds)
        walks = [(ordered[0], -1, lo)]
        for a, b in zip(ordered[:-1], ordered[1:]):
            drawn = obj.slices[a].mask is not None and obj.slices[b].mask is not None
            if drawn and b - a <= drawn_reach and seeds[a][0].any() and seeds[b][0].any():
                interpolate(out, a, b)
                counted[obj.id] += b - a - 1
                continue
            mid = (a + b) // 2
            walks += [(a, 1, mid), (b, -1, mid + 1)]
        walks.append((ordered[-1], 1, hi))
        # With a range the user has said where the object is: the walk goes through all
        # of it. Where the model finds nothing from the previous mask, the seed's box is
        # tried on that slice (the box around the seed's mask when it was given by points
        # or a mask, which belong to their own slice), and the walk goes on from the
        # last mask found.
        strict = obj.range is None
        retry_boxes = {i: seed_box(obj_slices, obj.slices[i], seeds[i][0]) for i in seeds}
        for seed, direction, limit in walks:
            mask, low = seeds[seed]
            walker.set_band(seed, mask)
            # `back`: the slice the carried mask is on; `last`: the furthest visited
            back = last = seed
            trail = [(seed, mask)]
            stride = step
            index = _advance(seed, direction, limit, stride)
            while (index - limit) * direction <= 0 and 0 <= index < n:
                check_stop()
                if not mask.any():
                    break
                span = max(reach, abs(index - back))
                ref = next(t for t in trail if abs(index - t[0]) <= span)
                stepped = yield from walker.step(index, mask, low, direction, strict, back, ref)
                if stepped is None and not strict and retry_boxes[seed] is not None:
                    found, score, _, logits = walker.from_box(index, retry_boxes[seed])
                    stepped = (found, score, None, logits) if found.any() else None
                if stepped is None and stride > 1 and abs(index - back) > 1:
                    # Nothing where a stepped walk landed: the object may end (or be
                    # lost) in the slices it skipped, so those are walked one by one.
                    stride, index = 1, back + direction
                    continue
                if stepped is None and strict:
                    break
                if stepped is not None:
                    mask, score, low, logits = stepped
                    out[index] = (mask, score, _kept_logits(mask, logits))
                    walker.set_band(index, mask)
                    back, stride = index, step
                    trail = [t for t in trail if abs(index - t[0]) <= reach] + [(index, mask)]
                if (index - last) * direction > 0:
                    counted[obj.id] += abs(index - last)
                    last = index
                index = _advance(index, direction, limit, stride)
        if step > 1:
            fill_between(out, step)
        counted[obj.id] = hi - lo + 1  # an object that stopped early skips the rest of its span

    # The objects' walks take turns, and every walk waiting on the same slice's embedding
    # is decoded in the same call (one call of four boxes costs about what two or three
    # single calls do). The next turn goes to the walk that is furthest behind in a sweep:
    # walks downwards from the highest slice, then walks upwards from the lowest (then the
    # objects' order), so that walks meet on their way and go on in step. Each object's own
    # sequence of steps is what it would be alone.
    running = {o.id: walk(o) for o in objects}
    # object id -> (embedding, boxes, (direction, slice)) of the call its walk waits on
    waiting: dict[int, tuple[ImageEmbedding, np.ndarray, tuple[int, int]]] = {}
    rank = {o.id: r for r, o in enumerate(objects)}

    def turn(oid: int) -> tuple[int, int, int]:
        direction, index = waiting[oid][2]
        return (0, -index, rank[oid]) if direction < 0 else (1, index, rank[oid])

    def resume(oid: int, sent=None) -> None:
        start = time.perf_counter()
        try:
            waiting[oid] = running[oid].send(sent)
        except StopIteration:
            waiting.pop(oid, None)
        seconds[oid] += time.perf_counter() - start
        report()

    if progress is not None:
        progress(0, total)
    try:
        for obj in objects:
            resume(obj.id)
        while waiting:  # each walk asks `should_stop` before each of its steps
            emb = waiting[min(waiting, key=turn)][0]
            group = [o.id for o in objects if o.id in waiting and waiting[o.id][0] is emb]
            boxes = [waiting[i][1] for i in group]
            start = time.perf_counter()
            low_res, iou = _decode_boxes(model, emb, np.concatenate(boxes), settings)
            share = (time.perf_counter() - start) / len(group)
            first = 0
            for oid, part in zip(group, boxes):
                seconds[oid] += share
                rows = slice(first, first + len(part))
                first += len(part)
                resume(oid, (low_res[rows], iou[rows]))
    except Cancelled:
        cancelled = True

    result = _compose(
        volume.shape, axis, slices.view, objects, results, seconds, cancelled, settings.compose_by
    )
    result.windows = windows
    result.slice_step = step
    return result


def segment_slice(
    volume: np.ndarray,
    index: int,
    prompt: SlicePrompt,
    model: SamModel,
    axis: int = 2,
    affine: np.ndarray | None = None,
    preset: str = "auto",
    value_range: tuple[float, float] | None = None,
    orientation: str = "radiological",
    cache: EmbeddingCache | None = None,
    settings: PropagationSettings | None = None,
) -> tuple[np.ndarray, float]:
    """One slice of a volume from prompts in its raw (x, y) pixels: (mask, predicted IoU).

    `settings`: those of a propagation that a slice applies (`box_agreement`).

    The slice is windowed with the whole volume's intensity range and shown to the model in
    the same orientation that `propagate` uses, so a slice and its propagation agree; with
    `auto` the window is the one the box asks for (on a CT a standard window, on other
    scans one from the box's own grey levels), as `propagate` gives an object prompted
    with this box first.
    """
    volume = np.asarray(volume)
    axis = _checked_axis(volume, axis, "expected a 3D volume")
    if not 0 <= index < volume.shape[axis]:
        raise PromptError(
            f"slice {index} is outside the volume's 0..{volume.shape[axis] - 1} along axis {axis}"
        )
    if preset == "auto":
        window = prompt_window(volume, axis, index, prompt, affine=affine)
        if window is not None:
            preset, value_range = window, intensity_range(volume, window)
    slices = volume_slices(model, volume, axis, affine, preset, value_range, orientation, cache)
    mask, score = _Walker(slices, settings or PropagationSettings()).from_prompt(index, prompt)[:2]
    return slices.view.from_view(mask), score


def _checked_axis(volume: np.ndarray, axis: int, need: str) -> int:
    if volume.ndim != 3:
        raise ImageError(f"volume of shape {volume.shape}: {need}")
    if not -3 <= axis < 3:
        raise ImageError(f"slice axis {axis}: expected 0, 1 or 2 for a 3D volume")
    return axis % 3


def volume_slices(
    model, volume, axis, affine, preset, value_range, orientation, cache, batch_size=1
) -> VolumeSlices:
    """The volume's slices as the model sees them: one intensity range, one orientation."""
    if value_range is None:
        value_range = intensity_range(volume, preset)
    view = slice_view(affine, axis, orientation)
    return VolumeSlices(model, volume, axis, view, value_range, cache, batch_size)


def _compose(
    shape, axis, view, objects, results, seconds, cancelled, compose_by="score"
) -> PropagationResult:
    """One label volume from each object's masks. Where masks overlap, `compose_by` says who
    takes a pixel: "score", the mask with the higher predicted IoU; "logit", the object
    whose decoder logit there is higher; "both", the higher log sigmoid(logit) + log IoU
    (the pixel's own confidence times its mask's). Under the last two a mask the user drew
    always wins; under "score" it counts as IoU 1."""
    n = shape[axis]
    dtype = np.uint8 if max(o.id for o in objects) < 256 else np.uint16
    labels = np.zeros(shape, dtype=dtype)
    best = np.full(shape, -np.inf, dtype=np.float32)
    scores, reached = {}, {}
    for obj in objects:
        per = np.full(n, np.nan, dtype=np.float32)
        hits = []
        given = {i for i, p in obj.slices.items() if p.mask is not None}
        for index, (mask_view, score, kept) in results[obj.id].items():
            raw = view.from_view(mask_view)
            if not raw.any():
                continue
            # A slice filled between two given masks has no prediction of its own: no score
            # (review ranks it by its neighbours; its pixels still weigh as given ones).
            per[index] = score if kept is not None or index in given else np.nan
            hits.append(index)
            sl = [slice(None)] * 3
            sl[axis] = index
            sl = tuple(sl)
            key = _pixel_keys(mask_view, score, kept, compose_by)
            key = key if np.isscalar(key) else view.from_view(key)
            win = raw & (key > best[sl])
            labels[sl][win] = obj.id
            best[sl][win] = key if np.isscalar(key) else key[win]
        scores[obj.id] = per
        reached[obj.id] = (min(hits), max(hits)) if hits else None
    return PropagationResult(labels, scores, reached, cancelled, seconds)


def _pixel_keys(mask_view, score: float, kept, compose_by: str):
    """What a mask's pixels weigh against another object's (a number, or a view-sized map)."""
    if kept is None:
        return np.inf if compose_by != "score" else score
    if compose_by == "score":
        return score
    # Only the mask's pixels are read (`_compose`): the rest of the map stays 0.
    kept = kept.astype(np.float32)
    if compose_by == "logit":
        keys = np.zeros(mask_view.shape, np.float32)
        keys[mask_view] = kept
        return keys
    keys = np.zeros(mask_view.shape, np.float64)
    # log sigmoid(x) = -log(1 + exp(-x)), written to stay finite for large |x|
    keys[mask_view] = -np.logaddexp(0.0, -kept) + np.log(max(score, 1e-6))
    return keys
