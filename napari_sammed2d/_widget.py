"""The dock widget: prompts from Points and Shapes layers, masks into one Labels layer.

Keys (while the viewer has focus, whichever layer is active; none of them is a napari
layer or viewer shortcut, so the Points and Shapes layers keep their own S, T, P...):
  Shift+S  segment the current slice of the current object
  Shift+R  run propagation of the current object through the volume
  Shift+G  propagate every object that has prompts, in one run
  N        new object (next label id)
  Shift+T  toggle positive / negative points
  Shift+C  clear the current object's prompts
They are removed when the widget closes.

No model work runs on the Qt thread. A click or box becomes a request in a mailbox of one
(the newest wins) served by one worker; the model loads there, once. Other slices are
embedded in the background, nearest first, pausing while a click or a propagation runs.
Every failure ends as a notification with one line (the traceback goes to the log).
What the widget computes and the rules it merges masks by live in `_session.py`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import weakref
from dataclasses import fields, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from napari.qt.threading import thread_worker
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QObject, Qt, QTimer, Signal
from qtpy.QtGui import QColor
from qtpy.QtWidgets import (
    QAbstractItemView,
    QApplication,
    QCheckBox,
    QColorDialog,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from sammed2d.choices import PRECISIONS
from sammed2d.drawn import DrawnSlices, labelled_slices
from sammed2d.errors import Cancelled, SamMed2DError
from sammed2d.finetune import summary
from sammed2d.intensity import PRESETS
from sammed2d.io import Volume, atomic_write, dicom_source, weights_output
from sammed2d.labelfiles import label_values, read_labels
from sammed2d.measure import object_sizes, size_text, write_sizes_csv
from sammed2d.objects import (
    ObjectPrompts,
    PropagationSettings,
    check_objects_fit,
)
from sammed2d.orientation import slice_of
from sammed2d.prompt_files import (
    PromptFile,
    prompt_file_text,
    read_prompt_file,
    write_prompt_file,
)
from sammed2d.review import check_status, next_to_check, slices_to_check
from sammed2d.segments import default_segment

from ._autosave import AutoSave, checked_path, prompts_beside
from ._io import LAYER_ORDER, labels_layer_kwargs, mm_per_unit, write_labels_layer
from ._prompts import add_prompt_shapes, clip_box_to, reorder_objects, slice_prompts
from ._session import (
    LOCAL_ONLY,
    Engine,
    FinetuneRequest,
    Latest,
    ObjectTable,
    RemoteEngine,
    SegmentRequest,
    Warmup,
    correction_stretch,
    serve_clicks,
    slice_changes,
)

CANCELLED = "cancelled"  # what a cancelled job returns to its landing

if TYPE_CHECKING:
    import napari

log = logging.getLogger("napari_sammed2d")

POINTS_NAME = "SAM points"
SHAPES_NAME = "SAM boxes"
LABELS_NAME = "SAM labels"
KEYS = {
    "Shift-S": "segment_current_slice",
    "Shift-R": "propagate_object",
    "Shift-G": "propagate_all",
    "N": "new_object",
    "Shift-T": "toggle_polarity",
    "Shift-C": "clear_prompts",
    "Shift-K": "check_next",
    "Shift-M": "measure",
}
CHECK_HINT = " · Shift+K: the slices to check"  # after a propagation's status
MEASURED_LINES = 5  # objects whose sizes the status line lists; the rest go to a notification
AUTOSAVE_SECONDS = 5  # how often the labels are handed to auto-save (written only if changed)
KEYS_HELP = (
    "Shift+S segment · Shift+R propagate · Shift+G propagate all · N new object · "
    "Shift+T +/− · Shift+C clear · Shift+K next slice to check · Shift+M measure"
)


class SegmentWidget(QWidget):
    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        self.viewer = viewer
        self.engine = Engine()
        self.table = ObjectTable()
        self.mailbox = Latest()
        self._server = None  # the worker serving clicks
        self._prefetch = None
        self._prefetch_preset = None
        self._voxels = (None, None)  # (a lazy layer's data, its voxels read into memory)
        # (Labels layer, objects' names and colours) last styled: the layer held weakly
        self._styled = (lambda: None, None, None)
        self._busy = None  # the running propagation worker
        # Propagation settings but the slice step (its spin box's): a loaded prompts file's,
        # kept for its propagations and saved with it again.
        self._settings = PropagationSettings()
        # Slice ranges of a loaded file's objects (id -> (first, last)): such an object is
        # followed through its range, as `sammed2d propagate` follows it.
        self._ranges: dict[int, tuple[int, int]] = {}
        # Per object, the slices whose painted labels seeded a propagation (taken as given):
        # they anchor its later runs and corrections as prompted slices do.
        # A slice painted since its last run landed joins them (`sammed2d.drawn`).
        self._drawn = DrawnSlices()
        # Per object, the predicted IoU of each slice its propagations segmented (slice ->
        # IoU), and the slices Check next has shown since its labels last landed.
        self._scores: dict[int, dict[int, float]] = {}
        self._checked: dict[int, set[int]] = {}
        self._cancel = False
        self._stopping = False
        self._loading = False
        self._keys_bound = False
        self._bridge = _Bridge()  # worker threads -> the Qt thread
        self._bridge.message.connect(self._on_served)
        self._seq = 0
        self._propagated_at: dict[int, int] = {}  # object id -> seq when its run started
        self._autosave_bridge = _Bridge()  # the saving thread -> the Qt thread
        self._autosave_bridge.message.connect(self._on_autosaved)
        self.autosave = AutoSave(write_labels_layer, self._autosave_bridge.message.emit)
        self._autosave_path = None  # the file auto-save writes; None: off
        self._autosave_error = None  # the last failure shown (each is shown once)
        self._prompts_saved = None  # (path, text) of the prompts file auto-save wrote last
        self._autosave_timer = QTimer(self)
        self._autosave_timer.setInterval(AUTOSAVE_SECONDS * 1000)
        self._autosave_timer.timeout.connect(self._autosave_tick)

        self.image_combo = QComboBox()
        self.engine_combo = QComboBox()
        self.engine_combo.addItems(["local", "remote"])
        self.engine_combo.setToolTip(
            "local: the model runs in napari (needs torch); remote: a `sammed2d serve` "
            "on another machine runs it"
        )
        self.server_edit = QLineEdit(os.environ.get("SAMMED2D_SERVER", "http://127.0.0.1:8765"))
        self.server_edit.setToolTip("URL of a `sammed2d serve` (https:// behind a proxy)")
        self.key_edit = QLineEdit(os.environ.get("SAMMED2D_API_KEY", ""))
        self.key_edit.setEchoMode(QLineEdit.EchoMode.Password)
        self.key_edit.setToolTip("the server's API key (needed off loopback)")
        self.model_edit = QLineEdit("litemedsam")
        self.model_edit.setToolTip(
            "a registry name (sam-med2d, litemedsam, medsam, sam) or a .pth file"
        )
        browse = QPushButton("…")
        browse.clicked.connect(self._browse)
        self.device_combo = QComboBox()
        self.device_combo.addItems(["auto", "cpu", "cuda", "mps"])
        self.precision_combo = QComboBox()
        self.precision_combo.addItems(list(PRECISIONS))
        self.precision_combo.setToolTip(
            "bf16: faster image encoding on CPUs with bf16 instructions and on CUDA"
        )
        self.preset_combo = QComboBox()
        self.preset_combo.addItems(list(PRESETS))
        self.object_spin = QSpinBox()  # the current object's id, kept in step with the table
        self.object_spin.setRange(1, 65535)
        self.objects_view = QTableWidget(0, 5)
        self.objects_view.setHorizontalHeaderLabels(["id", "name", "colour", "window", "slices"])
        self.objects_view.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.objects_view.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.objects_view.verticalHeader().setVisible(False)
        # The name takes the width the other columns leave, so a long name is not cut
        # while the table shows empty space beside it.
        self.objects_view.horizontalHeader().setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        self.objects_view.setToolTip("double-click a name to rename, a colour to change it")
        add_object = QPushButton("Add object (N)")
        delete_object = QPushButton("Delete object")
        self.positive_button = QPushButton("Positive points (Shift+T)")
        self.positive_button.setCheckable(True)
        self.positive_button.setChecked(True)
        self.positive_button.toggled.connect(self._on_polarity)
        self.segment_button = QPushButton("Segment slice (Shift+S)")
        self.propagate_button = QPushButton("Propagate (Shift+R)")
        self.propagate_all_button = QPushButton("Propagate all (Shift+G)")
        self.propagate_all_button.setToolTip(
            "every object with prompts in one run: each slice embedded once, and where two "
            "objects' masks overlap the pixel goes to the more confident one (as `sammed2d "
            "propagate` does with a prompts file)"
        )
        self.step_spin = QSpinBox()
        self.step_spin.setRange(0, 10)  # 0: automatic (None in the settings)
        self.step_spin.setPrefix("every ")
        self.step_spin.setSuffix(" slice(s)")
        self.step_spin.setSpecialValueText("every 3 mm (auto)")
        self.step_spin.setToolTip(
            "propagation walks every n-th slice and interpolates the slices between: n times "
            "fewer slices to embed. auto: as many slices as lie within 3 mm (every slice of "
            "a scan with slices 2 mm apart or more; every third of a 1 mm scan)"
        )
        self.check_button = QPushButton("Check next (Shift+K)")
        self.check_button.setToolTip(
            "go to the current object's next slice to look at after a propagation, most "
            "suspect first: the model's predicted IoU there is low, or its mask differs from "
            "its neighbours' (a jump, a slip onto something else, a gap)"
        )
        self.measure_button = QPushButton("Measure (Shift+M)")
        self.measure_button.setToolTip(
            "each object's volume (mL) and longest diameter (mm) on the slices you are "
            "looking through, as they are now (the diameter between its pixels' farthest "
            "corners); as `sammed2d measure`"
        )
        save_sizes = QPushButton("Save sizes…")
        save_sizes.setToolTip("measure, and write the sizes to a CSV file")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        clear_button = QPushButton("Clear prompts (Shift+C)")
        clear_slice = QPushButton("Clear slice")
        clear_object = QPushButton("Clear object")
        save_button = QPushButton("Save prompts…")
        save_button.setToolTip("PROMPTS.json that `sammed2d propagate` and `batch` replay")
        load_button = QPushButton("Load prompts…")
        load_labels_button = QPushButton("Load labels…")
        load_labels_button.setToolTip(
            "labels drawn on some slices (NIfTI or NRRD with names beside, .seg.nrrd, DICOM "
            "SEG, RT Structure Set) into SAM labels, each label an object whose labelled "
            "slices are taken as given: Propagate all fills between them and walks past "
            "them, as `sammed2d propagate --seeds`"
        )
        self.finetune_button = QPushButton("Fine-tune on labels…")
        self.finetune_button.setToolTip(
            "train the model's mask decoder on this image's labels (every labelled slice: "
            "check them first; the last ones are held out to check it), save it as a .pth "
            "with a .json record, and use it from then on; the encoder is kept, so no "
            "slice is embedded again. As `sammed2d finetune` with its defaults (5 epochs); "
            "Cancel keeps the model as it was"
        )
        self._job_buttons = (
            self.propagate_button, self.propagate_all_button, self.finetune_button,
            self.measure_button, save_sizes,
        )  # fmt: skip
        self.autosave_check = QCheckBox("Auto-save")
        self.autosave_check.setToolTip(
            f"write the labels to this file every {AUTOSAVE_SECONDS} s when they changed, "
            "with names and colours (off the GUI thread; off until you choose a file)"
        )
        self.autosave_edit = QLineEdit()
        self.autosave_edit.setPlaceholderText("labels file (.seg.nrrd, .nii.gz, .dcm SEG)")
        autosave_browse = QPushButton("…")
        autosave_browse.clicked.connect(self._autosave_dialog)
        self.autosave_label = QLabel("")
        self.progress_bar = QProgressBar()
        self.progress_bar.setVisible(False)
        self.status = QLabel("")
        self.status.setWordWrap(True)

        model_row = QHBoxLayout()
        model_row.addWidget(self.model_edit)
        model_row.addWidget(browse)
        form = QFormLayout()
        form.addRow("Image", self.image_combo)
        form.addRow("Engine", self.engine_combo)
        form.addRow("Server", self.server_edit)
        form.addRow("API key", self.key_edit)
        self._remote_rows = (self.server_edit, self.key_edit)
        self._local_rows = (self.model_edit, browse, self.device_combo, self.precision_combo)
        form.addRow("Model", model_row)
        form.addRow("Device", self.device_combo)
        form.addRow("Precision", self.precision_combo)
        form.addRow("Intensity", self.preset_combo)
        form.addRow("Propagate", self.step_spin)
        autosave_row = QHBoxLayout()
        autosave_row.addWidget(self.autosave_check)
        autosave_row.addWidget(self.autosave_edit)
        autosave_row.addWidget(autosave_browse)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.objects_view)
        rows = [
            (add_object, delete_object),
            (self.positive_button, clear_button),
            (self.segment_button, self.propagate_button),
            (self.propagate_all_button, self.check_button),
            (self.measure_button, save_sizes),
            (clear_slice, clear_object),
            (save_button, load_button),
            (load_labels_button, self.finetune_button),
        ]
        for pair in rows:
            row = QHBoxLayout()
            for w in pair:
                row.addWidget(w)
            layout.addLayout(row)
        layout.addLayout(autosave_row)
        layout.addWidget(self.autosave_label)
        layout.addWidget(self.cancel_button)
        layout.addWidget(self.progress_bar)
        keys = QLabel(KEYS_HELP)
        keys.setWordWrap(True)
        keys.setToolTip(__doc__.split("\n\n")[1])
        layout.addWidget(keys)
        layout.addWidget(self.status)
        layout.addStretch()

        self.segment_button.clicked.connect(self.segment_current_slice)
        self.propagate_button.clicked.connect(self.propagate_object)
        self.propagate_all_button.clicked.connect(self.propagate_all)
        self.check_button.clicked.connect(self.check_next)
        self.measure_button.clicked.connect(lambda: self.measure())
        save_sizes.clicked.connect(self._save_sizes_dialog)
        self.cancel_button.clicked.connect(self.cancel)
        add_object.clicked.connect(self.new_object)
        delete_object.clicked.connect(self.delete_object)
        clear_button.clicked.connect(self.clear_prompts)
        clear_slice.clicked.connect(self.clear_slice)
        clear_object.clicked.connect(self.clear_object)
        save_button.clicked.connect(self._save_dialog)
        load_button.clicked.connect(self._load_dialog)
        load_labels_button.clicked.connect(self._load_labels_dialog)
        self.finetune_button.clicked.connect(self._finetune_dialog)
        self.objects_view.itemSelectionChanged.connect(self._on_table_selection)
        self.objects_view.itemChanged.connect(self._on_table_edit)
        self.objects_view.cellDoubleClicked.connect(self._on_table_double_click)
        self.image_combo.currentTextChanged.connect(self._drop_volume_state)
        self.engine_combo.currentTextChanged.connect(self._on_engine_changed)
        self.server_edit.editingFinished.connect(self._on_engine_changed)
        self.key_edit.editingFinished.connect(self._on_engine_changed)
        self.object_spin.valueChanged.connect(self._on_object_changed)
        self.autosave_check.clicked.connect(self._on_autosave_clicked)
        self.autosave_edit.editingFinished.connect(self._on_autosave_edited)
        self.model_edit.editingFinished.connect(self._drop_volume_state)
        self.device_combo.currentTextChanged.connect(self._drop_volume_state)
        self.precision_combo.currentTextChanged.connect(self._drop_volume_state)
        self.preset_combo.currentTextChanged.connect(self._drop_volume_state)
        viewer.layers.events.inserted.connect(self._refresh_images)
        viewer.layers.events.inserted.connect(self._on_inserted)
        viewer.layers.events.removed.connect(self._refresh_images)
        viewer.layers.events.removed.connect(self._on_removed)
        self._on_engine_changed()
        self._refresh_images()
        self._bind_keys()
        self.table.add(1)
        self._show_objects()

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
        boxes_only = self.engine.boxes_only
        if boxes_only is None and not self.engine.remote:
            boxes_only = self.model_edit.text().strip() in ("litemedsam", "medsam")
        if boxes_only is None or boxes_only:
            shapes.mode = "add_rectangle"
            self.viewer.layers.selection.active = shapes
        else:
            points.mode = "add"
            self.viewer.layers.selection.active = points
        self._warm_up()

    def _warm_up(self) -> None:
        """Load the local model in the click thread as soon as there is an image."""
        engine = self.engine
        if engine.remote or not engine.needs_loading(*self._model_key()) or self.mailbox.busy:
            return
        import importlib.util

        if importlib.util.find_spec("torch") is None:
            return  # said when the user clicks (or uses a remote engine)
        self._serve()
        self.mailbox.put(Warmup(self._model_key()))

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
        camera_of(self.viewer).orientation2d = (vertical, horizontal)

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
        if getattr(image, "units", None) is not None:  # drawn in the image's units
            geometry["units"] = tuple(image.units[:ndim])
        labels = self._layer(LABELS_NAME)
        shape = image.data.shape[:ndim]
        if labels is None or labels.data.shape != shape:
            if labels is not None:
                self.viewer.layers.remove(labels)
            self._drawn.clear()
            labels = self.viewer.add_labels(
                np.zeros(shape, np.uint16),
                name=LABELS_NAME,
                metadata=dict(image.metadata),
                **geometry,
            )
            self._style_labels(labels)
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

    def _style_labels(self, labels=None) -> None:
        """Names and colours of the objects on the Labels layer: its colormap, its features
        (napari's status bar shows the name) and its metadata (every export uses it)."""
        if labels is None:
            labels = self._layer(LABELS_NAME)
        if labels is None:
            return
        segments = self.table.segments()
        # The colormap already gives every id its default colour, so only colours that
        # differ from it need a new one: a new colormap makes napari rebuild its shader and
        # texture on the GUI thread (40-130 ms with software OpenGL), and a new object (or
        # a propagation landing) must not cost that. The layer is held weakly: a new layer
        # at a freed one's address is still styled.
        colours = tuple(
            (sg.id, tuple(sg.color))
            for sg in segments
            if tuple(sg.color) != tuple(default_segment(sg.id).color)
        )
        names = tuple((sg.id, sg.name) for sg in segments)
        layer, last_colours, last_names = self._styled
        fresh = layer() is not labels
        if fresh or colours != last_colours or names != last_names:
            kwargs = labels_layer_kwargs(segments)
            if fresh or colours != last_colours:
                labels.colormap = kwargs["colormap"]
            labels.features = kwargs["features"]
            self._styled = (weakref.ref(labels), colours, names)
        info = dict((labels.metadata or {}).get("sammed2d") or {})
        info["segments"] = segments
        labels.metadata = {**labels.metadata, "sammed2d": info}
        labels.selected_label = self.object_spin.value()

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
        if value not in self.table.objects:
            self.table.add(value)
            self._show_objects()
        for name in (POINTS_NAME, SHAPES_NAME):
            layer = self._layer(name)
            if layer is not None:
                layer.feature_defaults["object"] = value
        labels = self._layer(LABELS_NAME)
        if labels is not None:
            labels.selected_label = value
        self._select_row(value)

    def _on_engine_changed(self, *args) -> None:
        """Local or remote: the model rows or the server rows; a new engine for a change."""
        remote = self.engine_combo.currentText() == "remote"
        for w in self._remote_rows:
            w.setEnabled(remote)
        for w in self._local_rows:
            w.setEnabled(not remote)
        if remote:
            url, key = self.server_edit.text().strip(), self.key_edit.text().strip()
            if not self.engine.remote or self.engine.source != (url, key):
                try:
                    self.engine = RemoteEngine(url, key)
                except SamMed2DError as exc:
                    self.status.setText(str(exc))
                    return
        elif self.engine.remote:
            self.engine = Engine()
        self._drop_volume_state()

    def _drop_volume_state(self, *args) -> None:
        self._prefetch = None  # a running embedding thread sees this and stops

    # ----- objects --------------------------------------------------------------------------
    def _show_objects(self) -> None:
        view = self.objects_view
        view.blockSignals(True)
        view.setRowCount(0)
        for info in sorted(self.table.objects.values(), key=lambda o: o.id):
            row = view.rowCount()
            view.insertRow(row)
            ident = QTableWidgetItem(str(info.id))
            ident.setFlags(ident.flags() & ~Qt.ItemFlag.ItemIsEditable)
            name = QTableWidgetItem(info.name)
            color = QTableWidgetItem("")
            color.setFlags(color.flags() & ~Qt.ItemFlag.ItemIsEditable)
            color.setBackground(QColor(*info.color))
            # The background disappears under the selection's highlight, and the selected
            # row is the current object, whose colour matters most; a swatch stays.
            color.setData(Qt.ItemDataRole.DecorationRole, QColor(*info.color))
            reached = info.reached
            span = QTableWidgetItem("" if reached is None else f"{reached[0]}–{reached[1]}")
            span.setFlags(span.flags() & ~Qt.ItemFlag.ItemIsEditable)
            for col, item in zip((0, 1, 2, 4), (ident, name, color, span)):
                view.setItem(row, col, item)
            window = QComboBox()
            window.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToContents)
            window.addItems(["(Intensity)", *PRESETS])
            window.setToolTip(
                "this object's intensity window (e.g. lung for a lung lobe; W<width>/L<level> "
                "where its first box chose one on a scan without standard windows)"
            )
            _show_window(window, info.window)
            window.currentTextChanged.connect(
                lambda text, oid=info.id: self.set_object_window(
                    oid, None if text == "(Intensity)" else text
                )
            )
            view.setCellWidget(row, 3, window)
        view.resizeColumnsToContents()
        self._fit_window_column()
        view.blockSignals(False)
        self._select_row(self.object_spin.value())
        self._style_labels()

    def _select_row(self, oid: int) -> None:
        view = self.objects_view
        for row in range(view.rowCount()):
            if view.item(row, 0).text() == str(oid):
                view.blockSignals(True)
                view.selectRow(row)
                view.blockSignals(False)

    def _on_table_selection(self) -> None:
        rows = self.objects_view.selectionModel().selectedRows()
        if rows:
            self.object_spin.setValue(int(self.objects_view.item(rows[0].row(), 0).text()))

    def _on_table_edit(self, item) -> None:
        if item.column() != 1:
            return
        oid = int(self.objects_view.item(item.row(), 0).text())
        try:
            self.rename_object(oid, item.text())
        except SamMed2DError as exc:
            show_error(str(exc))
            self._show_objects()

    def _on_table_double_click(self, row: int, col: int) -> None:
        if col != 2:
            return
        oid = int(self.objects_view.item(row, 0).text())
        color = QColorDialog.getColor(QColor(*self.table.objects[oid].color), self)
        if color.isValid():
            self.recolor_object(oid, (color.red(), color.green(), color.blue()))

    def rename_object(self, oid: int, name: str) -> None:
        self.table.rename(oid, name)
        self._show_objects()

    def recolor_object(self, oid: int, color) -> None:
        self.table.recolor(oid, color)
        self._show_objects()

    def set_object_window(self, oid: int, window: str | None) -> None:
        self.table.set_window(oid, window)
        view = self.objects_view
        for row in range(view.rowCount()):
            combo = view.cellWidget(row, 3)
            if view.item(row, 0).text() == str(oid) and combo is not None:
                combo.blockSignals(True)
                _show_window(combo, window)
                combo.blockSignals(False)
        self._fit_window_column()

    def _fit_window_column(self) -> None:
        """The window column as wide as its widest list: a window a box chose
        ("W1598/L483.3") was cut to "W15…" in the default width, and the view sizes a
        column by its items, not by the widgets set into its cells."""
        view = self.objects_view
        lists = [view.cellWidget(row, 3) for row in range(view.rowCount())]
        for combo in lists:
            if combo is not None:
                combo.ensurePolished()
        widths = [combo.sizeHint().width() for combo in lists if combo is not None]
        if widths:
            view.setColumnWidth(3, max(widths))

    def _name_of(self, oid: int) -> str:
        info = self.table.objects.get(oid)
        return info.name if info is not None else f"object {oid}"

    def window_of(self, oid: int) -> str:
        """The intensity preset object `oid` is segmented in."""
        info = self.table.objects.get(oid)
        return (info.window if info else None) or self.preset_combo.currentText()

    def new_object(self) -> None:
        labels = self._layer(LABELS_NAME)
        used = int(labels.data.max()) if labels is not None and labels.data.size else 0
        oid = max(used, max(self.table.objects, default=0)) + 1
        self.table.add(oid)
        self.object_spin.setValue(oid)
        self._show_objects()

    def delete_object(self) -> None:
        """The current object goes: its prompts, its labels (one undo step), its row."""
        oid = self.object_spin.value()
        self.clear_object()
        self.table.remove(oid)
        if not self.table.objects:
            self.table.add(1)
        self.object_spin.setValue(min(self.table.objects))
        self._show_objects()

    # ----- clicks ---------------------------------------------------------------------------
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
        """(voxels, affine, preset, orientation) of the image layer. A layer from another
        reader has no affine but may have a scale: that gives the spacing (for the slice
        step and oblong pixels) with its axes kept as they are ("array"), in mm where the
        layer's units say what it is in (a microscope's µm); a scale of ones says nothing,
        and gives no affine."""
        image = self.image_layer
        data = self._voxels_of(image)
        affine, orientation = self._geometry(image)
        preset = self.preset_combo.currentText()
        return data, affine, preset, orientation

    @staticmethod
    def _geometry(image):
        """(affine, orientation) of an image layer, as `volume_context` gives them."""
        info = image.metadata.get("sammed2d") or {}
        affine, orientation = info.get("affine"), "radiological"
        scale = _scale_mm(image) if affine is None and image.ndim == 3 else None
        if scale is not None:
            affine, orientation = np.diag([*scale, 1.0]), "array"
        return affine, orientation

    def _voxels_of(self, image) -> np.ndarray:
        """The layer's voxels as a numpy array: of a multiscale layer its full resolution.
        A lazy layer (dask, zarr) is read once, on its first click, not on every click:
        each read loaded the whole volume, and the engine's per-volume caches (the
        intensity window) are keyed on the array."""
        data = image.data[0] if getattr(image, "multiscale", False) else image.data
        if isinstance(data, np.ndarray):
            return data
        source, voxels = self._voxels
        if source is not data:
            voxels = np.asarray(data)
            self._voxels = (data, voxels)
        return voxels

    def _model_key(self) -> tuple[str, str, str]:
        return (
            self.model_edit.text().strip(),
            self.device_combo.currentText(),
            self.precision_combo.currentText(),
        )

    def segment_current_slice(self) -> None:
        """Queue the current slice of the current object (the newest request wins)."""
        try:
            points, shapes, labels = self.ensure_prompt_layers()
            axis = self.slice_axis()
            index = None if axis is None else self.current_index(axis)
            oid = self.object_spin.value()
            prompt = slice_prompts(self.image_layer, points, shapes, oid, axis).get(index)
            if prompt is None:
                return
            data, affine, preset, orientation = self.volume_context()
            shape = (
                data.shape
                if axis is None
                else tuple(s for a, s in enumerate(data.shape) if a != axis)
            )
            prompt = clip_box_to(prompt, shape[:2])
            preset = self.window_of(oid)
            self._seq += 1
            # A correction re-propagates from this request: its short stretch walks every
            # slice.
            request = SegmentRequest(
                oid, axis, index, prompt, data, affine, preset, self._model_key(), self._seq,
                settings=replace(self._settings, slice_step=1), orientation=orientation,
            )  # fmt: skip
        except SamMed2DError as exc:
            show_error(str(exc))
            return
        if oid not in self.table.objects:
            self.table.add(oid)
            self._show_objects()
        self._serve()
        self.mailbox.put(request)
        where = "" if index is None else f" slice {index}"
        self.status.setText(f"segmenting{where}…")

    def _serve(self) -> None:
        """Start the click thread once; it lives until the widget closes. A plain thread,
        not a napari worker: workers share Qt's pool (one thread per core), and a
        long-lived one there would leave a propagation waiting for a free thread."""
        if self._server is not None:
            return
        self._server = threading.Thread(
            target=serve_clicks,
            args=(
                self.mailbox,
                lambda: self.engine,  # the user may switch engines between clicks
                self._bridge.message.emit,
                lambda: self._stopping,
                self.server_edit.text,
            ),
            name="sammed2d-clicks",
            daemon=True,
        )
        self._server.start()

    def _on_served(self, message) -> None:
        kind = message[0]
        if kind == "status":
            self.status.setText(message[1])
        elif kind == "loaded":
            self.status.setText(message[1] or f"{self.model_edit.text().strip()} loaded")
            if message[1]:  # a remote engine: which model, device and server, kept at hand
                self.engine_combo.setToolTip(f"connected: {message[1]}")
            QTimer.singleShot(0, self.prepare_prompt_layers)
        elif kind == "info":
            self.status.setText(message[1])
            show_info(message[1])
        elif kind == "error":
            self._report_error("segmenting failed", message[1])
        elif kind == "mask":
            _, request, mask, window, asked = message
            info = self.table.objects.get(request.object_id)
            chosen = window is not None and info is not None and info.window is None
            if chosen:
                # `auto`: the object keeps the window its first box asked for (lung,
                # bone or soft tissue), shown in the table and used from now on.
                self.set_object_window(request.object_id, window)
            self._apply_click(request, mask)
            if chosen and asked and request.index is not None:
                # Said once, where the box chose other than the volume's own window: a box
                # drawn loose round a small structure beside bone can ask for bone (README,
                # Limits).
                self.status.setText(
                    f"{self.status.text()} · {window} window, from the grey levels in its "
                    "box (another: the object table's window)"
                )

    def _apply_click(self, request: SegmentRequest, mask: np.ndarray) -> None:
        labels = self._layer(LABELS_NAME)
        if labels is None or self.image_layer is None or request.data is not self._image_data():
            return  # the image changed meanwhile: the result belongs to nothing shown
        axis, index, oid = request.axis, request.index, request.object_id
        info = self.table.objects.get(oid)
        self.status.setText("" if index is None else f"{self._name_of(oid)}: slice {index}")
        stretch = None
        newer = request.seq > self._propagated_at.get(oid, -1)
        if axis is not None and info is not None and self._busy is None and newer:
            self._drawn.note_painted(oid, labels.data, oid, axis)
            anchors = {*self._prompted_slices(oid, axis), *self._drawn.slices(oid)}
            prompted = sorted(k for k in anchors if k is not None and k != index)
            stretch = correction_stretch(index, prompted, info.reached, labels.data.shape[axis])
        if stretch is None or stretch == (index, index):
            self._write_slice(labels, axis, index, oid, mask)
        else:
            self._correct(labels, request, mask, stretch)
        if axis is not None:
            self._start_prefetch(axis, index)

    def _image_data(self):
        """The voxels requests are made from (what a finished request is checked against)."""
        image = self.image_layer
        return None if image is None else self._voxels_of(image)

    def _prompted_slices(self, oid, axis):
        points, shapes = self._layer(POINTS_NAME), self._layer(SHAPES_NAME)
        return slice_prompts(self.image_layer, points, shapes, oid, axis).keys()

    def _write_slice(self, labels, axis, index, oid, mask) -> None:
        view = labels.data if axis is None else slice_of(labels.data, index, axis)
        remove, add = slice_changes(view, oid, mask)
        with labels.block_history():
            for where, value in ((remove, 0), (add, oid)):
                if where.any():
                    labels.data_setitem(_full_index(where, axis, index), value)

    # ----- corrections ----------------------------------------------------------------------
    def _correct(self, labels, request, mask, stretch) -> None:
        """A new prompt on an object already propagated: show the slice now, re-propagate the
        stretch up to the neighbouring prompted slices, and land both as one undo step."""
        axis, index, oid = request.axis, request.index, request.object_id
        sl = _slice_index(axis, index)
        before = np.array(labels.data[sl])
        remove, add = slice_changes(before, oid, mask)
        preview = before.copy()
        preview[remove] = 0
        preview[add] = oid
        labels.data[sl] = preview  # shown at once; not in the history until the stretch lands
        labels.refresh()
        lo, hi = stretch
        points, shapes = self._layer(POINTS_NAME), self._layer(SHAPES_NAME)
        prompts = slice_prompts(self.image_layer, points, shapes, oid, axis)
        seeds = {k: p for k, p in prompts.items() if k is not None and lo <= k <= hi}
        shape = tuple(s for a, s in enumerate(request.data.shape) if a != axis)
        seeds = {k: clip_box_to(p, shape) for k, p in seeds.items()}
        drawn = self._drawn.seeds(oid, labels.data, oid, axis, skip=seeds)
        seeds |= {k: p for k, p in drawn.items() if lo <= k <= hi and k != index}
        obj = ObjectPrompts(oid, seeds, (lo, hi), window=self.table.add(oid).window)

        def land(result):
            labels.data[sl] = before  # the history must see the slice's old content
            self._land(labels, axis, oid, result, only=(lo, hi), keep_slice=(index, mask))

        self._run_propagation(request, [obj], land, f"correcting slices {lo}–{hi}")

    # ----- propagation ----------------------------------------------------------------------
    def propagate_object(self) -> None:
        self._start_propagation(self.object_spin.value())

    def propagate_all(self) -> None:
        """Every object that has prompts, in one run composed as the command line composes
        a prompts file: one undo step, and labels of objects without prompts stay."""
        self._start_propagation(None)

    def _start_propagation(self, oid: int | None) -> None:
        """Propagate object `oid`, or with None every object that has prompts in one run;
        where it cannot start, a one-line error says why."""
        if self._busy is not None:
            show_info("a propagation is already running")
            return
        try:
            points, shapes, labels = self.ensure_prompt_layers()
            axis = self.slice_axis()
            if axis is None:
                raise SamMed2DError("propagation needs a 3D volume")
            objects = self._object_prompts(points, shapes, axis, None if oid is None else [oid])
            painted = not objects and oid is not None
            if painted:  # its painted slices, each taken as given, become its drawn slices
                drawn = labelled_slices(labels.data, oid, axis)
                if drawn.size:
                    self._drawn.start(oid, drawn)
                    objects = self._object_prompts(points, shapes, axis, [oid])
            if not objects:
                raise SamMed2DError(
                    "no object has prompts: draw a box first"
                    if oid is None
                    else f"{self._name_of(oid)} has no prompts or labels: draw a box or paint "
                    "a slice first"
                )
            data, affine, _, orientation = self.volume_context()
            shape = tuple(s for a, s in enumerate(data.shape) if a != axis)
            for obj in objects:
                obj.slices = {k: clip_box_to(p, shape) for k, p in obj.slices.items()}
        except SamMed2DError as exc:
            show_error(str(exc))
            return
        self._seq += 1
        for obj in objects:
            self._propagated_at[obj.id] = self._seq
        request = SegmentRequest(
            objects[0].id,
            axis,
            None,
            None,
            data,
            affine,
            # one object: its own window; several: each one's rides on its ObjectPrompts
            self.window_of(oid) if oid is not None else self.preset_combo.currentText(),
            self._model_key(),
            settings=replace(self._settings, slice_step=self.slice_step()),
            orientation=orientation,
        )
        ids = [o.id for o in objects]

        def land(result):
            if request.preset == "auto":  # a painted object's, or every one's in Propagate all
                self._keep_windows(ids if oid is None else [oid] if painted else [], result)
            if oid is not None:
                self._land(labels, axis, oid, result)
            else:
                self._land_all(labels, axis, ids, result)

        if oid is not None:
            what = f"propagating {objects[0].name}"
        else:
            what = f"propagating {len(ids)} objects" if len(ids) > 1 else "propagating"
        self._run_propagation(request, objects, land, what)

    def _keep_windows(self, ids, result) -> None:
        """Objects of `ids` without a window keep the one the run chose under `auto`, as a
        first box keeps the one it asked for."""
        windows = getattr(result, "windows", None) or {}  # an engine from before the field
        for oid in ids:
            info = self.table.objects.get(oid)
            if info is not None and info.window is None and oid in windows:
                self.set_object_window(oid, windows[oid])

    def _object_prompts(self, points, shapes, axis, ids=None, drawn=True) -> list[ObjectPrompts]:
        """The objects (all that have prompts, or those of `ids`) with their prompts, names,
        colours and windows, in id order; with `drawn`, an object's drawn slices too, as
        given masks."""
        if ids is None:
            ids = set(np.asarray(points.features["object"]).tolist())
            ids |= set(np.asarray(shapes.features["object"]).tolist())
            ids |= set(self._drawn.keys()) if drawn else set()
        labels = self._layer(LABELS_NAME)
        objects = []
        for oid in sorted(int(i) for i in ids):
            prompts = slice_prompts(self.image_layer, points, shapes, oid, axis)
            if drawn and oid in self._drawn and labels is not None:
                self._drawn.note_painted(oid, labels.data, oid, axis)
                prompts = self._drawn.seeds(oid, labels.data, oid, axis, skip=prompts) | prompts
            if prompts:
                info = self.table.add(oid)
                span = self._ranges.get(oid)
                if span is not None:  # a prompt drawn outside it widens it
                    span = (min(span[0], *prompts), max(span[1], *prompts))
                objects.append(
                    ObjectPrompts(
                        oid, prompts, span, name=info.name, color=info.color, window=info.window
                    )
                )
        return objects

    def _land_all(self, labels, axis, ids, result) -> None:
        """Write a run of several objects as one undo step: their pixels become what the run
        composed; pixels of other objects (painted, or propagated on their own) stay."""
        data = labels.data
        ours = np.isin(data, ids)
        found = result.labels.astype(data.dtype, copy=False)
        with labels.block_history():
            if not result.cancelled:  # a cancelled run only adds; it never erases
                stale = ours & (found != data)
                if stale.any():
                    labels.data_setitem(np.nonzero(stale), 0)
            # the run's own pixels that changed are free now; other objects' stay theirs
            fresh = (found > 0) & (labels.data == 0)
            if fresh.any():
                where = np.nonzero(fresh)
                labels.data_setitem(where, found[where])
        parts = []
        for oid in ids:
            self._note_scores(oid, result.scores.get(oid))
            info = self._note_reached(labels, axis, oid)
            span = "none" if info.reached is None else f"{info.reached[0]}–{info.reached[1]}"
            parts.append(f"{info.name} {span}" + (f" ({info.window})" if info.window else ""))
        self._show_objects()
        cancelled = " (cancelled)" if result.cancelled else ""
        self.status.setText("slices: " + ", ".join(parts) + cancelled + CHECK_HINT)

    def _run_propagation(self, request, objects, on_result, what: str) -> None:
        engine = self.engine

        def call(report, should_stop):
            return engine.propagate(
                request,
                objects,
                progress=lambda done, total: report(what, done, total, "slice"),
                should_stop=should_stop,
            )

        self._run_job(call, on_result, what)

    def _run_job(self, call, on_result, what: str) -> None:
        """Long work off the GUI thread, with the progress bar and Cancel: `call(report,
        should_stop)` runs in a thread and reports (label, done, total, unit); what it
        returns goes to `on_result` on the GUI thread, an error to a one-line message."""
        self._cancel = False
        self.progress_bar.setVisible(True)
        self.progress_bar.setRange(0, 0)
        self.progress_bar.setFormat(f"{what}: loading…")

        @thread_worker
        def work():
            # The call reports through a callback; the worker relays it to the GUI thread
            # by yielding, polling a helper thread that does the work.
            state = {"progress": (what, 0, 0, "")}
            result = {}

            def report(label, done, total, unit):
                state["progress"] = (label, done, total, unit)

            def run():
                try:
                    result["value"] = call(report, lambda: self._cancel)
                except BaseException as exc:  # noqa: BLE001 - re-raised in the worker below
                    result["error"] = exc

            thread = threading.Thread(target=run, daemon=True)
            thread.start()
            while thread.is_alive():
                thread.join(0.1)
                yield state["progress"]
            if "error" in result:
                raise result["error"]  # reaches worker.errored, so the user sees it
            return result.get("value")

        worker = work()
        worker.yielded.connect(lambda d: self._show_progress(*d))
        worker.returned.connect(lambda r: r is not None and on_result(r))
        worker.errored.connect(lambda e: self._report_error(f"{what} failed", e))
        worker.finished.connect(self._finish)
        self._busy = worker
        self.cancel_button.setEnabled(True)
        for button in self._job_buttons:
            button.setEnabled(False)
        worker.start()

    def _show_progress(self, what: str, done: int, total: int, unit: str = "slice") -> None:
        if total:
            self.progress_bar.setRange(0, total)
            self.progress_bar.setValue(done)
            self.progress_bar.setFormat(f"{what}: {unit} {done} of {total}")
        elif what != self.progress_bar.format().split(":")[0]:  # a step without a count
            self.progress_bar.setRange(0, 0)
            self.progress_bar.setFormat(f"{what}…")

    def _land(self, labels, axis, oid, result, only=None, keep_slice=None) -> None:
        """Write an object's propagation as one undo step. `only` limits it to a stretch of
        slices (a correction, whose prompted slice `keep_slice` is written as segmented)."""
        found = result.labels == oid
        n = labels.data.shape[axis]
        lo, hi = only if only is not None else (0, n - 1)
        inside = np.zeros(n, bool)
        inside[lo : hi + 1] = True
        shape = [1, 1, 1]
        shape[axis] = n
        inside = inside.reshape(shape)
        if keep_slice is not None:
            index, mask = keep_slice
            sl = _slice_index(axis, index)
            found[sl] = mask
        with labels.block_history():  # one Ctrl+Z undoes it
            # A cancelled run only adds what it finished; it never erases earlier work.
            stale = (labels.data == oid) & ~found & inside
            if stale.any() and not result.cancelled:
                labels.data_setitem(np.nonzero(stale), 0)
            fresh = found & (labels.data == 0) & inside
            if fresh.any():
                labels.data_setitem(np.nonzero(fresh), oid)
        self._note_scores(oid, result.scores.get(oid), (lo, hi), keep_slice)
        info = self._note_reached(labels, axis, oid)
        self._show_objects()
        text = (
            "no slices" if info.reached is None else f"slices {info.reached[0]}–{info.reached[1]}"
        )
        cancelled = " (cancelled)" if result.cancelled else ""
        stepped = f", every {result.slice_step} slices" if result.slice_step > 1 else ""
        several = info.reached is not None and info.reached[1] > info.reached[0]
        hint = CHECK_HINT if several else ""
        self.status.setText(f"{info.name}: {text}{stepped}{cancelled}{hint}")

    def _note_scores(self, oid, scores, stretch=None, keep_slice=None) -> None:
        """Keep the predicted IoU of each slice a run segmented for `oid` (within `stretch`,
        for a correction) for Check next; a slice written as the user's own segmentation
        has none."""
        kept = self._scores.setdefault(oid, {})
        scores = np.asarray([] if scores is None else scores, np.float64)
        lo, hi = stretch if stretch is not None else (0, len(scores) - 1)
        for index in [i for i in kept if lo <= i <= hi]:
            del kept[index]
        for index in range(lo, min(hi + 1, len(scores))):
            if np.isfinite(scores[index]):
                kept[index] = float(scores[index])
        if keep_slice is not None:
            kept.pop(keep_slice[0], None)
        self._checked.pop(oid, None)  # new labels: Check next starts from the top again

    def check_next(self) -> None:
        """Go to the current object's next slice to check (`sammed2d.review`), the most
        suspect first; each press shows the next, then starts again from the first."""
        labels, image = self._layer(LABELS_NAME), self.image_layer
        try:
            axis = None if image is None else self.slice_axis()
        except SamMed2DError as exc:
            show_info(str(exc))
            return
        oid = self.object_spin.value()
        name = self._name_of(oid)
        if labels is None or axis is None or labels.ndim != 3:
            self.status.setText("Check next needs a volume with propagated labels")
            return
        prompted = slice_prompts(
            image, self._layer(POINTS_NAME), self._layer(SHAPES_NAME), oid, axis
        )
        given = {k for k in prompted if k is not None} | self._drawn.slices(oid)  # not to check
        ranked = slices_to_check(
            np.asarray(labels.data), oid, axis, self._scores.get(oid), given, limit=None
        )
        if not ranked:
            self.status.setText(f"{name}: nothing to check (labels on fewer than two slices)")
            return
        rank, pick = next_to_check(ranked, self._checked.setdefault(oid, set()))
        self._go_to_slice(axis, pick.index)
        self.status.setText(f"{check_status(name, rank, len(ranked), pick)} (Shift+K: the next)")

    def measure(self, path=None) -> None:
        """Each object's size in SAM labels as they are now (`sammed2d.measure`): volume in
        mL and longest diameter in mm on the slices the viewer shows (in voxels and pixels
        for an image without a voxel size), in the status line; with `path`, also written
        there as CSV. Off the GUI thread (0.6 s for 14 structures over 300 slices)."""
        labels, image = self._layer(LABELS_NAME), self.image_layer
        if labels is None or image is None or labels.ndim not in (2, 3):
            self.status.setText("Measure needs an image and its SAM labels")
            return
        data = np.asarray(labels.data)
        if labels.ndim == 2:  # one image: measured as one slice 1 mm thick, so mL are mm³/1000
            scale = _scale_mm(image)
            affine = None if scale is None else np.diag([1.0, *scale, 1.0])
            data, axis = data[None], 0
        else:
            affine, _ = self._geometry(image)
            try:
                axis = self.slice_axis()
            except SamMed2DError:  # 3D rendering: the axial slices, as `sammed2d measure`
                axis = None
        physical = affine is not None
        grid = np.asarray(affine, float) if physical else np.eye(4)
        if axis is None and not physical:
            axis = 0
        names = {oid: info.name for oid, info in self.table.objects.items()}

        def call(report, should_stop):
            report("measuring sizes", 0, 0, "")
            sizes = object_sizes(data, grid, axis)
            if path is not None and sizes:
                write_sizes_csv(path, sizes, names)
            return sizes

        def done(sizes):
            if not sizes:
                self.status.setText("nothing to measure: SAM labels are empty")
                return
            flat = labels.ndim == 2
            lines = {s.id: size_text(s, self._name_of(s.id), physical, flat) for s in sizes}
            saved = f"\nwritten to {Path(path).name}" if path is not None else ""
            shown = list(lines.values())
            if len(shown) > MEASURED_LINES:  # the current object, and where the rest are
                oid = self.object_spin.value()
                first = lines.get(oid, shown[0])
                shown = [first, f"and {len(lines) - 1} more in the notification"]
            self.status.setText("sizes now:\n" + "\n".join(shown) + saved)
            # napari's notification list keeps them all
            show_info("sizes: " + "; ".join(lines.values()) + saved.replace("\n", " · "))

        self._run_job(call, done, "measuring")

    def _save_sizes_dialog(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save sizes", "sizes.csv", "CSV (*.csv)")
        if path:
            self.measure(path)

    def _go_to_slice(self, axis: int, index: int) -> None:
        """Move the viewer to slice `index` along the image's data axis `axis`."""
        image = self.image_layer
        point = np.asarray(image.world_to_data(self.viewer.dims.point[-image.ndim :]), float)
        point[axis] = index
        world = image.data_to_world(point)
        offset = self.viewer.dims.ndim - image.ndim
        self.viewer.dims.set_point(offset + axis, float(world[axis]))

    def _note_reached(self, labels, axis, oid, present=None):
        """After a run landed: object `oid`'s table row, its first and last slice with labels
        noted there, and for an object with drawn slices what the run left on each.
        `present`: its labelled slices, where the caller has them."""
        if present is None:
            present = labelled_slices(labels.data, oid, axis)
        info = self.table.add(oid)
        info.reached = (int(present[0]), int(present[-1])) if present.size else None
        if oid in self._drawn:
            self._drawn.note_landed(oid, labels.data, oid, axis, present)
        return info

    def _report_error(self, what: str, exc: BaseException) -> None:
        """One line in a notification and the status; the traceback goes to the log."""
        log.error(what, exc_info=exc)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        text = first if isinstance(exc, SamMed2DError) else f"{what}: {type(exc).__name__}: {first}"
        self.status.setText(text)
        show_error(text)

    def _finish(self) -> None:
        self.progress_bar.setVisible(False)
        self._busy = None
        self.cancel_button.setEnabled(False)
        for button in self._job_buttons:
            button.setEnabled(True)

    def cancel(self) -> None:
        self._cancel = True

    # ----- fine-tuning ------------------------------------------------------------------------
    def _finetune_dialog(self) -> None:
        path, _ = QFileDialog.getSaveFileName(
            self, "Save the fine-tuned model", "tuned.pth", "PyTorch (*.pth)"
        )
        if path:
            self.finetune_to(path)

    def finetune_to(self, path) -> None:
        """Fine-tune the model on the image's labels in the background, write it to `path`
        (.pth, and PATH.json), and make it the model; where it cannot start, one line says
        why."""
        if self._busy is not None:
            show_info("wait for the running propagation or fine-tune (or cancel it)")
            return
        try:
            if self.engine.remote:
                raise SamMed2DError(LOCAL_ONLY)
            _, _, labels = self.ensure_prompt_layers()
            axis = self.slice_axis()
            if axis is None:
                raise SamMed2DError("fine-tuning needs a 3D volume with labelled slices")
            path = weights_output(path, self.model_edit.text().strip())
            data, affine, preset, orientation = self.volume_context()
            truth = np.array(labels.data)  # a copy: painting may go on while it trains
            if not truth.any():
                raise SamMed2DError("the labels are empty: segment or paint some slices first")
        except SamMed2DError as exc:
            show_error(str(exc))
            return
        request = FinetuneRequest(
            data, affine, truth, axis, preset, self._model_key(), str(path), orientation
        )
        engine = self.engine

        def call(report, should_stop):
            def progress(what, done, total):
                report(what, done, total, "slice" if what == "embedding" else "step")

            try:
                return engine.finetune(request, progress, should_stop)
            except Cancelled:
                return CANCELLED

        def land(result):
            if result is CANCELLED:
                self.status.setText("fine-tuning cancelled: the model is as it was")
                return
            self.model_edit.setText(str(path))
            self._drop_volume_state()
            self.status.setText(f"{summary(result)}; now using {path.name}")

        self._run_job(call, land, "fine-tuning")

    # ----- background embedding -------------------------------------------------------------
    def _start_prefetch(self, axis: int, index: int) -> None:
        """Embed the other slices in the background, nearest first, through the cache,
        pausing while a click is served or a propagation runs."""
        if not self.engine.ready:
            return
        data, affine, _, orientation = self.volume_context()
        # In the current object's window: the slices its next clicks and its propagation
        # will ask for (an object of an MR has a window of its own, from its first box).
        preset = self.window_of(self.object_spin.value())
        if self._prefetch is not None:
            if self._prefetch_preset == preset:
                return
            self._prefetch = None  # the running one, in another window, sees this and stops
        engine, mailbox = self.engine, self.mailbox
        order = sorted(range(data.shape[axis]), key=lambda i: abs(i - index))

        send = self._bridge.message.emit

        def keep_going() -> bool:
            while (mailbox.busy or self._busy is not None) and not self._stopping:
                time.sleep(0.02)
            return not self._stopping and self._prefetch is thread

        def prefetch():
            try:
                engine.embed_ahead(data, affine, preset, axis, order, keep_going, orientation)
            except Exception as exc:  # noqa: BLE001 - shown to the user
                send(("error", exc))

        thread = threading.Thread(target=prefetch, name="sammed2d-embed", daemon=True)
        self._prefetch, self._prefetch_preset = thread, preset
        thread.start()

    # ----- clearing -------------------------------------------------------------------------
    def _remove_prompts(self, oid: int, index: int | None = None, axis: int | None = None):
        if index is None:  # all its prompts go, and with them a loaded file's range
            self._ranges.pop(oid, None)
        points, shapes = self._layer(POINTS_NAME), self._layer(SHAPES_NAME)
        self._loading = True  # removing prompts must not segment anything
        try:
            for layer in (points, shapes):
                if layer is None or not len(layer.data):
                    continue
                mine = np.asarray(layer.features["object"]) == oid
                if index is not None and axis is not None:
                    from ._prompts import to_image_coords

                    on = []
                    for item in layer.data:
                        coords = to_image_coords(layer, self.image_layer, np.atleast_2d(item))
                        on.append(int(round(coords[0][axis])) == index)
                    mine &= np.array(on, bool)
                if mine.any():
                    layer.selected_data = set(np.flatnonzero(mine))
                    layer.remove_selected()
        finally:
            self._loading = False

    def clear_prompts(self) -> None:
        self._remove_prompts(self.object_spin.value())

    def clear_slice(self) -> None:
        """The current object's prompts and labels on the current slice (one undo step)."""
        labels = self._layer(LABELS_NAME)
        if labels is None or self.image_layer is None:
            return
        axis = self.slice_axis()
        oid = self.object_spin.value()
        index = None if axis is None else self.current_index(axis)
        self._remove_prompts(oid, index, axis)
        self._drawn.discard(oid, index)
        view = labels.data if axis is None else slice_of(labels.data, index, axis)
        self._write_slice(labels, axis, index, oid, np.zeros(view.shape, bool))

    def clear_object(self) -> None:
        """The current object's prompts and labels everywhere (one undo step)."""
        oid = self.object_spin.value()
        self._remove_prompts(oid)
        labels = self._layer(LABELS_NAME)
        if labels is not None and (labels.data == oid).any():
            with labels.block_history():
                labels.data_setitem(np.nonzero(labels.data == oid), 0)
        self._scores.pop(oid, None)
        self._checked.pop(oid, None)
        self._drawn.forget(oid)
        if oid in self.table.objects:
            self.table.objects[oid].reached = None
            self._show_objects()

    # ----- lifetime -------------------------------------------------------------------------
    def shutdown(self, wait_ms: int = 30_000) -> None:
        """Stop background work and remove the key bindings (the widget goes away); with
        auto-save on, the labels as they are now are written first."""
        self._autosave_tick()
        with contextlib.suppress(RuntimeError):  # the widget's Qt side may be gone already
            self._autosave_timer.stop()
        self.autosave.stop(wait_ms / 1000)
        self._cancel = True
        self._stopping = True
        self._unbind_keys()
        if self._busy is not None:
            self._busy.quit()
        from qtpy.QtCore import QThreadPool

        QThreadPool.globalInstance().waitForDone(wait_ms)
        for thread in (self._prefetch, self._server):
            if thread is not None:
                thread.join(wait_ms / 1000)
        self._prefetch = self._busy = self._server = None
        # The model, its traced graphs and up to 2 GB of embeddings go with the engine, and
        # a lazy layer's voxels read into memory with `_voxels`: napari and Qt may keep the
        # widget object alive after it closes (a test session's viewers kept 18 GB).
        self.engine = Engine()
        self._voxels = (None, None)

    def showEvent(self, event) -> None:  # noqa: N802 - Qt's name
        # The window lists were sized in the style the widget had when they were made; in
        # napari's (padding, a wider arrow) "(Intensity)" was cut to "(Intens".
        super().showEvent(event)
        self._fit_window_column()

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt's name
        self.shutdown()
        super().closeEvent(event)

    def toggle_polarity(self) -> None:
        self.positive_button.setChecked(not self.positive_button.isChecked())

    def wait_idle(self, timeout: float = 120.0) -> None:
        """Process events until no click is pending (for scripts and tests)."""
        end = time.monotonic() + timeout
        while self.mailbox.busy and time.monotonic() < end:
            QApplication.processEvents()
            time.sleep(0.005)
        for _ in range(5):  # let the last result's signal arrive
            QApplication.processEvents()
            time.sleep(0.005)

    # ----- prompts as files -----------------------------------------------------------------
    def _from_our_reader(self) -> bool:
        info = self.image_layer.metadata.get("sammed2d") or {}
        return "source" in info

    def prompt_record(self, layers=None) -> PromptFile:
        """Every object's prompts, in the source file's voxel order when the image came
        through our reader, with names, colours, the model, window and settings; from the
        (points, shapes) `layers` given, else from the widget's (made if missing)."""
        points, shapes = layers if layers is not None else self.ensure_prompt_layers()[:2]
        axis = self.slice_axis()
        if axis is None:
            raise SamMed2DError("saving prompts needs a 3D volume")
        # Drawn slices are labels, not prompts: the labels file keeps them.
        objects = self._object_prompts(points, shapes, axis, drawn=False)
        if not objects:
            raise SamMed2DError("no prompts to save: draw a box first")
        if self._from_our_reader():
            axis, objects = reorder_objects(axis, objects, self.image_layer.ndim)
        record = self.engine.record()
        if record is not None:
            name, sha = record
        else:
            name, sha = self.model_edit.text().strip(), None
        return PromptFile(
            axis,
            objects,
            model=name,
            sha256=sha,
            window=self.preset_combo.currentText(),
            settings=replace(self._settings, slice_step=self.slice_step()),
            # the volume of a 4D file the image layer is (our reader's `mr [1]`)
            channel=(self.image_layer.metadata.get("sammed2d") or {}).get("channel"),
        )

    def slice_step(self) -> int | None:
        """The propagation's slice step: None for auto (the spin box's 0)."""
        return self.step_spin.value() or None

    def save_prompts(self, path) -> None:
        write_prompt_file(path, self.prompt_record())
        self.status.setText(f"prompts saved to {path}")

    def load_prompts(self, path) -> None:
        """Add a PROMPTS.json's objects, boxes and points (without segmenting: press
        Shift+S or Propagate, as after drawing them). An object already here with the same
        id gives way: its prompts are replaced, not doubled. Prompts that do not fit this
        image (saved on another scan) are refused before anything changes."""
        record = read_prompt_file(path)
        axis, objects = record.axis, record.objects
        image = self.image_layer
        ours = self._from_our_reader()
        if ours:
            axis, objects = reorder_objects(axis, objects, image.ndim)
        if not 0 <= axis < image.ndim:
            raise SamMed2DError(f"prompts {path}: axis {record.axis} does not fit this image")
        if image.ndim == 3:
            shape = image.level_shapes[0] if image.multiscale else image.data.shape
            try:
                # in the file's own axes, so the message names its slices and coordinates
                check_objects_fit(
                    record.objects, tuple(shape[::-1]) if ours else tuple(shape), record.axis
                )
            except SamMed2DError as exc:
                raise SamMed2DError(f"prompts {path}: {exc} (saved on another scan?)") from None
        points, shapes, _ = self.ensure_prompt_layers()
        for obj in objects:
            self._remove_prompts(obj.id)
        if record.window in PRESETS:
            self.preset_combo.setCurrentText(record.window)
        self.step_spin.setValue(record.settings.slice_step or 0)
        self._settings = record.settings
        for obj in objects:
            self.table.remove(obj.id)
            self.table.add(obj.id, obj.name or None, obj.color)
            self.table.set_window(obj.id, obj.window)
            if obj.range is None:
                self._ranges.pop(obj.id, None)
            else:
                self._ranges[obj.id] = obj.range
        self._loading = True
        try:
            add_prompt_shapes(points, shapes, axis, objects)
        finally:
            self._loading = False
            self._on_polarity(self.positive_button.isChecked())
        self.object_spin.setValue(objects[0].id)
        self._on_object_changed(objects[0].id)
        self._show_objects()
        default = PropagationSettings()
        own = [
            f"{f.name} {getattr(record.settings, f.name)}"
            for f in fields(default)
            if f.name != "slice_step"
            and getattr(record.settings, f.name) != getattr(default, f.name)
        ]
        ranged = sum(obj.range is not None for obj in objects)
        ranged = f" ({ranged} with a slice range)" if ranged else ""
        kept = f"; its propagation settings: {', '.join(own)}" if own else ""
        self.status.setText(f"{len(objects)} object(s) loaded from {path}{ranged}{kept}")

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

    def load_labels(self, path) -> None:
        """Labels from a file (any format `sammed2d export` reads), put on this image's grid,
        into SAM labels as drawn objects: each label an object with its name and colour, its
        labelled slices taken as given by Propagate and Propagate all, which fill between
        them and walk past them (`sammed2d propagate --seeds`). An object already here with
        the same id gives way (its prompts and labels); one undo step. Labels that do not
        fit the image are refused before anything changes."""
        image = self.image_layer
        if image is None:
            raise SamMed2DError("no image layer: open an image or volume first")
        axis = self.slice_axis()
        if axis is None:
            raise SamMed2DError("labels as drawn slices need a 3D volume")
        shape = tuple(image.level_shapes[0] if image.multiscale else image.data.shape)[:3]
        info = image.metadata.get("sammed2d") or {}
        order = np.argsort(LAYER_ORDER)  # layer axes -> the file's voxel axes
        if info.get("affine") is not None:  # our reader: onto its grid, by the geometry
            affine = np.asarray(info["affine"])[:, [*order, 3]]
            grid = np.broadcast_to(np.uint8(0), tuple(shape[a] for a in order))
            volume, segments = read_labels(path, reference=Volume(grid, affine, None))
        else:  # no geometry: the same voxels, in the order our reader shows them
            volume, segments = read_labels(path)
        data = np.transpose(volume.array, LAYER_ORDER) if volume.array.ndim == 3 else None
        if data is None or data.shape != shape:
            got = "x".join(str(n) for n in volume.array.shape)
            raise SamMed2DError(
                f"labels {path}: {got} voxels do not fit this image (open the image with this "
                "plugin's reader to have labels put on its grid)"
            )
        new = np.nonzero(data)
        values = data[new]
        ids = [int(i) for i in label_values(values)]
        if not ids:
            raise SamMed2DError(f"labels {path}: no labelled voxels")
        if ids[-1] > 65535:
            raise SamMed2DError(f"labels {path}: label {ids[-1]} is above 65535")
        _, _, labels = self.ensure_prompt_layers()
        named = {s.id: s for s in segments}
        with labels.block_history():  # one undo step
            if labels.data.any():  # objects with the same ids give way
                old = np.nonzero(np.isin(labels.data, ids))
                if old[0].size:
                    labels.data_setitem(old, 0)
            labels.data_setitem(new, values.astype(labels.data.dtype, copy=False))
        slices = set()
        for oid in ids:
            self._remove_prompts(oid)
            self._ranges.pop(oid, None)
            self._scores.pop(oid, None)
            self._checked.pop(oid, None)
            segment = named.get(oid) or default_segment(oid)
            self.table.remove(oid)
            self.table.add(oid, segment.name, segment.color)
            drawn = np.unique(new[axis][values == oid])  # from the loaded voxels: no pass
            self._drawn.start(oid, drawn)
            slices |= set(drawn.tolist())
            self._note_reached(labels, axis, oid, drawn)
        self.object_spin.setValue(ids[0])
        self._on_object_changed(ids[0])
        self._show_objects()
        self.status.setText(
            f"{len(ids)} object(s) loaded from {Path(path).name}, drawn on {len(slices)} "
            "slice(s): Propagate all (Shift+G) fills between them and past them"
        )

    def _load_labels_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Load labels", "",
            "Labels (*.nii *.nii.gz *.nrrd *.nhdr *.mha *.mhd *.dcm);;All files (*)",
        )  # fmt: skip
        if path:
            QApplication.setOverrideCursor(Qt.CursorShape.WaitCursor)  # ~2 s at 300 slices
            try:
                self.load_labels(path)
            except SamMed2DError as exc:
                self._report_error("loading labels", exc)
            finally:
                QApplication.restoreOverrideCursor()

    # ----- auto-save ------------------------------------------------------------------------
    def set_autosave(self, path) -> None:
        """Write the labels to `path` whenever they change (checked every few seconds, off
        the GUI thread); None turns auto-save off, after writing what is pending."""
        if path is None:
            self._autosave_tick()
            self._autosave_timer.stop()
            self._autosave_path = None
            self.autosave_check.setChecked(False)
            self.autosave_label.setText("")
            return
        path = checked_path(path)
        if path.name.lower().endswith(".dcm"):
            image = self.image_layer
            info = {} if image is None else (image.metadata.get("sammed2d") or {})
            if dicom_source(info.get("source")) is None:
                raise SamMed2DError(
                    f"auto-save to {path.name}: a DICOM SEG needs an image opened from "
                    "DICOM (a series folder or a multi-frame file); choose .seg.nrrd or .nii.gz"
                )
        self._autosave_path = str(path)
        self._autosave_error = None
        self.autosave_edit.setText(str(path))
        self.autosave_check.setChecked(True)
        self.autosave_label.setText(f"auto-saving to {path.name}")
        self._autosave_timer.start()
        self._autosave_tick()

    def _autosave_tick(self, labels=None) -> None:
        if labels is None:
            labels = self._layer(LABELS_NAME)
        if self._autosave_path is None or labels is None:
            return
        # Only references cross to the saving thread: the widget replaces the metadata,
        # features and colormap wholesale when it renames or recolours, never in place.
        meta = {
            "metadata": labels.metadata,
            "features": labels.features.copy(),
            "colormap": labels.colormap,
            "scale": tuple(labels.scale),
            "units": tuple(map(str, getattr(labels, "units", None) or ())),
        }
        self.autosave.offer(self._autosave_path, labels.data, meta)
        self._autosave_prompts()

    def _autosave_prompts(self) -> None:
        """The prompts beside the auto-saved labels (NAME.prompts.json), where they changed:
        a crash then loses neither the masks nor what made them (Load prompts… replays
        them). A few kB of JSON, written here; the labels go to the saving thread."""
        points, shapes = self._layer(POINTS_NAME), self._layer(SHAPES_NAME)
        if any(x is None for x in (points, shapes, self.image_layer, self._autosave_path)):
            return
        try:
            text = prompt_file_text(self.prompt_record((points, shapes)))
        except SamMed2DError:
            return  # no prompts yet (or a 2D image): nothing to keep
        path = prompts_beside(self._autosave_path)
        if self._prompts_saved == (path, text):
            return
        try:
            atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
        except (OSError, SamMed2DError) as exc:
            self._show_autosaved(("error", f"auto-save to {path.name} failed: {exc}"))
            return
        self._prompts_saved = (path, text)

    def _on_removed(self, event) -> None:
        # Closing napari's window removes every layer and never closes the dock widgets:
        # the labels layer leaving is the last chance to save it (the saving thread writes
        # it; at exit, Python waits for that write). Auto-save then stops, so the labels of
        # another image (a new labels layer) never overwrite that file.
        if getattr(event.value, "name", None) != LABELS_NAME or self._autosave_path is None:
            return
        self._autosave_tick(event.value)
        name = Path(self._autosave_path).name
        self._autosave_path = None
        with contextlib.suppress(RuntimeError):  # napari's window may be closing
            self._autosave_timer.stop()
            self.autosave_check.setChecked(False)
            self.autosave_label.setText(
                f"auto-save stopped: the labels layer was removed (its last state is in {name})"
            )

    def _on_autosaved(self, message) -> None:
        try:
            self._show_autosaved(message)
        except RuntimeError:  # the last save, after napari's window (and this widget) closed
            pass

    def _show_autosaved(self, message) -> None:
        kind, text = message
        if kind == "saved":
            self._autosave_error = None
            self.autosave_label.setText(
                f"auto-saved {time.strftime('%H:%M:%S')} to {Path(text).name}"
            )
        elif kind == "empty":
            self.autosave_label.setText(
                f"auto-saving to {Path(text).name}: nothing to save yet (a DICOM SEG needs a "
                "segment)"
            )
        elif text != self._autosave_error:  # the same failure every 5 s is shown once
            self._autosave_error = text
            self.autosave_label.setText(text)
            show_error(text)

    def _on_autosave_clicked(self, checked: bool) -> None:
        if not checked:
            self.set_autosave(None)
            return
        path = self.autosave_edit.text().strip()
        if not path:
            self.autosave_check.setChecked(False)
            self._autosave_dialog()
            return
        self._start_autosave(path)

    def _on_autosave_edited(self) -> None:
        path = self.autosave_edit.text().strip()
        if self.autosave_check.isChecked() and path and path != self._autosave_path:
            self._start_autosave(path)

    def _start_autosave(self, path) -> None:
        try:
            self.set_autosave(path)
        except SamMed2DError as exc:
            self.autosave_check.setChecked(False)
            self._autosave_path = None
            self._autosave_timer.stop()
            show_error(str(exc))

    def _autosave_dialog(self) -> None:
        image = self.image_layer
        suggested = f"{image.name if image is not None else 'labels'}_labels.seg.nrrd"
        path, _ = QFileDialog.getSaveFileName(
            self,
            "Auto-save labels to",
            suggested,
            "Labels (*.seg.nrrd *.nii.gz *.nii *.nrrd *.mha *.dcm)",
        )
        if path:
            self._start_autosave(path)

    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Checkpoint", "", "PyTorch (*.pth *.pt)")
        if path:
            self.model_edit.setText(path)
            self._drop_volume_state()

    def _bind_keys(self) -> None:
        for key, method in KEYS.items():
            action = getattr(self, method)
            self.viewer.bind_key(key, lambda viewer, action=action: action(), overwrite=True)
        self._keys_bound = True

    def _unbind_keys(self) -> None:
        if self._keys_bound:
            for key in KEYS:
                self.viewer.bind_key(key, None)
            self._keys_bound = False


class _Bridge(QObject):
    """Carries messages from plain threads to the Qt thread (a queued connection)."""

    message = Signal(object)


def _slice_index(axis, index):
    if axis is None:
        return (slice(None),)
    sl = [slice(None)] * 3
    sl[axis] = index
    return tuple(sl)


def _full_index(where2d, axis, index):
    idx = list(np.nonzero(where2d))
    if axis is not None:
        idx.insert(axis, np.full(len(idx[0]), index))
    return tuple(idx)


def camera_of(viewer):
    """The viewer's camera: `viewer.scene.camera` from napari 0.9, which warns on
    `viewer.camera` each time a volume is shown; `viewer.camera` before it."""
    scene = getattr(viewer, "scene", None)
    return getattr(scene, "camera", None) or viewer.camera


def _show_window(combo, window: str | None) -> None:
    """Select `window` in an object's window list, adding it first where it is a window an
    object's box chose (W<width>/L<level>) rather than a preset."""
    text = window or "(Intensity)"
    if combo.findText(text) < 0:
        combo.addItem(text)
    combo.setCurrentText(text)


def _scale_mm(image) -> np.ndarray | None:
    """A layer's voxel size in mm from its scale (in its units where they are a length), or
    None where the scale is all ones: it says nothing."""
    scale = np.asarray(image.scale[-image.ndim :], np.float64)
    scale = scale * mm_per_unit(getattr(image, "units", None), image.ndim)
    return None if np.allclose(scale, 1.0) else scale
