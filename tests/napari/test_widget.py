"""The napari plugin with a real viewer (run under xvfb-run) and real models."""

from __future__ import annotations

import json

import numpy as np
import pytest

napari = pytest.importorskip("napari")

from qtpy.QtCore import Qt  # noqa: E402

from napari_sammed2d._io import get_reader, write_labels_layer  # noqa: E402
from napari_sammed2d._sample_data import phantom  # noqa: E402
from napari_sammed2d._widget import SegmentWidget  # noqa: E402
from sammed2d.errors import SamMed2DError  # noqa: E402
from sammed2d.io import Volume, read_volume, write_volume  # noqa: E402


def block_volume():
    """(z, y, x) = (8, 48, 40) HU volume: a bright block on slices 2..5."""
    rng = np.random.default_rng(0)
    vol = rng.normal(-80, 5, (8, 48, 40)).astype(np.float32)
    vol[2:6, 12:30, 10:26] = 150
    return vol


def setup_volume(viewer, w, scale=(1, 1, 1), model="litemedsam", data=None, preset="abdomen"):
    """`data` (default: `block_volume()`) as the image "ct", with the prompt layers."""
    viewer.add_image(block_volume() if data is None else data, name="ct", scale=scale)
    w.model_edit.setText(model)
    w.preset_combo.setCurrentText(preset)
    points, shapes, labels = w.ensure_prompt_layers()
    return points, shapes, labels


def block_dice(found):
    """Dice of a slice's mask against the block of `block_volume` on slices 2..5."""
    truth = np.zeros_like(found)
    truth[12:30, 10:26] = True
    return 2 * (found & truth).sum() / (found.sum() + truth.sum())


def draw_box(viewer, shapes, z, r0, c0, r1, c1, scale=(1, 1, 1)):
    viewer.dims.set_point(0, z * scale[0])
    rect = np.array([[z, r0, c0], [z, r0, c1], [z, r1, c1], [z, r1, c0]], float)
    shapes.add_rectangles(rect)  # fires ADDED: the widget queues this slice


def test_rectangle_segments_the_right_slice(widget):
    viewer, w = widget
    _, shapes, labels = setup_volume(viewer, w)
    w.rename_object(1, "block")
    draw_box(viewer, shapes, 3, 11, 9, 30, 26)
    w.wait_idle()
    assert w.status.text() == "block: slice 3"  # the name it was given, not "object 1"
    assert not labels.data[[0, 1, 2, 4, 5, 6, 7]].any()
    assert block_dice(labels.data[3] == 1) > 0.85


def test_lazy_layer_is_read_once_and_segments(widget):
    """A dask-backed layer (as zarr and many readers give) is read into memory on the
    first click and kept: later clicks reuse the same array instead of loading it again,
    and the mask lands (it was dropped as stale when each click read a new array)."""
    da = pytest.importorskip("dask.array")
    viewer, w = widget
    viewer.add_image(da.from_array(block_volume(), chunks=(2, 48, 40)), name="ct")
    w.preset_combo.setCurrentText("abdomen")
    _, shapes, labels = w.ensure_prompt_layers()
    first = w.volume_context()[0]
    assert isinstance(first, np.ndarray) and w.volume_context()[0] is first
    assert np.array_equal(first, block_volume())
    draw_box(viewer, shapes, 3, 11, 9, 30, 26)
    w.wait_idle()
    assert not labels.data[[0, 1, 2, 4, 5, 6, 7]].any()
    assert block_dice(labels.data[3] == 1) > 0.85


def test_multiscale_layer_segments_its_full_resolution(widget):
    """A multiscale (pyramid) layer is segmented on its full-resolution level, and the
    labels have that level's shape."""
    viewer, w = widget
    full = block_volume()
    viewer.add_image([full, full[:, ::2, ::2]], name="ct", multiscale=True)
    w.preset_combo.setCurrentText("abdomen")
    _, shapes, labels = w.ensure_prompt_layers()
    assert labels.data.shape == full.shape
    assert w.volume_context()[0] is full
    draw_box(viewer, shapes, 3, 11, 9, 30, 26)
    w.wait_idle()
    assert block_dice(labels.data[3] == 1) > 0.85


def test_anisotropic_scale_puts_the_mask_under_the_box(widget):
    viewer, w = widget
    scale = (3.0, 0.7, 0.7)
    viewer.add_image(block_volume(), name="ct", scale=scale)
    w.preset_combo.setCurrentText("abdomen")
    _, shapes, labels = w.ensure_prompt_layers()
    viewer.layers.remove(shapes)
    # a Shapes layer in world units (scale 1) drawn over the scaled image
    shapes = viewer.add_shapes(ndim=3, name="SAM boxes", features={"object": np.zeros(0, int)})
    shapes.feature_defaults["object"] = 1
    shapes.events.data.connect(w._on_prompt_event)
    viewer.dims.set_point(0, 3 * 3.0)
    world = np.array(
        [
            [9.0, 11 * 0.7, 9 * 0.7],
            [9.0, 11 * 0.7, 26 * 0.7],
            [9.0, 30 * 0.7, 26 * 0.7],
            [9.0, 30 * 0.7, 9 * 0.7],
        ]
    )
    shapes.add_rectangles(world)
    w.wait_idle()
    found = labels.data[3] == 1
    # Placement, not quality: a misplaced box covers almost none of the block. (The official
    # LiteMedSAM resize enlarges this 48 x 40 slice by pixel replication, which costs edges.)
    assert found[12:30, 10:26].mean() > 0.7 and found.sum() < 1.3 * 18 * 16


def test_a_layer_with_only_a_scale_gives_its_spacing(widget):
    """An image from another reader has a scale but no affine: the scale is the spacing,
    so a coronal slice of 3 mm slices and 0.75 mm pixels reaches the model stretched 4x,
    with the layer's axes kept as they are; the mask lands under the box."""
    from sammed2d.orientation import slice_view

    viewer, w = widget
    _, shapes, labels = setup_volume(viewer, w, scale=(3.0, 0.75, 0.75))
    data, affine, _, orientation = w.volume_context()
    assert orientation == "array" and np.allclose(np.diag(affine), [3.0, 0.75, 0.75, 1.0])
    assert slice_view(affine, 1, orientation).stretch == (4, 1)
    viewer.dims.order = (1, 0, 2)  # show (z, x) planes: slices along y
    viewer.dims.set_point(1, 20 * 0.75)
    assert w.slice_axis() == 1 and w.current_index(1) == 20
    shapes.add_rectangles(np.array([[2, 20, 10], [2, 20, 25], [5, 20, 25], [5, 20, 10]], float))
    w.wait_idle()
    found = labels.data[:, 20, :] == 1
    truth = np.zeros_like(found)
    truth[2:6, 10:26] = True
    assert 2 * (found & truth).sum() / (found.sum() + truth.sum()) > 0.8
    assert not np.delete(labels.data, 20, axis=1).any()  # on that slice only


def test_a_scale_in_micrometres_is_read_in_mm_and_the_prompt_layers_share_its_units(widget):
    """A layer whose units say µm (as microscopy and OME-Zarr readers give): its spacing
    reaches the engine in mm, and the layers the plugin adds are drawn in the same units,
    so they stay on the image where napari renders by units."""
    viewer, w = widget
    viewer.add_image(block_volume(), name="ct", scale=(3000.0, 750.0, 750.0), units="um")
    w.preset_combo.setCurrentText("abdomen")
    points, shapes, labels = w.ensure_prompt_layers()
    _, affine, _, _ = w.volume_context()
    assert np.allclose(np.diag(affine), [3.0, 0.75, 0.75, 1.0])
    for layer in (points, shapes, labels):
        assert [str(u) for u in layer.units] == ["micrometer"] * 3
        assert np.allclose(layer.scale, (3000.0, 750.0, 750.0))


def test_click_with_a_point_model(widget, tiny_checkpoint):
    viewer, w = widget
    points, _, labels = setup_volume(viewer, w, model=str(tiny_checkpoint))
    viewer.dims.set_point(0, 4)
    points.add(np.array([[4, 20, 18]], float))
    w.wait_idle()
    assert labels.data[4].any()  # a mask on the clicked slice
    assert not np.delete(labels.data, 4, axis=0).any()  # and nowhere else


def test_propagate_fills_neighbours_and_one_undo_removes_it(widget, qtbot):
    viewer, w = widget
    _, shapes, labels = setup_volume(viewer, w)
    draw_box(viewer, shapes, 3, 11, 9, 30, 26)
    w.wait_idle()
    before = labels.data.copy()
    w.propagate_object()
    with qtbot.waitSignal(w._busy.finished, timeout=120_000):
        pass
    filled = [z for z in range(8) if (labels.data[z] == 1).any()]
    assert filled == [2, 3, 4, 5]
    labels.undo()
    assert np.array_equal(labels.data, before)


def test_an_object_painted_by_hand_propagates_from_its_painted_slice(widget, qtbot, monkeypatch):
    viewer, w = widget
    _, _, labels = setup_volume(viewer, w, preset="auto")
    errors = []
    monkeypatch.setattr("napari_sammed2d._widget.show_error", errors.append)
    w.propagate_object()  # nothing drawn, nothing painted
    assert errors == ["object 1 has no prompts or labels: draw a box or paint a slice first"]
    painted = np.zeros((48, 40), bool)
    painted[13:29, 11:25] = True  # a brush's rough outline of the block, no prompt at all
    labels.data_setitem(
        np.nonzero(np.broadcast_to(painted, (8, 48, 40)) & (np.arange(8) == 3)[:, None, None]), 1
    )
    before = labels.data.copy()
    w.propagate_object()
    with qtbot.waitSignal(w._busy.finished, timeout=120_000):
        pass
    filled = [z for z in range(8) if (labels.data[z] == 1).any()]
    assert filled == [2, 3, 4, 5]
    assert np.array_equal(labels.data[3] == 1, painted)  # the painted slice is kept as it is
    # the neighbours follow the painted outline's box, a little inside the block's edges
    assert all(block_dice(labels.data[z] == 1) > 0.8 for z in (2, 4, 5))
    # auto: the window the run gave it (this volume has no air: not a CT) is its own now
    assert w.table.objects[1].window == "percentile"
    labels.undo()
    assert np.array_equal(labels.data, before)


def test_slices_painted_later_anchor_the_next_runs_and_corrections(widget, qtbot, tmp_path):
    """An object seeded by painted labels keeps its painted slices through later runs: a
    slice painted after a run joins them (it was overwritten by the next run), and a box
    between two of them re-segments only the slices between."""
    viewer, w = widget
    _, shapes, labels = setup_volume(viewer, w)

    def paint(z, mask):
        where = np.nonzero(mask)
        labels.data_setitem((np.full(len(where[0]), z), *where), 1)

    def propagate():
        w.propagate_object()
        with qtbot.waitSignal(w._busy.finished, timeout=120_000):
            pass

    first = np.zeros((48, 40), bool)
    first[13:29, 11:25] = True
    paint(3, first)
    propagate()
    assert [z for z in range(8) if (labels.data[z] == 1).any()] == [2, 3, 4, 5]
    fix = np.zeros((48, 40), bool)
    fix[12:30, 10:26] = True  # the brush corrects slice 5 to the block's true outline
    labels.data_setitem(np.nonzero((labels.data == 1) & (np.arange(8) == 5)[:, None, None]), 0)
    paint(5, fix)
    propagate()
    assert np.array_equal(labels.data[3] == 1, first) and np.array_equal(labels.data[5] == 1, fix)
    kept = labels.data.copy()
    draw_box(viewer, shapes, 4, 11, 9, 30, 26)  # between the two painted slices
    w.wait_idle()
    qtbot.waitUntil(lambda: w._busy is None, timeout=120_000)  # a correction, if one ran
    changed = [z for z in range(8) if not np.array_equal(labels.data[z], kept[z])]
    assert set(changed) <= {4}
    assert np.array_equal(labels.data[3] == 1, first) and np.array_equal(labels.data[5] == 1, fix)
    w.propagate_all()  # its drawn slices and its box, in one run
    with qtbot.waitSignal(w._busy.finished, timeout=120_000):
        pass
    assert np.array_equal(labels.data[3] == 1, first) and np.array_equal(labels.data[5] == 1, fix)
    assert [z for z in range(8) if (labels.data[z] == 1).any()] == [2, 3, 4, 5]
    # Save prompts writes the box alone: drawn slices are labels (they were written as
    # slices holding nothing, which a replay refused)
    w.save_prompts(tmp_path / "p.json")
    saved = json.loads((tmp_path / "p.json").read_text(encoding="utf-8"))
    assert [(o["id"], list(o["slices"])) for o in saved["objects"]] == [(1, ["4"])]


def test_check_next_goes_to_the_slices_a_propagation_may_have_got_wrong(widget, qtbot):
    viewer, w = widget
    _, shapes, labels = setup_volume(viewer, w)
    draw_box(viewer, shapes, 3, 11, 9, 30, 26)
    w.wait_idle()
    w.check_next()  # one slice of labels: nothing to compare yet
    assert "nothing to check" in w.status.text()
    w.propagate_object()
    with qtbot.waitSignal(w._busy.finished, timeout=120_000):
        pass
    assert w._scores[1] and set(w._scores[1]) <= {2, 3, 4, 5}
    assert "Shift+K: the slices to check" in w.status.text()
    # a slice emptied by hand inside the object's stretch is the first to look at
    where = np.nonzero(labels.data == 1)
    on_4 = where[0] == 4
    labels.data_setitem(tuple(axis[on_4] for axis in where), 0)
    w.check_next()
    assert w.current_index(0) == 4
    assert "slice 4, 1st of 3 to check: no mask" in w.status.text()
    shown = {4}
    for _ in range(2):
        w.check_next()
        shown.add(w.current_index(0))
    assert shown == {2, 4, 5}  # every slice it reached but the one the box was drawn on
    w.check_next()  # all shown: from the first again
    assert w.current_index(0) == 4 and "1st of 3" in w.status.text()


def test_cancel_leaves_labels_consistent(widget, qtbot):
    viewer, w = widget
    _, shapes, labels = setup_volume(viewer, w)
    draw_box(viewer, shapes, 3, 11, 9, 30, 26)
    w.wait_idle()
    w.propagate_object()
    w.cancel()
    # Not waitSignal(finished): a run cancelled at once can finish in the worker thread
    # before the wait connects to the signal, and the wait would then never end.
    qtbot.waitUntil(lambda: w._busy is None, timeout=120_000)
    assert set(np.unique(labels.data)) <= {0, 1}
    assert (labels.data[3] == 1).any()  # the annotated slice survives
    # cancelled before its first step: it stopped, said so, and did not fill the block
    assert "(cancelled)" in w.status.text()
    filled = [z for z in range(8) if (labels.data[z] == 1).any()]
    assert filled != [2, 3, 4, 5], filled


def test_4d_layer_gets_a_clear_message(widget, monkeypatch):
    viewer, w = widget
    viewer.add_image(np.zeros((2, 3, 16, 16), np.float32), name="t")
    shown = []
    monkeypatch.setattr("napari_sammed2d._widget.show_error", shown.append)
    w.segment_current_slice()
    assert shown and "4 spatial dimensions" in shown[0]


def test_reader_and_writer_round_trip_geometry(tmp_path):
    affine = np.array([[0, 0, 2.5, -20], [0, -0.8, 0, 30], [0.7, 0, 0, 5], [0, 0, 0, 1.0]])
    array = np.random.default_rng(0).integers(0, 100, (10, 12, 6)).astype(np.int16)
    src = write_volume(tmp_path / "ct.nrrd", array, Volume(array, affine))
    reader = get_reader(str(src))
    ((data, meta, kind),) = reader(str(src))
    assert kind == "image" and data.shape == (6, 12, 10)
    assert np.allclose(meta["scale"], (2.5, 0.8, 0.7))  # (k, j, i) spacing
    labels = (data > 50).astype(np.uint8)
    out = tmp_path / "labels.nii.gz"
    write_labels_layer(str(out), labels, meta)
    back = read_volume(out)
    assert np.allclose(back.affine, read_volume(src).affine, atol=1e-4)
    assert np.array_equal(back.array, np.transpose(labels, (2, 1, 0)))


def test_reader_opens_single_dicom_images(tmp_path, widget):
    """napari reads no DICOM itself: an X-ray or one slice opens as a 2D layer, a colour
    ultrasound image as an RGB layer, and the widget segments on it."""
    import SimpleITK as sitk

    from tests.core.test_io import colour_phantom, write_colour_dicom

    grey = np.arange(48, dtype=np.int16).reshape(6, 8)
    sitk.WriteImage(sitk.GetImageFromArray(grey), str(tmp_path / "xray.dcm"))
    ((data, meta, kind),) = get_reader(str(tmp_path / "xray.dcm"))(str(tmp_path / "xray.dcm"))
    assert kind == "image" and np.array_equal(data, grey)  # rows and columns as stored

    rgb = colour_phantom()
    path = str(write_colour_dicom(tmp_path / "us.dcm", rgb))
    ((data, meta, kind),) = get_reader(path)(path)
    assert kind == "image" and meta["rgb"] and np.array_equal(data, rgb)

    viewer, w = widget
    viewer.open(path, plugin="napari-sammed2d")
    points, shapes, labels = w.ensure_prompt_layers()
    assert labels.data.shape == (24, 32)
    shapes.add_rectangles(np.array([[5, 9], [5, 25], [15, 25], [15, 9]], float))
    w.wait_idle()
    truth = np.zeros((24, 32), bool)
    truth[6:15, 10:25] = True
    found = labels.data == 1
    assert 2 * (found & truth).sum() / (found.sum() + truth.sum()) > 0.85


def test_phantom_sample_data():
    (ct, ct_meta, _), (truth, _, kind) = phantom()
    assert ct.shape == truth.shape and kind == "labels"
    assert "sammed2d" in ct_meta["metadata"]


def test_manifest_is_valid():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_distribution("napari-sammed2d")
    assert manifest.name == "napari-sammed2d"
    assert {"Segmentation", "Annotation"} <= set(manifest.categories)
    assert manifest.contributions.readers and manifest.contributions.writers


def test_2d_rgb_image_with_a_rectangle(widget):
    viewer, w = widget
    rgb = np.full((40, 50, 3), 30, np.uint8)
    rgb[10:28, 15:38] = (200, 190, 180)
    viewer.add_image(rgb, name="photo", rgb=True)
    points, shapes, labels = w.ensure_prompt_layers()
    assert labels.data.shape == (40, 50) and points.ndim == 2
    shapes.add_rectangles(np.array([[9, 14], [9, 38], [28, 38], [28, 14]], float))
    w.wait_idle()
    found = labels.data == 1
    truth = np.zeros_like(found)
    truth[10:28, 15:38] = True
    assert 2 * (found & truth).sum() / (found.sum() + truth.sum()) > 0.85


def serve_directory(directory):
    import functools
    import http.server
    import threading

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(directory))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_online_sample_is_pinned_and_checked(tmp_path, monkeypatch):
    import hashlib

    from napari_sammed2d import _sample_data

    assert "/v2.8.0/" in _sample_data.ABDOMEN_CT_URL
    assert len(_sample_data.ABDOMEN_CT_SHA256.removeprefix("sha256:")) == 64

    # The same download path against a local server: a matching file loads with its geometry,
    # a file that differs from the pinned hash is refused.
    served = tmp_path / "served"
    served.mkdir()
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    array = np.arange(6 * 5 * 4, dtype=np.int16).reshape(6, 5, 4)
    write_volume(served / "ct.nii.gz", array, Volume(array, affine))
    digest = hashlib.sha256((served / "ct.nii.gz").read_bytes()).hexdigest()
    server = serve_directory(served)
    try:
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
        monkeypatch.setattr(
            _sample_data, "ABDOMEN_CT_URL", f"http://127.0.0.1:{server.server_port}/ct.nii.gz"
        )
        monkeypatch.setattr(_sample_data, "ABDOMEN_CT_SHA256", f"sha256:{digest}")
        [(data, kwargs, kind)] = _sample_data.abdomen_ct()
        assert kind == "image" and data.shape == (4, 5, 6)
        assert kwargs["scale"] == pytest.approx((2.5, 0.8, 0.8))

        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache2"))
        monkeypatch.setattr(_sample_data, "ABDOMEN_CT_SHA256", "sha256:" + "0" * 64)
        with pytest.raises(SamMed2DError, match="could not be downloaded.*SHA256"):
            _sample_data.abdomen_ct()
    finally:
        server.shutdown()
    # No network: one line that says so, not a raw requests traceback.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache3"))
    monkeypatch.setattr(_sample_data, "ABDOMEN_CT_URL", "http://127.0.0.1:9/ct.nii.gz")
    with pytest.raises(SamMed2DError, match="is the network reachable"):
        _sample_data.abdomen_ct()


def test_keys_fire_with_the_prompt_layers_active_and_go_with_the_widget(make_napari_viewer, qtbot):
    from qtpy.QtCore import Qt

    viewer = make_napari_viewer(show=True)
    w = SegmentWidget(viewer)
    viewer.window.add_dock_widget(w)
    points, shapes, _ = setup_volume(viewer, w)
    canvas = viewer.window._qt_viewer.canvas.native
    for layer in (points, shapes):
        viewer.layers.selection.active = layer
        mode = layer.mode
        before = w.positive_button.isChecked()
        qtbot.keyClick(canvas, Qt.Key_T, Qt.ShiftModifier)
        assert w.positive_button.isChecked() != before  # Shift+T reached the widget
        start = w.object_spin.value()
        qtbot.keyClick(canvas, Qt.Key_N)
        assert w.object_spin.value() == start + 1
        assert layer.mode == mode  # and the layer's own mode keys were not taken
    viewer.window.remove_dock_widget(w)
    w.close()
    assert not any(
        str(k) in ("Shift+S", "Shift+R", "Shift+T", "Shift+C", "N") for k in viewer.keymap
    )


def test_prompt_layers_wait_with_the_box_tool_and_a_point_alone_is_refused(
    widget, monkeypatch, qtbot
):
    from napari_sammed2d import _widget

    viewer, w = widget
    viewer.add_image(block_volume(), name="ct")
    qtbot.waitUntil(lambda: "SAM boxes" in viewer.layers, timeout=5000)
    shapes, points = viewer.layers["SAM boxes"], viewer.layers["SAM points"]
    assert shapes.mode == "add_rectangle" and viewer.layers.selection.active is shapes
    said = []
    monkeypatch.setattr(_widget, "show_info", said.append)
    w.preset_combo.setCurrentText("abdomen")
    viewer.dims.set_point(0, 3)
    points.add(np.array([[3, 20, 18]], float))  # LiteMedSAM, the default: boxes only
    w.wait_idle()
    assert said and "trained with boxes only" in said[0]
    assert not viewer.layers["SAM labels"].data.any()


def test_model_loads_in_the_background_once_there_is_an_image(widget, qtbot):
    """Importing torch and loading weights hold Python's lock for about a second: that
    happens when the image arrives, in the click thread, not in the first click."""
    viewer, w = widget
    assert not w.engine.ready
    viewer.add_image(block_volume(), name="ct")
    qtbot.waitUntil(lambda: w.engine.ready, timeout=60_000)
    qtbot.waitUntil(lambda: "loaded" in w.status.text(), timeout=5000)
    assert w.engine.model.spec.name == "litemedsam"
    assert not viewer.layers["SAM labels"].data.any()  # loaded, nothing segmented


def test_a_model_that_fails_to_load_ahead_is_named_without_a_popup(widget, qtbot, monkeypatch):
    from napari_sammed2d import _widget

    viewer, w = widget
    shown = []
    monkeypatch.setattr(_widget, "show_error", shown.append)
    w.model_edit.setText("no-such-model.pth")
    viewer.add_image(block_volume(), name="ct")
    qtbot.waitUntil(lambda: "model not loaded" in w.status.text(), timeout=30_000)
    assert not w.engine.ready and not shown


def test_propagation_can_walk_every_nth_slice(widget, qtbot, tmp_path):
    """With "every 3 slices" the run walks fewer slices and interpolates the others: every
    slice of a growing disc is still filled, the interpolated ones differ from the walked
    run's, the choice is one undo step like any run, and saved prompts keep it."""
    viewer, w = widget
    radii = [0, 14, 16, 18, 20, 22, 24, 26, 0]
    yy, xx = np.mgrid[:128, :128]
    vol = np.random.default_rng(0).normal(-80, 5, (9, 128, 128)).astype(np.float32)
    truth = np.zeros(vol.shape, bool)
    for z, r in enumerate(radii):
        truth[z] = (yy - 64) ** 2 + (xx - 60) ** 2 <= r * r
    vol[truth] = 150
    _, shapes, labels = setup_volume(viewer, w, data=vol)
    draw_box(viewer, shapes, 4, 43, 39, 85, 81)
    w.wait_idle()
    assert w.slice_step() is None and w.step_spin.text() == "every 3 mm (auto)"
    runs = {}
    for step in (1, 3):
        w.step_spin.setValue(step)
        before = labels.data.copy()
        w.propagate_object()
        with qtbot.waitSignal(w._busy.finished, timeout=120_000):
            pass
        runs[step] = labels.data.copy()
        assert ("every 3 slices" in w.status.text()) == (step == 3), w.status.text()
        labels.undo()
        assert np.array_equal(labels.data, before)
    for step, found in runs.items():
        assert [z for z in range(9) if (found[z] == 1).any()] == list(range(1, 8)), step
        for z in range(1, 8):
            f, t = found[z] == 1, truth[z]
            assert 2 * (f & t).sum() / (f.sum() + t.sum()) > 0.8, (step, z)
    assert not np.array_equal(runs[1], runs[3])
    w.save_prompts(tmp_path / "prompts.json")
    w.step_spin.setValue(1)
    w.load_prompts(tmp_path / "prompts.json")
    assert w.step_spin.value() == 3
    w.step_spin.setValue(0)
    w.save_prompts(tmp_path / "auto.json")
    w.step_spin.setValue(2)
    w.load_prompts(tmp_path / "auto.json")
    assert w.slice_step() is None


def test_propagate_all_composes_every_object_as_the_core_does_in_one_undo_step(widget, qtbot):
    """Two objects with a box each go through the volume in one run, and the labels are the
    core's for the same prompts (each slice embedded once, overlaps by the composition
    rule); a third object painted by hand, without prompts, keeps its pixels; the run shows
    each object's slices, and one Ctrl+Z takes it all back."""
    from sammed2d.intensity import intensity_range
    from sammed2d.models import load_model
    from sammed2d.objects import ObjectPrompts, PropagationSettings, SlicePrompt
    from sammed2d.propagate import propagate

    viewer, w = widget
    vol = np.random.default_rng(1).normal(-80, 5, (8, 64, 64)).astype(np.float32)
    vol[1:6, 8:28, 8:28] = 150
    vol[3:8, 34:58, 30:58] = 60
    _, shapes, labels = setup_volume(viewer, w, data=vol)
    draw_box(viewer, shapes, 3, 7, 7, 28, 28)
    w.wait_idle()
    w.new_object()
    draw_box(viewer, shapes, 5, 33, 29, 58, 58)
    w.wait_idle()
    w.new_object()  # object 3: painted, no prompts
    labels.data_setitem(np.nonzero(np.pad(np.ones((1, 3, 3), bool), ((0, 7), (0, 61), (0, 61)))), 3)
    before = labels.data.copy()
    w.propagate_all()
    with qtbot.waitSignal(w._busy.finished, timeout=120_000):
        pass
    found = labels.data
    assert [z for z in range(8) if (found[z] == 1).any()] == [1, 2, 3, 4, 5]
    assert [z for z in range(8) if (found[z] == 2).any()] == [3, 4, 5, 6, 7]
    assert (found[0, :3, :3] == 3).all()
    assert "object 1 1–5" in w.status.text() and "object 2 3–7" in w.status.text()

    boxes = {1: (3, [7, 7, 28, 28]), 2: (5, [29, 33, 58, 58])}  # (x0, y0, x1, y1)
    objects = [
        ObjectPrompts(oid, {z: SlicePrompt(box=np.array(box, np.float32))})
        for oid, (z, box) in boxes.items()
    ]
    core = propagate(
        vol, objects, load_model("litemedsam"), axis=0, preset="abdomen",
        value_range=intensity_range(vol, "abdomen"), settings=PropagationSettings(),
    ).labels  # fmt: skip
    assert np.array_equal(np.where(found == 3, 0, found), core)
    labels.undo()
    assert np.array_equal(labels.data, before)


def test_propagate_all_needs_prompts(widget, monkeypatch):
    viewer, w = widget
    setup_volume(viewer, w)
    errors = []
    monkeypatch.setattr("napari_sammed2d._widget.show_error", errors.append)
    w.propagate_all()
    assert errors == ["no object has prompts: draw a box first"] and w._busy is None


def test_the_widget_keys_are_not_napari_shortcuts():
    from napari.utils.shortcuts import default_shortcuts

    from napari_sammed2d._widget import KEYS

    taken = {str(k).replace("+", "-") for keys in default_shortcuts.values() for k in keys}
    assert not taken & set(KEYS), taken & set(KEYS)


def test_object_table_shows_each_colour_and_whole_window_names_in_napari_style(
    make_napari_viewer, qtbot
):
    """Docked in napari's window (its style sheet pads the lists and selects the current
    row), every row shows its object's colour, the selected one included, and the window
    column shows "(Intensity)" whole (it was cut to "(Intens" and the current object's
    colour hidden under the highlight)."""
    viewer = make_napari_viewer(show=True)
    w = SegmentWidget(viewer)
    try:
        viewer.window.add_dock_widget(w, name="SAM-Med2D")
        qtbot.wait(50)
        view = w.objects_view
        # the first object's row was made before the widget was docked
        assert view.columnWidth(3) >= view.cellWidget(0, 3).sizeHint().width()
        viewer.add_image(block_volume(), name="ct")
        w.new_object()
        qtbot.waitUntil(lambda: w.objects_view.rowCount() == 2)
        assert view.selectionModel().isRowSelected(1, view.rootIndex())
        for row in range(view.rowCount()):
            oid = int(view.item(row, 0).text())
            swatch = view.item(row, 2).data(Qt.ItemDataRole.DecorationRole)
            assert swatch.getRgb()[:3] == tuple(w.table.objects[oid].color)
            combo = view.cellWidget(row, 3)
            assert combo.currentText() == "(Intensity)"
            assert view.columnWidth(3) >= combo.sizeHint().width()
    finally:
        w.shutdown()


def test_measure_gives_each_objects_size_as_it_is_now(widget, qtbot, tmp_path):
    """Measure: volume and longest diameter of each object in SAM labels, on the slices
    the viewer shows, from the image's voxel size (in voxels without one); Save sizes
    writes them as CSV; a 2D image gets areas."""
    viewer, w = widget
    _, _, labels = setup_volume(viewer, w, scale=(2.5, 0.8, 0.5))
    qtbot.waitUntil(lambda: "loaded" in w.status.text(), timeout=60_000)  # its own line first
    w.rename_object(1, "block")
    labels.data[2:6, 12:30, 10:26] = 1  # 4 slices of 18 x 16 pixels, painted
    labels.data[4, 40:42, 30:33] = 3
    w.measure(tmp_path / "sizes.csv")
    qtbot.waitUntil(lambda: w._busy is None, timeout=30_000)
    ml = 4 * 18 * 16 * 2.5 * 0.8 * 0.5 / 1000
    longest = np.hypot(18 * 0.8, 16 * 0.5)
    assert w.status.text() == (
        f"sizes now:\nblock: {ml:.1f} mL, longest diameter {longest:.1f} mm (slice 2), "
        f"slices 2-5\nobject 3: 0.0 mL, longest diameter {np.hypot(1.6, 1.5):.1f} mm (slice 4), "
        "slices 4-4\nwritten to sizes.csv"
    )
    rows = (tmp_path / "sizes.csv").read_text().splitlines()
    assert rows[1].startswith(f"1,block,{4 * 18 * 16},{ml:.3f},2,5,{longest:.1f},2")

    labels.data[2:6, 12:30, 10:26] = 0  # a change is measured at the next press
    labels.data[2, 12:14, 10:12] = 1
    w.measure()
    qtbot.waitUntil(lambda: w._busy is None, timeout=30_000)
    assert w.status.text().startswith("sizes now:\nblock: 0.0 mL, longest diameter ")
    assert "slices 2-2" in w.status.text()

    viewer.layers.clear()  # no voxel size: voxels and pixels
    _, _, labels = setup_volume(viewer, w)
    labels.data[2:6, 12:30, 10:26] = 1
    w.measure()
    qtbot.waitUntil(lambda: w._busy is None, timeout=30_000)
    assert w.status.text() == (
        f"sizes now:\nblock: {4 * 18 * 16} voxels, longest diameter "
        f"{np.hypot(18, 16):.1f} pixels (slice 2), slices 2-5"
    )


def test_measure_a_2d_image_gives_areas(widget, qtbot):
    viewer, w = widget
    viewer.add_image(block_volume()[3], name="xray", scale=(0.2, 0.2))
    _, _, labels = w.ensure_prompt_layers()
    qtbot.waitUntil(lambda: "loaded" in w.status.text(), timeout=60_000)
    labels.data[12:30, 10:26] = 1
    w.measure()
    qtbot.waitUntil(lambda: w._busy is None, timeout=30_000)
    assert w.status.text() == (
        f"sizes now:\nobject 1: {18 * 16 * 0.04:.1f} mm², longest diameter "
        f"{np.hypot(18 * 0.2, 16 * 0.2):.1f} mm"
    )


def test_measure_lists_many_objects_in_a_notification(widget, qtbot, monkeypatch):
    viewer, w = widget
    _, _, labels = setup_volume(viewer, w, scale=(2.0, 1.0, 1.0))
    qtbot.waitUntil(lambda: "loaded" in w.status.text(), timeout=60_000)
    shown = []
    monkeypatch.setattr("napari_sammed2d._widget.show_info", shown.append)
    for oid in range(1, 7):
        labels.data[1, 4 * oid : 4 * oid + 2, 2:4] = oid
    w.object_spin.setValue(4)
    w.measure()
    qtbot.waitUntil(lambda: w._busy is None, timeout=30_000)
    assert w.status.text().splitlines() == [
        "sizes now:",
        f"object 4: 0.0 mL, longest diameter {np.hypot(2, 2):.1f} mm (slice 1), slices 1-1",
        "and 5 more in the notification",
    ]
    assert len(shown) == 1 and all(f"object {i}: " in shown[0] for i in range(1, 7))
