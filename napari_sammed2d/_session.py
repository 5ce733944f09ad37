"""What the widget does, without Qt: the model, the objects, the rules for merging masks.

The dock widget (`_widget.py`) is a view over this: it turns layer events into requests,
runs them through the workers, and writes what comes back into the Labels layer. Everything
here can be tested without a viewer.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sammed2d.errors import SamMed2DError
from sammed2d.intensity import WINDOW_WORDS, intensity_range, is_window
from sammed2d.objects import PropagationSettings, SlicePrompt
from sammed2d.segments import Segment, default_segment

# The local engine's modules (torch) load when it is first used: with a remote engine
# the plugin runs without torch.


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
    # propagation: a loaded prompts file's settings with the widget's slice step (every
    # n-th slice walked, the rest interpolated; None: the slices within 3 mm)
    settings: PropagationSettings = field(default_factory=PropagationSettings)
    # "array" where the affine is only the layer's scale: its axes' directions are unknown
    orientation: str = "radiological"


@dataclass
class Warmup:
    """Load `model` ahead of the first click, when the widget first has an image: loading
    and tracing take seconds, and the garbage-collector pass that torch's import sets off
    stalls the viewer once; better before anyone clicks."""

    model: tuple[str, ...]


LOCAL_ONLY = "fine-tuning runs on this machine: choose Engine: local (the labels stay here)"


@dataclass
class FinetuneRequest:
    """Fine-tune the model `model` on one volume's labels (shaped as `data`) and write the
    result to `out`; slices are shown to the model as propagation shows them."""

    data: np.ndarray
    affine: np.ndarray | None
    labels: np.ndarray
    axis: int
    preset: str
    model: tuple[str, ...]
    out: str
    orientation: str = "radiological"


def auto_window(req: SegmentRequest) -> tuple[str | None, bool]:
    """(window, asked): the window a click's object gets when its window is the widget's
    `auto`, the one its box asks for (lung or bone on a CT, an MR box's own) or else the
    volume's own, and whether the box asked for it; (None, False) for a 2D image or
    another preset."""
    from sammed2d.intensity import prompt_window, resolve_preset

    if req.preset != "auto" or req.axis is None:
        return None, False
    own = resolve_preset(req.data, "auto")
    asked = prompt_window(req.data, req.axis, req.index, req.prompt, own, req.affine)
    return asked or own, asked is not None


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


def serve_clicks(mailbox: Latest, engine, send, stopping, server_url=lambda: "") -> None:
    """The click thread's loop, until `stopping()`: take the newest request, load the model
    it names if needed, segment, and `send` a message tuple to the GUI thread:
    ("status", text), ("loaded", remote description or ""), ("mask", request, mask,
    window, asked) (`auto_window`), ("info", text) for a box-only model given points,
    ("error", exception).
    `engine()` is read per request: the user may switch engines between clicks. A
    `Warmup` only loads; if that fails, the status line names the reason, and the click
    that needs the model raises the notification."""
    while not stopping():
        request = mailbox.take(0.1)
        if request is None:
            continue
        current = engine()
        warmup = isinstance(request, Warmup)
        try:
            if warmup and current.remote:
                continue
            if current.needs_loading(*request.model):
                where = server_url() if current.remote else request.model[0]
                verb = "connecting to" if current.remote else "loading"
                send(("status", f"{verb} {where}…"))
                current.load(*request.model)
                send(("loaded", current.describe() if current.remote else ""))
            if warmup:
                continue
            mask = current.segment(request)
            send(("mask", request, mask, *auto_window(request)))
        except BoxOnly as exc:
            send(("info", str(exc)))
        except Exception as exc:  # noqa: BLE001 - shown to the user, the loop goes on
            send(("status", f"model not loaded: {exc}") if warmup else ("error", exc))
        finally:
            mailbox.done()


# Models loaded in this process, the most recent last. A widget opened again, or another
# viewer's, takes the model and its traced graphs from here instead of loading and tracing
# it anew: that takes seconds, and TorchScript never gives back about 40 MB of each trace
# (measured: a napari test session grew to 18 GB, one LiteMedSAM per widget).
_LOADED: OrderedDict = OrderedDict()
MAX_LOADED = 2
_loading = threading.Lock()


def _loaded(name: str, device: str, precision: str, load_model):
    """The model `name` (registry name or file) on `device` in `precision`, loaded once per
    process; a file written again since (a new fine-tune at the same path) loads again."""
    path = Path(name).expanduser()
    stamp = (path.stat().st_size, path.stat().st_mtime_ns) if path.is_file() else None
    key = (name, device, precision, stamp)
    with _loading:
        model = _LOADED.get(key)
        if model is None:
            model = load_model(name, device=device, precision=precision)
            # napari's GUI thread shares Python's lock with the model's thread: graphs run
            # the model without it (sammed2d.graphs), traced here rather than in a click.
            from sammed2d import graphs

            graphs.enable(model)
            graphs.warm(model)
            _LOADED[key] = model
            while len(_LOADED) > MAX_LOADED:
                _LOADED.popitem(last=False)
        _LOADED.move_to_end(key)
    return model


class Engine:
    """The model in this process and the per-volume state that clicks share."""

    remote = False

    def __init__(self, cache=None) -> None:
        self.cache = cache
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
            try:
                from sammed2d.torch_import import import_torch

                # Mapping torch's libraries while holding Python's lock froze the
                # viewer for 0.2-0.7 s (see sammed2d.torch_import).
                import_torch()
                from sammed2d import EmbeddingCache, load_model
                from sammed2d.memory import reuse_freed_memory, tuning_wanted_in_host
            except ModuleNotFoundError as exc:
                if (exc.name or "").split(".")[0] != "torch":
                    raise
                raise SamMed2DError(
                    "the local engine needs PyTorch: pip install torch (or "
                    "'napari-sammed2d[local]'), or choose Engine: remote"
                ) from None
            if tuning_wanted_in_host():
                reuse_freed_memory()
            if self.cache is None:
                self.cache = EmbeddingCache(max_bytes=2 << 30)
            self.model, self._model_key = _loaded(name, device, precision, load_model), key
        return self.model

    @property
    def ready(self) -> bool:
        return self.model is not None

    @property
    def boxes_only(self) -> bool | None:
        return None if self.model is None else bool(self.model.spec.boxes_only)

    def record(self) -> tuple[str, str | None] | None:
        """(model name, weights SHA-256) for a prompts file; None before loading."""
        from sammed2d.prompt_files import model_record

        return None if self.model is None else model_record(self.model)

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
        from sammed2d.propagate import segment_slice

        self.load(*req.model)
        _refuse_points_alone(req, self.model.spec.boxes_only, self.model.spec.name)
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
                preset=req.preset,
                value_range=self.value_range(req.data, req.preset),
                orientation=req.orientation,
                cache=self.cache,
            )
            return mask

    def propagate(self, req: SegmentRequest, objects, progress, should_stop):
        from sammed2d.propagate import propagate

        model = self.load(*req.model)
        return propagate(
            req.data,
            objects,
            model,
            axis=req.axis,
            affine=req.affine,
            preset=req.preset,
            value_range=self.value_range(req.data, req.preset),
            orientation=req.orientation,
            settings=req.settings,
            cache=self.cache,
            progress=progress,
            should_stop=should_stop,
        )

    def finetune(self, req: FinetuneRequest, progress, should_stop):
        """Train the decoder of a copy of the model on the request's labels, as `sammed2d
        finetune` does (its defaults), and write it with its record; the report comes back.
        `progress(what, done, total)`; `should_stop()` cancels, and nothing is written."""
        from sammed2d.finetune import finetune_copy

        self.load(*req.model)  # torch, and the embedding cache the clicks have filled
        name, device, precision = req.model
        report = finetune_copy(
            name, req.out, [(req.data, req.affine, req.labels)], req.axis, req.preset,
            device=device, precision=precision, cache=self.cache, progress=progress,
            should_stop=should_stop, orientation=req.orientation,
        )  # fmt: skip
        # loaded (and traced) here, in the background, rather than at the next click
        progress("loading the tuned model", 0, 0)
        self.load(req.out, device, precision)
        return report

    def embed_ahead(
        self, data, affine, preset, axis, order, keep_going, orientation="radiological"
    ) -> None:
        """Embed slices `order` into the cache while keep_going() says so (blocks)."""
        from sammed2d.orientation import slice_view
        from sammed2d.propagate import VolumeSlices

        view = slice_view(affine, axis, orientation)
        slices = VolumeSlices(
            self.model, data, axis, view, self.value_range(data, preset), self.cache
        )
        for i in order:
            if not keep_going():
                return
            slices.embedding(i)


class RemoteEngine:
    """The same calls, run by a `sammed2d serve` elsewhere: the plugin needs no torch."""

    remote = True

    def __init__(self, url: str, api_key: str | None = None) -> None:
        from sammed2d.remote import Client

        self.client = Client(url, api_key or None)
        self.source = (url, api_key)  # as the user typed them: a change means a new engine
        self.info = None

    def load(self, *model):
        if self.info is None:
            self.info = self.client.info()
        return self.info

    @property
    def ready(self) -> bool:
        return self.info is not None

    @property
    def boxes_only(self) -> bool | None:
        return None if self.info is None else bool(self.info["model"]["boxes_only"])

    def record(self):
        if self.info is None:
            return None
        return self.info["model"]["name"], self.info["model"].get("sha256")

    def needs_loading(self, *model) -> bool:
        return self.info is None

    def describe(self) -> str:
        info = self.load()
        return (
            f"{info['model']['name']} on {info['device']} ({info['precision']}) at "
            f"{self.client.url}"
        )

    def segment(self, req: SegmentRequest) -> np.ndarray:
        info = self.load()
        _refuse_points_alone(req, info["model"]["boxes_only"], info["model"]["family"])
        if req.axis is None:
            p = req.prompt
            masks, _, _ = self.client.predict(
                req.data, p.points, p.labels, p.box, preset=req.preset
            )
            return masks[0]
        mask, _ = self.client.segment_slice(
            req.data, req.index, req.prompt, axis=req.axis, affine=req.affine,
            preset=req.preset, orientation=req.orientation,
        )  # fmt: skip
        return mask

    def propagate(self, req: SegmentRequest, objects, progress, should_stop):
        self.load()
        return self.client.propagate(
            req.data,
            objects,
            axis=req.axis,
            affine=req.affine,
            preset=req.preset,
            orientation=req.orientation,
            settings=req.settings,
            progress=progress,
            should_stop=should_stop,
        )

    def embed_ahead(
        self, data, affine, preset, axis, order, keep_going, orientation="radiological"
    ) -> None:
        """The server embeds while it is idle; one request, nothing to wait for."""
        self.client.embed_ahead(
            data, list(order), axis=axis, affine=affine, preset=preset, orientation=orientation
        )

    def finetune(self, req: FinetuneRequest, progress, should_stop):
        raise SamMed2DError(LOCAL_ONLY)

    def close(self) -> None:
        self.client.close()


def _refuse_points_alone(req: SegmentRequest, boxes_only: bool, name: str) -> None:
    if req.prompt.box is None and boxes_only:
        raise BoxOnly(
            f"{name} was trained with boxes only: draw a rectangle "
            "(a point alone gives a poor mask)"
        )


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
        if window is not None and not is_window(window):
            raise SamMed2DError(f"window {window!r}: expected {WINDOW_WORDS}")
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
