"""What the widget does, without Qt: the model, the objects, the rules for merging masks.

The dock widget (`_widget.py`) is a view over this: it turns layer events into requests,
runs them through the workers, and writes what comes back into the Labels layer. Everything
here can be tested without a viewer.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np

from sammed2d import EmbeddingCache, load_model
from sammed2d.errors import SamMed2DError
from sammed2d.intensity import PRESETS, intensity_range
from sammed2d.memory import reuse_freed_memory, tuning_wanted_in_host
from sammed2d.propagate import SlicePrompt, segment_slice
from sammed2d.segments import Segment, default_segment


@dataclass
class SegmentRequest:
    """One click or box: segment `index` along `axis` for `object_id`."""

    object_id: int
    axis: int | None  # None: a 2D image
    index: int | None
    prompt: SlicePrompt
    data: np.ndarray
    affine: np.ndarray | None
    preset: str
    model: tuple[str, ...] = ("litemedsam", "auto", "fp32")  # name or path, device, precision
    seq: int = 0  # order of asking: a click older than a propagation never corrects it


class Latest:
    """A mailbox of one: a newer request replaces one not yet taken (the newest click wins)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item = None
        self._serving = False

    def put(self, item) -> None:
        with self._cond:
            self._item = item
            self._cond.notify_all()

    def take(self, timeout: float):
        """The newest item, or None after `timeout` seconds; marks the mailbox as serving."""
        with self._cond:
            if self._item is None:
                self._cond.wait(timeout)
            item, self._item = self._item, None
            self._serving = item is not None
            return item

    def done(self) -> None:
        with self._cond:
            self._serving = False

    @property
    def busy(self) -> bool:
        """A request waits or is being served (background embedding waits meanwhile)."""
        with self._cond:
            return self._item is not None or self._serving


class Engine:
    """The model and the per-volume state that clicks share: loaded once, reused."""

    def __init__(self, cache: EmbeddingCache | None = None) -> None:
        self.cache = cache or EmbeddingCache(max_bytes=2 << 30)
        self.model = None
        self._model_key = None
        self._range_key = None
        self._range = None
        self._lock = threading.Lock()  # one model call at a time
        self._predictor_key = None
        self._predictor_obj = None

    def load(self, name: str, device: str, precision: str = "fp32"):
        key = (name, device, precision)
        if self.model is None or self._model_key != key:
            if tuning_wanted_in_host():
                reuse_freed_memory()
            self.model = load_model(name, device=device, precision=precision)
            self._model_key = key
        return self.model

    def value_range(self, data: np.ndarray, preset: str) -> tuple[float, float]:
        """The volume's intensity window, computed once per volume and preset."""
        key = (id(data), data.shape, preset)
        if self._range_key != key:
            self._range = intensity_range(data, preset)
            self._range_key = key
        return self._range

    def _predictor(self, req: SegmentRequest):
        """A 2D image's predictor, prepared once per image, preset and model (not per click)."""
        from sammed2d import Predictor

        key = (id(req.data), req.data.shape, req.preset, self._model_key)
        if self._predictor_key != key:
            self._predictor_obj = Predictor(self.model, cache=self.cache)
            self._predictor_obj.set_image(req.data, preset=req.preset)
            self._predictor_key = key
        return self._predictor_obj

    def needs_loading(self, name: str, device: str, precision: str = "fp32") -> bool:
        return self.model is None or self._model_key != (name, device, precision)

    def segment(self, req: SegmentRequest) -> np.ndarray:
        self.load(*req.model)
        if req.prompt.box is None and self.model.spec.boxes_only:
            raise BoxOnly(
                f"{self.model.spec.name} was trained with boxes only: draw a rectangle "
                "(a point alone gives a poor mask)"
            )
        with self._lock:
            if req.axis is None:
                masks, _, _ = self._predictor(req).predict(
                    req.prompt.points, req.prompt.labels, req.prompt.box
                )
                return masks[0]
            mask, _ = segment_slice(
                req.data,
                req.index,
                req.prompt,
                self.model,
                axis=req.axis,
                affine=req.affine,
                value_range=self.value_range(req.data, req.preset),
                cache=self.cache,
            )
            return mask


class BoxOnly(SamMed2DError):
    """A point alone sent to a model trained with boxes only."""


# ----- objects -------------------------------------------------------------------------------


@dataclass
class ObjectInfo:
    id: int
    name: str
    color: tuple[int, int, int]
    reached: tuple[int, int] | None = None  # slices the last propagation covered
    color_auto: bool = True  # not chosen by the user: a renamed object takes its anatomy's
    window: str | None = None  # its own intensity preset; None: the widget's


@dataclass
class ObjectTable:
    objects: dict[int, ObjectInfo] = field(default_factory=dict)

    def add(self, oid: int | None = None, name: str | None = None, color=None) -> ObjectInfo:
        oid = oid if oid is not None else max(self.objects, default=0) + 1
        if oid in self.objects:
            return self.objects[oid]
        seg = default_segment(oid, name or f"object {oid}")
        info = ObjectInfo(oid, seg.name, tuple(color) if color else seg.color, None, not color)
        self.objects[oid] = info
        return info

    def rename(self, oid: int, name: str) -> None:
        name = name.strip()
        if not name:
            raise SamMed2DError("an object needs a name")
        info = self.objects[oid]
        color = default_segment(oid, name).color if info.color_auto else info.color
        self.objects[oid] = ObjectInfo(oid, name, color, info.reached, info.color_auto, info.window)

    def recolor(self, oid: int, color) -> None:
        info = self.objects[oid]
        color = tuple(int(c) for c in color)
        self.objects[oid] = ObjectInfo(oid, info.name, color, info.reached, False, info.window)

    def set_window(self, oid: int, window: str | None) -> None:
        if window is not None and window not in PRESETS:
            raise SamMed2DError(f"window {window!r}: expected one of {', '.join(PRESETS)}")
        self.objects[oid].window = window

    def remove(self, oid: int) -> None:
        self.objects.pop(oid, None)

    def segments(self) -> list[Segment]:
        return [Segment(o.id, o.name, o.color) for o in sorted(self.objects.values(), key=_id)]


def _id(o):
    return o.id


# ----- merging masks into labels ---------------------------------------------------------------


def slice_changes(view: np.ndarray, oid: int, mask: np.ndarray):
    """(remove, add) boolean masks that make `view` show `mask` for `oid`, never painting
    over another object."""
    old = view == oid
    return old & ~mask, mask & (view == 0)


def correction_stretch(
    index: int, prompted: list[int], reached: tuple[int, int] | None, n: int
) -> tuple[int, int] | None:
    """The slices a correction on `index` re-propagates: up to (not including) the nearest
    other prompted slice on each side, else to the end the object reached. None when the
    object was never propagated (a plain click)."""
    if reached is None:
        return None
    lo, hi = min(reached[0], index), max(reached[1], index)
    below = [p for p in prompted if p < index]
    above = [p for p in prompted if p > index]
    if below:
        lo = max(lo, max(below) + 1)
    if above:
        hi = min(hi, min(above) - 1)
    return max(lo, 0), min(hi, n - 1)
