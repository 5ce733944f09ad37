"""Objects to segment and what propagation returns: plain data, no torch.

These travel between the engine, the prompt files, the remote server and its clients, so a
client that only sends prompts and receives labels needs neither torch nor the models.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field, fields

import numpy as np

from .errors import PromptError
from .intensity import WINDOW_WORDS, is_window
from .prompts import check_boxes, check_points


@dataclass
class SlicePrompt:
    """Prompts on one slice, in its raw (x, y) pixels: x indexes the later axis, y the earlier."""

    box: np.ndarray | None = None
    points: np.ndarray | None = None
    labels: np.ndarray | None = None
    mask: np.ndarray | None = None  # a finished 2D mask for this slice (taken as given)


@dataclass
class ObjectPrompts:
    id: int
    slices: dict[int, SlicePrompt]
    range: tuple[int, int] | None = None  # inclusive; None: until the object stops by itself
    name: str = ""
    color: tuple[int, int, int] | None = None  # sRGB 0-255 for display and export
    window: str | None = None  # its own intensity preset (a lung lobe in a lung window)


@dataclass(frozen=True)
class PropagationSettings:
    """Defaults chosen by leave-one-structure-out on the fourteen structures of the
    TotalSegmentator example CT, each scored in its CT window and in the percentile window
    (MR's default, a low-contrast view of the same CT): benchmarks/choose_defaults.py
    --grid capped-band --windows auto percentile; README, Performance; docs/measurements.md."""

    # Growth of the previous mask's box on each side: `box_margin_fraction` of the box's own
    # width (height), at least `box_margin` and at most `box_margin_max` pixels at 256 px per
    # longest side. A small object gets a tight box (3 px: beside the spinal cord lies bone)
    # and a large one room to grow (5 px); without the bound the margin feeds back on itself
    # (a mask that takes in background widens the next box, which takes in more).
    box_margin: float = 3.0
    box_margin_fraction: float = 0.1
    box_margin_max: float | None = 5.0
    # Zoom: where the boxes span less than `zoom_below` of the slice's longest side, the
    # slice is segmented inside a square `zoom_context` times their size (embedded on its
    # own), so a small structure gets the model's full input resolution. 0: never (measured
    # worse with LiteMedSAM: docs/measurements.md).
    zoom_below: float = 0.0
    zoom_context: float = 3.0
    # Grey levels (8-bit, of the object's window) beyond the 5th-95th percentiles of the
    # previous slice's mask: pixels of the next mask outside that band are dropped before
    # its box is taken (None: off). Relative to the window, and it follows the walk, so a
    # gradual change of grey level along the object moves it.
    intensity_band: float | None = 20.0
    mask_prompt: bool = False  # also feed the previous slice's logits as a mask prompt
    point_prompt: bool = False  # also try the previous mask's innermost point
    min_area: int = 1  # pixels; a smaller mask counts as vanished
    iou_threshold: float = 0.5  # stop when the predicted IoU falls below this
    overlap_threshold: float = 0.3  # stop when IoU with the previous slice's mask falls below
    # Before the overlap is measured, both masks grow by this many mm across the slice
    # (whole pixels, rounded; 1 pixel without an affine; None: not at all). A boundary
    # moves a pixel or two between neighbouring slices however small the structure, and on
    # a 25-pixel spinal cord such a move alone takes the IoU under the threshold. Measured
    # and left off: 6 mm with the threshold at 0.5 (chosen by leave-one-structure-out) takes
    # the CT's protocol B from 0.663 to 0.692 but loses 0.020 on 1 mm slices, where the
    # walks run past the structures' ends (docs/measurements.md, "Overlap tolerance").
    overlap_tolerance: float | None = None
    # The overlap measured: "union" (IoU) or "smaller" (the intersection over the smaller
    # mask, blind to growth and shrinkage; measured and not kept, docs/measurements.md).
    overlap_of: str = "union"
    multimask: bool = False  # let the decoder propose three masks and keep the best
    follow_splits: bool = True  # one box per connected part of the previous mask
    min_part_fraction: float = 0.1  # smaller parts (of the largest) are not followed
    # Parts closer together than this fraction of the smaller one's diameter (of the disc of
    # its area) share one box; None: every part its own box. Two pieces of one organ whose
    # middle the model missed are then recovered together instead of followed apart
    # (benchmarks/choose_defaults.py --grid split).
    split_gap: float | None = 0.25
    # Where parts are followed with a box each, they are also decoded under one box, and
    # that mask is kept where it joins them (`_Walker._joined`): branches that meet, as the
    # aorta's limbs at the arch, are one object again.
    join_parts: bool = True
    # Stop when the median 8-bit intensity under the mask jumps by more than this from the
    # previous slice: the mask has left the structure for its surroundings.
    intensity_change: float | None = 40.0
    # Cycle check of ranged walks: also decode with boxes grown by this margin (px at 256)
    # and keep that mask where, carried back to the previous slice, it gives that slice's
    # mask better. None: off (measured and not kept, docs/measurements.md).
    cycle_margin: float | None = None
    cycle_gain: float = 0.0  # by at least this much IoU
    # Each carried box is also decoded shrunk and grown by this many px at 256, in the same
    # decoder call, and the three logit maps are averaged (`_Walker._jittered`; three
    # times the decoder's work). None: one box. Measured and not kept: it helps the
    # percentile window and the MR-like stand-in, but costs the spleen and, on 1 mm
    # slices, protocol B (docs/measurements.md, "Jittered boxes").
    box_jitter: float | None = None
    # A box prompt is its object's bounding box. Where the decoder's mask for a prompted box
    # has a box of its own that overlaps it by less than this IoU, the one of the decoder's
    # three other candidates (from the same call) whose box agrees best is kept, if it
    # agrees better (benchmarks/choose_defaults.py --grid agreement,
    # benchmarks/box_agreement.py). None: the single mask, always.
    box_agreement: float | None = 0.6
    # Walk the slices whose index is a multiple of `slice_step` (the same ones for every
    # object) and fill the slices between two found masks by shape-based interpolation
    # (signed distances), as the public LiteMedSAM recipe offers. Walks still visit their
    # seeds and the ends of their range, and where a walk finds nothing it walks the slices
    # it skipped one by one. 1: every slice. None: as many slices as `step_distance` holds
    # (at least 1), so every slice of a scan with 3 mm slices or thicker.
    slice_step: int | None = None
    # Where two objects' masks overlap on a slice, who takes the pixel: "both" the higher
    # log sigmoid(logit) + log IoU, the pixel's own confidence times its mask's; "score" the
    # mask with the higher predicted IoU; "logit" the higher decoder logit at that pixel
    # (propagate._compose). Chosen by leave-one-structure-out among the rules that keep the
    # four organs and the views the grid does not hold (README, Performance).
    compose_by: str = "both"
    # The distance (mm along the slice axis) the other defaults were chosen at: the slices
    # of the TotalSegmentator example CT are 3 mm apart. A walk steps about this far (with
    # `slice_step` None), and the stopping rules above compare a mask with the one its walk
    # found about this far back (at least the previous slice visited), so that a threshold
    # means the same change whatever the slice thickness. Between 1 mm slices an object
    # changes a third as much from one to the next, and each step is one more chance to
    # drift: walked slice by slice with per-slice rules, the fourteen structures resampled
    # to 1 mm scored 0.616 (A) and 0.514 (B), in 3 mm steps 0.657 and 0.631
    # (benchmarks/propagation.py --thin 3). None, or a volume without an affine: slice by
    # slice.
    step_distance: float | None = 3.0
    # Between two slices whose masks were given (drawn by hand, or labels opened from a
    # file: `objects_from_labels`), at most this many mm apart, the slices take the
    # shape-based interpolation of the two drawings instead of the model's walk. Chosen by
    # leave-one-structure-out on the fourteen structures drawn every 2, 3, 5 and 8 slices
    # (6-24 mm), in the CT's window and on the MR-like stand-in (benchmarks/seeds.py): every
    # structure picked the widest gap measured, 24 mm. The model walking the gaps lost on the
    # MR-like view by 0.10-0.14 at every spacing, and won on the CT only at 15 and 24 mm (by
    # 0.016 and 0.025). Wider gaps, unmeasured, are walked. None, or a volume without an
    # affine: always walked.
    interpolate_drawn: float | None = 25.0


OVERLAPS_OF = ("union", "smaller")
COMPOSE_BY = ("score", "logit", "both")

# What each setting may hold: a kind ("number": a finite real; "whole": an integer;
# "flag": bool; or a tuple of choices), the lowest and highest value (None: unbounded),
# whether the lowest is excluded, and the words of the error. A setting typed `| None`
# may also be None.
_LIMITS = {
    "box_margin": ("number", 0, None, False, "a number of px at 256, 0 or more"),
    "box_margin_fraction": ("number", 0, None, False, "a fraction of the box, 0 or more"),
    "box_margin_max": ("number", 0, None, False, "a number of px at 256, 0 or more"),
    "zoom_below": ("number", 0, 1, False, "a fraction of the slice from 0 to 1"),
    "zoom_context": ("number", 1, None, False, "a factor of 1 or more"),
    "intensity_band": ("number", 0, None, False, "a number of grey levels, 0 or more"),
    "mask_prompt": ("flag", None, None, False, "true or false"),
    "point_prompt": ("flag", None, None, False, "true or false"),
    "min_area": ("whole", 0, None, False, "a whole number of pixels, 0 or more"),
    "iou_threshold": ("number", 0, 1, False, "a number from 0 to 1"),
    "overlap_threshold": ("number", 0, 1, False, "a number from 0 to 1"),
    "overlap_tolerance": ("number", 0, None, False, "a number of mm, 0 or more"),
    "overlap_of": (OVERLAPS_OF, None, None, False, " or ".join(OVERLAPS_OF)),
    "multimask": ("flag", None, None, False, "true or false"),
    "follow_splits": ("flag", None, None, False, "true or false"),
    "min_part_fraction": ("number", 0, 1, False, "a fraction from 0 to 1"),
    "split_gap": ("number", 0, None, False, "a fraction of a diameter, 0 or more"),
    "join_parts": ("flag", None, None, False, "true or false"),
    "intensity_change": ("number", 0, None, False, "a number of grey levels, 0 or more"),
    "cycle_margin": ("number", 0, None, False, "a number of px at 256, 0 or more"),
    "cycle_gain": ("number", None, None, False, "a number"),
    "box_jitter": ("number", 0, None, True, "a positive number of px at 256"),
    "box_agreement": ("number", 0, 1, False, "a number from 0 to 1"),
    "slice_step": ("whole", 1, None, False, "a whole number of slices, 1 or more"),
    "compose_by": (COMPOSE_BY, None, None, False, ", ".join(COMPOSE_BY)),
    "step_distance": ("number", 0, None, True, "a positive number of mm"),
    "interpolate_drawn": ("number", 0, None, False, "a number of mm, 0 or more"),
}


def check_settings(settings: PropagationSettings) -> None:
    """A PromptError naming the first setting whose value its kind or range does not allow
    (a prompts file or a client may send any JSON value)."""
    for f in fields(settings):
        value = getattr(settings, f.name)
        if value is None and "None" in str(f.type):
            continue
        kind, low, high, open_low, words = _LIMITS[f.name]
        if isinstance(kind, tuple):
            good = isinstance(value, str) and value in kind
        elif kind == "flag":
            good = isinstance(value, bool)
        else:
            types = numbers.Integral if kind == "whole" else numbers.Real
            good = (
                isinstance(value, types)
                and not isinstance(value, bool)
                and math.isfinite(value)
                and (low is None or value > low or (value == low and not open_low))
                and (high is None or value <= high)
            )
        if not good:
            raise PromptError(f"{f.name} {value!r}: expected {words}")


def check_objects_fit(objects: list[ObjectPrompts], shape: tuple[int, ...], axis: int) -> None:
    """A PromptError naming the first object whose slices, range, boxes or points do not
    fit a volume of `shape` sliced along `axis` (prompts saved on another scan). On a slice,
    `x` indexes the later remaining axis and `y` the earlier one."""
    n = shape[axis]
    h, w = (shape[a] for a in range(len(shape)) if a != axis)
    for obj in objects:
        if not obj.slices:
            raise PromptError(f"object {obj.id}: no annotated slice")
        for index, prompt in obj.slices.items():
            if not 0 <= index < n:
                raise PromptError(
                    f"object {obj.id}: prompt on slice {index}, outside the volume's 0..{n - 1} "
                    f"along axis {axis}"
                )
            try:
                check_boxes(prompt.box, (h, w))
                if prompt.points is not None:
                    check_points(prompt.points, prompt.labels, (h, w))
            except PromptError as exc:
                raise PromptError(f"object {obj.id}, slice {index}: {exc}") from None
        if obj.range is not None:
            lo, hi = obj.range
            if not (0 <= lo <= hi < n):
                raise PromptError(
                    f"object {obj.id}: range {list(obj.range)}: expected [first, last] with "
                    f"0 <= first <= last <= {n - 1}"
                )
            if any(not lo <= i <= hi for i in obj.slices):
                raise PromptError(f"object {obj.id}: annotated slice outside its range")


def objects_from_labels(
    labels: np.ndarray, axis: int, ids=None, segments=None
) -> list[ObjectPrompts]:
    """Objects seeded by a label volume (painted by hand, contours from a planning system,
    another tool's output): each label (of `ids`, else every one present) gets its labelled
    slices as given masks, so a propagation fills the slices between them and goes on past
    the ends. `segments` (`Segment`s) give names and colours. Each mask is its own copy of
    one slice: a sparse annotation costs little, whatever the volume's size."""
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise PromptError(f"labels of shape {labels.shape}: expected a 3D label volume")
    wanted = None if ids is None else {int(i) for i in ids}
    seeds: dict[int, dict[int, SlicePrompt]] = {}
    for index in range(labels.shape[axis]):
        plane = labels[(slice(None),) * axis + (index,)]
        for oid in wanted if wanted is not None else (int(v) for v in np.unique(plane) if v):
            mask = plane == oid
            if mask.any():
                seeds.setdefault(oid, {})[index] = SlicePrompt(mask=mask)
    named = {s.id: s for s in segments or ()}
    objects = []
    for oid in sorted(seeds):
        seg = named.get(oid)
        objects.append(
            ObjectPrompts(
                oid,
                seeds[oid],
                name=seg.name if seg else "",
                color=tuple(seg.color) if seg else None,
            )
        )
    return objects


@dataclass
class PropagationResult:
    labels: np.ndarray  # same shape as the volume, one id per object
    scores: dict[int, np.ndarray]  # per object: predicted IoU per slice, NaN where none
    reached: dict[int, tuple[int, int] | None]  # per object: first and last slice with a mask
    cancelled: bool = False
    # per object: the time its walks took, with its share of the decoder calls it shared
    seconds: dict[int, float] = field(default_factory=dict)
    # per object: the intensity window its slices were shown in (preset name)
    windows: dict[int, str] = field(default_factory=dict)
    # the walks visited every `slice_step`-th slice (the slices between them interpolated)
    slice_step: int = 1


def objects_from_json(
    data: Mapping, slice_keys: frozenset = frozenset({"box", "points", "labels"})
) -> tuple[int, list[ObjectPrompts]]:
    """Parse PROMPTS.json: {"axis": 2, "objects": [{"id", "name", "range", "slices"}]}.
    A slice holding a key outside `slice_keys` is refused (a misspelt "box" would otherwise
    read as a slice without prompts); the server's wire format adds "mask"."""
    if not isinstance(data, Mapping) or not isinstance(data.get("objects"), list):
        raise PromptError('prompts: expected {"axis": A, "objects": [...]}')
    axis = data.get("axis", 2)
    if not isinstance(axis, int):
        raise PromptError(f"prompts: axis {axis!r} is not an integer")
    objects = []
    for n, item in enumerate(data["objects"]):
        if not isinstance(item, Mapping) or "slices" not in item:
            raise PromptError(f"prompts: object {n} needs an id and slices")
        try:
            oid = _whole(item.get("id", n + 1), "id")
            rng = item.get("range")
            if rng is not None:
                if len(rng) != 2:
                    raise ValueError(f"range {rng!r} is not [first, last]")
                rng = (_whole(rng[0], "range"), _whole(rng[1], "range"))
            slices = {}
            for key, sp in item["slices"].items():
                unknown = sorted(set(sp) - slice_keys)
                if unknown:
                    raise ValueError(
                        f"slice {key}: unknown key(s) {', '.join(map(str, unknown))}; a slice "
                        f"takes {', '.join(sorted(slice_keys))}"
                    )
                points = sp.get("points")
                labels = sp.get("labels")
                if points is not None and labels is None:
                    labels = [1] * len(points)
                slices[_whole(key, "slice")] = SlicePrompt(
                    box=None if sp.get("box") is None else np.asarray(sp["box"], np.float64),
                    points=None if points is None else np.asarray(points, np.float64),
                    labels=None if labels is None else np.asarray(labels),
                )
            window = item.get("window")
            if window is not None and not is_window(window):
                raise ValueError(f"window {window!r} is not {WINDOW_WORDS}")
            color = item.get("color")
            if color is not None:
                color = tuple(int(c) for c in color)
                if len(color) != 3 or not all(0 <= c <= 255 for c in color):
                    raise ValueError(f"color {item['color']!r} is not [r, g, b] in 0-255")
        except (TypeError, ValueError, KeyError, AttributeError, IndexError) as exc:
            raise PromptError(f"prompts: object {n} is malformed ({exc})") from None
        objects.append(ObjectPrompts(oid, slices, rng, str(item.get("name", "")), color, window))
    return axis, objects


def _whole(value, what: str) -> int:
    """A whole number from JSON: an int, a float without a fraction, or a string of digits
    (slice keys are strings); anything else is a ValueError naming `what`."""
    if isinstance(value, bool):
        raise ValueError(f"{what} {value!r} is not a whole number")
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    raise ValueError(f"{what} {value!r} is not a whole number")


def objects_to_json(axis: int, objects: list[ObjectPrompts]) -> dict:
    """The inverse of `objects_from_json` (masks are not saved: they are results)."""

    def floats(a):
        return [float(v) for v in np.asarray(a, np.float64).ravel()]

    items = []
    for obj in objects:
        slices = {}
        for index, sp in sorted(obj.slices.items()):
            entry = {}
            if sp.box is not None:
                entry["box"] = floats(sp.box)
            if sp.points is not None and len(sp.points):
                entry["points"] = np.asarray(sp.points, np.float64).reshape(-1, 2).tolist()
                entry["labels"] = [int(v) for v in np.asarray(sp.labels).ravel()]
            slices[str(int(index))] = entry
        item = {"id": int(obj.id), "name": obj.name, "slices": slices}
        if obj.range is not None:
            item["range"] = [int(obj.range[0]), int(obj.range[1])]
        if obj.color is not None:
            item["color"] = [int(c) for c in obj.color]
        if obj.window is not None:
            item["window"] = obj.window
        items.append(item)
    return {"axis": int(axis), "objects": items}
