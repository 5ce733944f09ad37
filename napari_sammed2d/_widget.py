"""The dock widget: prompts from Points and Shapes layers, masks into one Labels layer.

Keys (while the viewer has focus, whichever layer is active; none of them is a napari
layer or viewer shortcut, so the Points and Shapes layers keep their own S, T, P...):
  Shift+S  segment the current slice of the current object
  Shift+R  run propagation of the current object through the volume
  N        new object (next label id)
  Shift+T  toggle positive / negative points
  Shift+C  clear the current object's prompts
They are removed when the widget closes.

All model work runs in napari workers; the viewer stays responsive and errors appear as
notifications. A propagation lands as one undoable step (Ctrl+Z on the labels undoes it).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

import numpy as np
from napari.qt.threading import thread_worker
from napari.utils import progress
from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from sammed2d import EmbeddingCache, Predictor, load_model
from sammed2d.errors import SamMed2DError
from sammed2d.intensity import PRESETS, intensity_range
from sammed2d.memory import reuse_freed_memory, tuning_wanted_in_host
from sammed2d.models import SPECS
from sammed2d.orientation import SliceView, radiological_view
from sammed2d.prompt_files import PromptFile, model_record, read_prompt_file, write_prompt_file
from sammed2d.propagate import ObjectPrompts, VolumeSlices, propagate, segment_slice

from ._prompts import add_prompt_shapes, clip_box_to, reorder_objects, slice_prompts

if TYPE_CHECKING:
    import napari

POINTS_NAME = "SAM points"
SHAPES_NAME = "SAM boxes"
LABELS_NAME = "SAM labels"
KEYS = {
    "Shift-S": "segment_current_slice",
    "Shift-R": "propagate_object",
    "N": "new_object",
    "Shift-T": "toggle_polarity",
    "Shift-C": "clear_prompts",
}
KEYS_HELP = "Shift+S segment · Shift+R propagate · N new object · Shift+T +/− · Shift+C clear"


class SegmentWidget(QWidget):
    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        self.viewer = viewer
        self.model = None
        self.cache = EmbeddingCache(max_bytes=2 << 30)
        self._predictor = None
        self._value_range = None
        self._busy = None  # the running propagation worker
        self._prefetch = None
        self._cancel = False
        self._prompt_layers_for = None
        self._loading = False

        self.image_combo = QComboBox()
        self.model_edit = QLineEdit("litemedsam")
        self.model_edit.setToolTip("a registry name (" + ", ".join(SPECS) + ") or a .pth file")
        browse = QPushButton("…")
        browse.clicked.connect(self._browse)
        self.device_combo = QComboBox()
        self.device_combo.addItems(["auto", "cpu", "cuda", "mps"])
        self.preset_combo = QComboBox()
        self.preset_combo.addItems(list(PRESETS))
        self.object_spin = QSpinBox()
        self.object_spin.setRange(1, 65535)
        self.positive_button = QPushButton("Positive points (Shift+T)")
        self.positive_button.setCheckable(True)
        self.positive_button.setChecked(True)
        self.positive_button.toggled.connect(self._on_polarity)
        self.segment_button = QPushButton("Segment slice (Shift+S)")
        self.propagate_button = QPushButton("Propagate (Shift+R)")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        new_button = QPushButton("New object (N)")
        clear_button = QPushButton("Clear prompts (Shift+C)")
        save_button = QPushButton("Save prompts…")
        save_button.setToolTip("PROMPTS.json that `sammed2d propagate` and `batch` replay")
        load_button = QPushButton("Load prompts…")
        self.status = QLabel("")
        self.status.setWordWrap(True)

        model_row = QHBoxLayout()
        model_row.addWidget(self.model_edit)
        model_row.addWidget(browse)
        form = QFormLayout()
        form.addRow("Image", self.image_combo)
        form.addRow("Model", model_row)
        form.addRow("Device", self.device_combo)
        form.addRow("Intensity", self.preset_combo)
        form.addRow("Object id", self.object_spin)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        for w in (
            self.positive_button,
            self.segment_button,
            self.propagate_button,
            self.cancel_button,
            new_button,
            clear_button,
            save_button,
            load_button,
        ):
            layout.addWidget(w)
        layout.addWidget(QLabel(KEYS_HELP))
        layout.addWidget(self.status)
        layout.addStretch()

        self.segment_button.clicked.connect(self.segment_current_slice)
        self.propagate_button.clicked.connect(self.propagate_object)
        self.cancel_button.clicked.connect(self.cancel)
        new_button.clicked.connect(self.new_object)
        clear_button.clicked.connect(self.clear_prompts)
        save_button.clicked.connect(self._save_dialog)
        load_button.clicked.connect(self._load_dialog)
        self.image_combo.currentTextChanged.connect(self._drop_volume_state)
        self.object_spin.valueChanged.connect(self._on_object_changed)
        self.model_edit.editingFinished.connect(self._drop_model)
        self.device_combo.currentTextChanged.connect(self._drop_model)
        self.preset_combo.currentTextChanged.connect(self._drop_volume_state)
        viewer.layers.events.inserted.connect(self._refresh_images)
        viewer.layers.events.inserted.connect(self._on_inserted)
        viewer.layers.events.removed.connect(self._refresh_images)
        self._refresh_images()
        self._bind_keys()

    # ----- layers ---------------------------------------------------------------------------
    def _refresh_images(self, event=None) -> None:
        current = self.image_combo.currentText()
        names = [ly.name for ly in self.viewer.layers if ly.__class__.__name__ == "Image"]
        self.image_combo.blockSignals(True)
        self.image_combo.clear()
        self.image_combo.addItems(names)
        if current in names:
            self.image_combo.setCurrentText(current)
        self.image_combo.blockSignals(False)
        if self.image_combo.currentText() != current:
            self._drop_volume_state()

    def _on_inserted(self, event) -> None:
        if event.value.__class__.__name__ == "Image":
            # After napari has finished inserting (it then selects the new layer itself).
            from qtpy.QtCore import QTimer

            QTimer.singleShot(0, self.prepare_prompt_layers)

    def prepare_prompt_layers(self) -> None:
        """Prompt layers as soon as there is an image, with the tool the model wants: the
        rectangle for box-only models (the default), points otherwise."""
        try:
            if self.image_layer is None:
                return
            points, shapes, _ = self.ensure_prompt_layers()
        except (SamMed2DError, RuntimeError):
            return  # a 4D layer (said when the user asks to segment), or a closed viewer
        self.show_radiologically()
        name = self.model_edit.text().strip()
        spec = self.model.spec if self.model is not None else SPECS.get(name)
        if spec is None or spec.boxes_only:
            shapes.mode = "add_rectangle"
            self.viewer.layers.selection.active = shapes
        else:
            points.mode = "add"
            self.viewer.layers.selection.active = points

    def show_radiologically(self) -> None:
        """Turn the 2D camera so the image reads as radiologists expect: anterior (or
        superior, for a sagittal or coronal plane) up, the patient's right on the screen's
        left. Only the view turns; data, coordinates and saved files are untouched."""
        image = self.image_layer
        info = image.metadata.get("sammed2d") or {}
        affine = info.get("affine")
        if affine is None or image.ndim != 3 or list(self.viewer.dims.displayed) != [1, 2]:
            return
        rows, cols = np.asarray(affine)[:3, 1], np.asarray(affine)[:3, 2]  # RAS of +row, +col
        vertical = "down"
        if int(np.argmax(np.abs(rows))) in (1, 2):  # anterior-posterior or superior-inferior
            vertical = "up" if rows[int(np.argmax(np.abs(rows)))] > 0 else "down"
        horizontal = "right"
        if int(np.argmax(np.abs(cols))) == 0:  # left-right: patient's right on screen left
            horizontal = "left" if cols[0] > 0 else "right"
        self.viewer.camera.orientation2d = (vertical, horizontal)

    @property
    def image_layer(self):
        name = self.image_combo.currentText()
        return self.viewer.layers[name] if name in self.viewer.layers else None

    def _layer(self, name):
        return self.viewer.layers[name] if name in self.viewer.layers else None

    def ensure_prompt_layers(self):
        """Create (or reuse) the Points, Shapes and Labels layers on the image's grid."""
        image = self.image_layer
        if image is None:
            raise SamMed2DError("no image layer: open an image or volume first")
        ndim = image.ndim  # spatial axes; an RGB layer's channels are not counted
        if ndim not in (2, 3):
            raise SamMed2DError(
                f"layer {image.name!r} has {ndim} spatial dimensions; SAM-Med2D works on 2D "
                "images and 3D volumes (split channels or time points first)"
            )
        geometry = dict(scale=image.scale[:ndim], translate=image.translate[:ndim])
        labels = self._layer(LABELS_NAME)
        shape = image.data.shape[:ndim]
        if labels is None or labels.data.shape != shape:
            if labels is not None:
                self.viewer.layers.remove(labels)
            labels = self.viewer.add_labels(
                np.zeros(shape, np.uint16),
                name=LABELS_NAME,
                metadata=dict(image.metadata),
                **geometry,
            )
        shapes = self._layer(SHAPES_NAME)
        if shapes is None:
            shapes = self.viewer.add_shapes(
                ndim=ndim,
                name=SHAPES_NAME,
                face_color="transparent",
                edge_color="yellow",
                edge_width=1,
                features={"object": np.zeros(0, int)},
                **geometry,
            )
            shapes.feature_defaults["object"] = self.object_spin.value()
            shapes.events.data.connect(self._on_prompt_event)
        points = self._layer(POINTS_NAME)
        if points is None:
            points = self.viewer.add_points(
                ndim=ndim,
                name=POINTS_NAME,
                size=4,
                features={"positive": np.zeros(0, bool), "object": np.zeros(0, int)},
                face_color="positive",
                face_color_cycle=["red", "lime"],
                **geometry,
            )
            points.feature_defaults["positive"] = self.positive_button.isChecked()
            points.feature_defaults["object"] = self.object_spin.value()
            points.events.data.connect(self._on_prompt_event)
            points.mode = "add"
        return points, shapes, labels

    def _on_prompt_event(self, event) -> None:
        # napari fires ADDING then ADDED (and CHANGING/CHANGED): act once, when done.
        action = str(getattr(event, "action", "added")).lower()
        if self._loading:
            return
        if action.endswith("added") or action.endswith("changed"):
            self.segment_current_slice()

    def _on_polarity(self, positive: bool) -> None:
        self.positive_button.setText(("Positive" if positive else "Negative") + " points (Shift+T)")
        points = self._layer(POINTS_NAME)
        if points is not None:
            points.feature_defaults["positive"] = positive

    def _on_object_changed(self, value: int) -> None:
        for name in (POINTS_NAME, SHAPES_NAME):
            layer = self._layer(name)
            if layer is not None:
                layer.feature_defaults["object"] = value
        labels = self._layer(LABELS_NAME)
        if labels is not None:
            labels.selected_label = value

    def _drop_model(self, *args) -> None:
        self.model = None
        self._drop_volume_state()

    def _drop_volume_state(self, *args) -> None:
        self._predictor = None
        self._value_range = None
        if self._prefetch is not None:
            self._prefetch.quit()
            self._prefetch = None

    # ----- model and geometry ---------------------------------------------------------------
    def get_model(self):
        if self.model is None:
            if tuning_wanted_in_host():
                reuse_freed_memory()
            self.model = load_model(
                self.model_edit.text().strip(), device=self.device_combo.currentText()
            )
            if self.model.spec.name == "litemedsam":
                self.status.setText("LiteMedSAM was trained on boxes: draw rectangles.")
        return self.model

    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Checkpoint", "", "PyTorch (*.pth *.pt)")
        if path:
            self.model_edit.setText(path)
            self._drop_model()

    def slice_axis(self) -> int | None:
        """The image axis the viewer slices through (None for a 2D image)."""
        image = self.image_layer
        ndim = image.ndim  # spatial axes; an RGB layer's channels are not counted
        if ndim == 2:
            return None
        hidden = [d for d in self.viewer.dims.not_displayed if d < ndim]
        if len(self.viewer.dims.displayed) != 2 or len(hidden) != 1:
            raise SamMed2DError("switch the viewer to 2D slices to segment (not 3D rendering)")
        world_offset = self.viewer.dims.ndim - image.ndim
        return hidden[0] - world_offset if hidden[0] >= world_offset else hidden[0]

    def current_index(self, axis: int) -> int:
        image = self.image_layer
        point = image.world_to_data(self.viewer.dims.point[-image.ndim :])
        return int(np.clip(round(point[axis]), 0, image.data.shape[axis] - 1))

    def volume_context(self):
        image = self.image_layer
        data = np.asarray(image.data)
        info = image.metadata.get("sammed2d") or {}
        affine = info.get("affine")
        preset = self.preset_combo.currentText()
        return data, affine, preset

    def value_range(self, data, preset) -> tuple[float, float]:
        """The volume's intensity window, once per image and preset rather than per click."""
        if self._value_range is None:
            self._value_range = intensity_range(data, preset)
        return self._value_range

    # ----- actions --------------------------------------------------------------------------
    def segment_current_slice(self) -> None:
        try:
            points, shapes, labels = self.ensure_prompt_layers()
            axis = self.slice_axis()
            index = None if axis is None else self.current_index(axis)
            prompts = slice_prompts(
                self.image_layer, points, shapes, self.object_spin.value(), axis
            )
            prompt = prompts.get(index)
            if prompt is None:
                return
            model = self.get_model()
            if prompt.box is None and model.spec.boxes_only:
                show_info(
                    f"{model.spec.name} was trained with boxes only: draw a rectangle "
                    "(a point alone gives a poor mask)"
                )
                return
            data, affine, preset = self.volume_context()
            shape = (
                data.shape
                if axis is None
                else tuple(s for a, s in enumerate(data.shape) if a != axis)
            )
            prompt = clip_box_to(prompt, shape[:2])
            if axis is None:
                mask = self._segment_2d(model, data, preset, prompt)
            else:
                mask, _ = segment_slice(
                    data,
                    index,
                    prompt,
                    model,
                    axis=axis,
                    affine=affine,
                    value_range=self.value_range(data, preset),
                    cache=self.cache,
                )
                self._start_prefetch(axis, index)
            self._write_slice(labels, axis, index, mask)
        except SamMed2DError as exc:
            show_error(str(exc))

    def _segment_2d(self, model, data, preset, prompt):
        if self._predictor is None:
            self._predictor = Predictor(model, cache=self.cache)
            self._predictor.set_image(data, preset=preset)
        masks, _, _ = self._predictor.predict(prompt.points, prompt.labels, prompt.box)
        return masks[0]

    def _write_slice(self, labels, axis, index, mask) -> None:
        oid = self.object_spin.value()
        view = labels.data if axis is None else np.take(labels.data, index, axis=axis)
        old = view == oid
        add = mask & (view == 0)  # never paint over another object
        remove = old & ~mask
        with labels.block_history():
            for where, value in ((remove, 0), (add, oid)):
                if where.any():
                    labels.data_setitem(self._full_index(where, axis, index), value)
        labels.refresh()

    @staticmethod
    def _full_index(where2d, axis, index):
        idx = list(np.nonzero(where2d))
        if axis is not None:
            idx.insert(axis, np.full(len(idx[0]), index))
        return tuple(idx)

    def _start_prefetch(self, axis: int, index: int) -> None:
        """Embed the other slices in the background, nearest first, through the cache."""
        if self._prefetch is not None:
            return
        data, affine, preset = self.volume_context()
        view = radiological_view(affine, axis) if affine is not None else SliceView()
        slices = VolumeSlices(
            self.model, data, axis, view, self.value_range(data, preset), self.cache
        )
        order = sorted(range(data.shape[axis]), key=lambda i: abs(i - index))

        @thread_worker
        def prefetch():
            for i in order:
                slices.embedding(i)
                yield i

        self._prefetch = prefetch()
        self._prefetch.start()

    def propagate_object(self) -> None:
        if self._busy is not None:
            show_info("a propagation is already running")
            return
        try:
            points, shapes, labels = self.ensure_prompt_layers()
            axis = self.slice_axis()
            if axis is None:
                raise SamMed2DError("propagation needs a 3D volume")
            oid = self.object_spin.value()
            prompts = slice_prompts(self.image_layer, points, shapes, oid, axis)
            if not prompts:
                raise SamMed2DError(f"object {oid} has no prompts: draw a box first")
            model = self.get_model()
            data, affine, preset = self.volume_context()
            shape = tuple(s for a, s in enumerate(data.shape) if a != axis)
            prompts = {k: clip_box_to(p, shape) for k, p in prompts.items()}
            value_range = self.value_range(data, preset)
        except SamMed2DError as exc:
            show_error(str(exc))
            return
        self._cancel = False
        bar = progress(total=0, desc=f"Propagating object {oid}")

        @thread_worker
        def work():
            # propagate() reports through a callback; the worker relays it to the GUI
            # thread by yielding, polling a helper thread that does the work.
            state = {"progress": (0, 0)}

            def report(done, total):
                state["progress"] = (done, total)

            result = {}

            def run():
                try:
                    result["value"] = _run()
                except BaseException as exc:  # noqa: BLE001 - re-raised in the worker below
                    result["error"] = exc

            def _run():
                return propagate(
                    data,
                    [ObjectPrompts(oid, prompts)],
                    model,
                    axis=axis,
                    affine=affine,
                    value_range=value_range,
                    cache=self.cache,
                    progress=report,
                    should_stop=lambda: self._cancel,
                )

            thread = threading.Thread(target=run, daemon=True)
            thread.start()
            while thread.is_alive():
                thread.join(0.1)
                yield state["progress"]
            if "error" in result:
                raise result["error"]  # reaches worker.errored, so the user sees it
            return result.get("value")

        worker = work()
        worker.yielded.connect(lambda d: _update(bar, *d))
        worker.returned.connect(lambda r: self._apply_propagation(labels, axis, oid, r))
        worker.errored.connect(lambda e: self._report_error("propagation failed", e))
        worker.finished.connect(lambda: self._finish(bar))
        self._busy = worker
        self.cancel_button.setEnabled(True)
        self.propagate_button.setEnabled(False)
        worker.start()

    def _apply_propagation(self, labels, axis, oid, result) -> None:
        if result is None:
            return
        found = result.labels == oid
        with labels.block_history():  # one Ctrl+Z undoes the whole propagation
            # A cancelled run only adds what it finished; it never erases earlier work.
            stale = (labels.data == oid) & ~found
            if stale.any() and not result.cancelled:
                labels.data_setitem(np.nonzero(stale), 0)
            fresh = found & (labels.data == 0)
            if fresh.any():
                labels.data_setitem(np.nonzero(fresh), oid)
        labels.refresh()
        reached = result.reached[oid]
        text = "no slices" if reached is None else f"slices {reached[0]}–{reached[1]}"
        self.status.setText(f"object {oid}: {text}" + (" (cancelled)" if result.cancelled else ""))

    def _report_error(self, what: str, exc: BaseException) -> None:
        """One line in a notification and the status; the traceback goes to the log."""
        import logging

        logging.getLogger("napari_sammed2d").error(what, exc_info=exc)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        text = first if isinstance(exc, SamMed2DError) else f"{what}: {type(exc).__name__}: {first}"
        self.status.setText(text)
        show_error(text)

    def _finish(self, bar) -> None:
        bar.close()
        self._busy = None
        self.cancel_button.setEnabled(False)
        self.propagate_button.setEnabled(True)

    def cancel(self) -> None:
        self._cancel = True

    def shutdown(self, wait_ms: int = 30_000) -> None:
        """Stop background work and remove the key bindings (the widget goes away)."""
        self._cancel = True
        self._unbind_keys()
        for worker in (self._prefetch, self._busy):
            if worker is not None:
                worker.quit()
        from qtpy.QtCore import QThreadPool

        QThreadPool.globalInstance().waitForDone(wait_ms)
        self._prefetch = self._busy = None

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt's name
        self.shutdown()
        super().closeEvent(event)

    def new_object(self) -> None:
        labels = self._layer(LABELS_NAME)
        used = int(labels.data.max()) if labels is not None else 0
        self.object_spin.setValue(max(used, self.object_spin.value()) + 1)

    def toggle_polarity(self) -> None:
        self.positive_button.setChecked(not self.positive_button.isChecked())

    def clear_prompts(self) -> None:
        oid = self.object_spin.value()
        points, shapes = self._layer(POINTS_NAME), self._layer(SHAPES_NAME)
        if points is not None and len(points.data):
            keep = np.asarray(points.features["object"]) != oid
            points.selected_data = set(np.flatnonzero(~keep))
            points.remove_selected()
        if shapes is not None and len(shapes.data):
            drop = np.flatnonzero(np.asarray(shapes.features["object"]) == oid)
            shapes.selected_data = set(drop)
            shapes.remove_selected()

    # ----- prompts as files -----------------------------------------------------------------
    def _from_our_reader(self) -> bool:
        info = self.image_layer.metadata.get("sammed2d") or {}
        return "source" in info

    def prompt_record(self) -> PromptFile:
        """Every object's prompts, in the source file's voxel order when the image came
        through our reader, with the model, window and settings a replay needs."""
        points, shapes, _ = self.ensure_prompt_layers()
        axis = self.slice_axis()
        if axis is None:
            raise SamMed2DError("saving prompts needs a 3D volume")
        ids = set(np.asarray(points.features["object"]).tolist())
        ids |= set(np.asarray(shapes.features["object"]).tolist())
        objects = []
        for oid in sorted(int(i) for i in ids):
            prompts = slice_prompts(self.image_layer, points, shapes, oid, axis)
            if prompts:
                objects.append(ObjectPrompts(oid, prompts))
        if not objects:
            raise SamMed2DError("no prompts to save: draw a box first")
        if self._from_our_reader():
            axis, objects = reorder_objects(axis, objects, self.image_layer.ndim)
        if self.model is not None:
            name, sha = model_record(self.model)
        else:
            name, sha = self.model_edit.text().strip(), None
        return PromptFile(
            axis, objects, model=name, sha256=sha, window=self.preset_combo.currentText()
        )

    def save_prompts(self, path) -> None:
        write_prompt_file(path, self.prompt_record())
        self.status.setText(f"prompts saved to {path}")

    def load_prompts(self, path) -> None:
        """Add a PROMPTS.json's boxes and points to the prompt layers (without segmenting:
        press S or Propagate, as after drawing them)."""
        record = read_prompt_file(path)
        points, shapes, _ = self.ensure_prompt_layers()
        axis, objects = record.axis, record.objects
        if self._from_our_reader():
            axis, objects = reorder_objects(axis, objects, self.image_layer.ndim)
        if not 0 <= axis < self.image_layer.ndim:
            raise SamMed2DError(f"prompts {path}: axis {record.axis} does not fit this image")
        if record.window in PRESETS:
            self.preset_combo.setCurrentText(record.window)
        self._loading = True
        try:
            add_prompt_shapes(points, shapes, axis, objects)
        finally:
            self._loading = False
            self._on_object_changed(self.object_spin.value())
            self._on_polarity(self.positive_button.isChecked())
        self.object_spin.setValue(objects[0].id)
        self.status.setText(f"{len(objects)} object(s) loaded from {path}")

    def _save_dialog(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save prompts", "prompts.json", "*.json")
        if path:
            try:
                self.save_prompts(path)
            except SamMed2DError as exc:
                show_error(str(exc))

    def _load_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Load prompts", "", "*.json")
        if path:
            try:
                self.load_prompts(path)
            except SamMed2DError as exc:
                show_error(str(exc))

    def _bind_keys(self) -> None:
        for key, method in KEYS.items():
            action = getattr(self, method)
            self.viewer.bind_key(key, lambda viewer, action=action: action(), overwrite=True)

    def _unbind_keys(self) -> None:
        for key in KEYS:
            self.viewer.bind_key(key, None)


def _update(bar, done: int, total: int) -> None:
    if total and bar.total != total:
        bar.total = total
    bar.n = done
    bar.refresh()
