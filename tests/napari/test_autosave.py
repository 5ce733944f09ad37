"""Auto-save of the labels layer: the saving thread alone, then through the widget in a
real viewer (run under xvfb-run)."""

from __future__ import annotations

import numpy as np
import pytest

napari = pytest.importorskip("napari")

from napari_sammed2d._autosave import AutoSave, checked_path  # noqa: E402
from napari_sammed2d._io import labels_layer_kwargs, write_labels_layer  # noqa: E402
from sammed2d.errors import SamMed2DError  # noqa: E402
from sammed2d.io import read_volume  # noqa: E402
from sammed2d.labelfiles import read_labels  # noqa: E402
from sammed2d.segments import Segment  # noqa: E402


def saved(path):
    """(labels in the layer's (z, y, x) order, {id: name}) of a written file."""
    volume, segments = read_labels(path)
    return np.transpose(volume.array, (2, 1, 0)), {s.id: s.name for s in segments}


def meta_for(segments, scale=(3.0, 0.8, 0.8)):
    kwargs = labels_layer_kwargs(segments)
    return {
        "features": kwargs["features"],
        "colormap": kwargs["colormap"],
        "metadata": {"sammed2d": {"segments": segments}},
        "scale": scale,
        "units": ("mm",) * 3,
    }


def test_it_writes_only_what_changed_and_keeps_the_last_good_file(tmp_path):
    messages = []
    saver = AutoSave(write_labels_layer, messages.append)
    path = tmp_path / "auto.seg.nrrd"
    data = np.zeros((4, 10, 12), np.uint16)
    data[1:3, 2:6, 3:9] = 2
    meta = meta_for([Segment(2, "liver", (200, 100, 50))])
    saver.offer(path, data, meta)
    assert saver.flush()
    found, names = saved(path)
    assert np.array_equal(found, data) and names == {2: "liver"}
    assert saver.saves == 1 and messages == [("saved", str(path))]
    stamp = path.stat().st_mtime_ns

    saver.offer(path, data, meta)  # nothing changed: the file is left alone
    assert saver.flush()
    assert saver.saves == 1 and path.stat().st_mtime_ns == stamp

    data[0, 0, 0] = 2  # one voxel, painted in place on the live array
    saver.offer(path, data, meta)
    assert saver.flush()
    assert saver.saves == 2 and saved(path)[0][0, 0, 0] == 2

    renamed = meta_for([Segment(2, "right liver lobe", (200, 100, 50))])
    saver.offer(path, data, renamed)  # a new name alone is a change
    assert saver.flush()
    assert saver.saves == 3 and saved(path)[1] == {2: "right liver lobe"}

    # A write that fails says so in one line and leaves the last good file as it was.
    saver.offer(path, data[0], renamed)
    assert saver.flush()
    kind, text = messages[-1]
    assert kind == "error" and "auto-save to auto.seg.nrrd failed" in text and "\n" not in text
    assert saved(path)[1] == {2: "right liver lobe"} and saved(path)[0][0, 0, 0] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["auto.seg.nrrd"]
    saver.stop()


def test_stop_writes_what_is_pending(tmp_path):
    saver = AutoSave(write_labels_layer)
    data = np.zeros((3, 5, 5), np.uint8)
    data[1, 2, 2] = 1
    saver.offer(tmp_path / "a.nii.gz", data, meta_for([Segment(1, "nodule", (255, 0, 0))]))
    saver.stop()
    found, names = saved(tmp_path / "a.nii.gz")
    assert found[1, 2, 2] == 1 and found.sum() == 1 and names == {1: "nodule"}


def test_paths_it_cannot_write_are_refused_in_one_line(tmp_path):
    with pytest.raises(SamMed2DError, match="choose a file ending in"):
        checked_path(tmp_path / "labels.png")
    with pytest.raises(SamMed2DError, match="does not exist"):
        checked_path(tmp_path / "missing" / "labels.seg.nrrd")
    assert checked_path(tmp_path / "Labels.SEG.NRRD").name == "Labels.SEG.NRRD"


def test_the_widget_saves_paints_undo_renames_and_on_close(widget, qtbot, tmp_path):
    viewer, w = widget
    viewer.add_image(np.zeros((6, 20, 24), np.float32), name="ct", scale=(3.0, 0.8, 0.8))
    _, _, labels = w.ensure_prompt_layers()
    path = tmp_path / "ct_labels.seg.nrrd"
    w.set_autosave(path)
    assert w.autosave_check.isChecked() and w.autosave_edit.text() == str(path)

    def saved_now():
        w._autosave_tick()
        assert w.autosave.flush()
        qtbot.waitUntil(lambda: w.autosave_label.text().startswith("auto-saved"))
        w.autosave_label.setText("")
        return saved(path)

    where = (np.array([2, 2, 3]), np.array([5, 6, 5]), np.array([7, 7, 8]))
    labels.data_setitem(where, 1)  # a paint stroke
    found, names = saved_now()
    assert found.sum() == 3 and found[2, 5, 7] == 1 and names == {1: "object 1"}
    spacing = read_labels(path)[0].spacing
    assert np.allclose(spacing[:3], (0.8, 0.8, 3.0))  # the layer's scale, (x, y, z)

    w.rename_object(1, "lesion")
    assert saved_now()[1] == {1: "lesion"}

    labels.undo()  # napari's undo fires no paint event: the fingerprint still sees it
    assert saved_now()[0].sum() == 0

    labels.data_setitem(where, 1)
    w.shutdown()  # closing writes what the timer has not yet handed over
    assert saved(path)[0].sum() == 3


def test_the_widget_refuses_a_file_it_cannot_write(widget, tmp_path):
    viewer, w = widget
    viewer.add_image(np.zeros((3, 8, 8), np.float32), name="ct")
    w.ensure_prompt_layers()
    with pytest.raises(SamMed2DError, match="choose a file ending in"):
        w.set_autosave(tmp_path / "labels.txt")
    with pytest.raises(SamMed2DError, match="needs an image opened from DICOM"):
        w.set_autosave(tmp_path / "labels.dcm")
    w.autosave_edit.setText(str(tmp_path / "nowhere" / "labels.seg.nrrd"))
    w.autosave_check.click()  # as a user would: an error line, and auto-save stays off
    assert not w.autosave_check.isChecked() and w._autosave_path is None
    w.set_autosave(tmp_path / "labels.nii.gz")
    w.set_autosave(None)
    assert not w.autosave_check.isChecked() and not (tmp_path / "nowhere").exists()


def test_closing_the_viewer_saves_the_last_strokes(make_napari_viewer, tmp_path):
    """napari's window closes by removing every layer, without closing dock widgets: the
    labels layer leaving hands its last state to auto-save."""
    from napari_sammed2d._widget import SegmentWidget

    viewer = make_napari_viewer()
    w = SegmentWidget(viewer)
    viewer.window.add_dock_widget(w)
    viewer.add_image(np.zeros((4, 10, 12), np.float32), name="ct")
    _, _, labels = w.ensure_prompt_layers()
    path = tmp_path / "labels.nii.gz"
    w.set_autosave(path)
    assert w.autosave.flush() and saved(path)[0].sum() == 0
    labels.data_setitem((np.array([1]), np.array([2]), np.array([3])), 1)
    viewer.close()
    assert w.autosave.flush()
    assert saved(path)[0][1, 2, 3] == 1
    w.shutdown()


def test_a_new_image_does_not_overwrite_the_file(widget, tmp_path):
    """The widget replaces its labels layer when an image of another shape is chosen: the
    old labels' last state is saved and auto-save stops, rather than writing the new
    image's empty labels over them."""
    viewer, w = widget
    viewer.add_image(np.zeros((4, 10, 12), np.float32), name="ct")
    _, _, labels = w.ensure_prompt_layers()
    path = tmp_path / "labels.seg.nrrd"
    w.set_autosave(path)
    labels.data_setitem((np.array([1]), np.array([2]), np.array([3])), 1)
    viewer.add_image(np.zeros((5, 16, 16), np.float32), name="other")
    w.image_combo.setCurrentText("other")
    w.ensure_prompt_layers()
    w._autosave_tick()
    assert w.autosave.flush()
    assert saved(path)[0].shape == (4, 10, 12) and saved(path)[0][1, 2, 3] == 1
    assert not w.autosave_check.isChecked() and "auto-save stopped" in w.autosave_label.text()


def test_a_dicom_series_auto_saves_as_dicom_seg_on_its_frames(widget, qtbot, tmp_path):
    from ..conftest import SHARED

    series = SHARED / "data" / "ct_dicom"
    if not series.is_dir():
        pytest.skip("the shared DICOM series is absent")
    viewer, w = widget
    viewer.open(str(series), plugin="napari-sammed2d")
    _, _, labels = w.ensure_prompt_layers()
    path = tmp_path / "labels.dcm"
    # Chosen before any mask: a SEG cannot hold no segment, which is not a failure.
    w.set_autosave(path)
    assert w.autosave.flush()
    qtbot.waitUntil(lambda: "nothing to save yet" in w.autosave_label.text())
    assert w._autosave_error is None and not path.exists()
    labels.data_setitem((np.array([7, 7]), np.array([200, 201]), np.array([300, 300])), 1)
    w.rename_object(1, "nodule")
    w._autosave_tick()
    assert w.autosave.flush()
    volume, segments = read_labels(path, reference=read_volume(series))
    found = np.transpose(volume.array, (2, 1, 0))  # the layer's (z, y, x)
    assert found.sum() == 2 and found[7, 200, 300] == 1 and found[7, 201, 300] == 1
    assert [s.name for s in segments] == ["nodule"]


def test_the_prompts_are_auto_saved_beside_the_labels(widget, tmp_path):
    """NAME.prompts.json beside NAME.seg.nrrd: what Save prompts… writes, rewritten when
    the prompts change and left alone when they do not; Load prompts… replays it."""
    from napari_sammed2d._autosave import prompts_beside
    from sammed2d.objects import ObjectPrompts, SlicePrompt
    from sammed2d.prompt_files import PromptFile, read_prompt_file, write_prompt_file

    assert prompts_beside(tmp_path / "a.seg.nrrd").name == "a.prompts.json"
    assert prompts_beside(tmp_path / "b.v2.NII.GZ").name == "b.v2.prompts.json"
    viewer, w = widget
    viewer.add_image(np.zeros((6, 20, 24), np.float32), name="ct")
    path, beside = tmp_path / "ct.seg.nrrd", tmp_path / "ct.prompts.json"
    w.set_autosave(path)
    assert w.autosave.flush() and not beside.exists()  # no prompts yet: nothing to keep

    box = SlicePrompt(box=np.array([3.0, 4.0, 15.0, 12.0]))
    given = PromptFile(0, [ObjectPrompts(2, {3: box}, (1, 4), "lesion")], window="abdomen")
    write_prompt_file(tmp_path / "given.json", given)
    w.load_prompts(tmp_path / "given.json")  # prompt layers with a box, nothing segmented
    w._autosave_tick()
    w.save_prompts(tmp_path / "saved.json")
    assert beside.read_text() == (tmp_path / "saved.json").read_text()
    kept = read_prompt_file(beside).objects
    assert [(o.id, o.name, o.range) for o in kept] == [(2, "lesion", (1, 4))]
    assert np.allclose(kept[0].slices[3].box, box.box)

    stamp = beside.stat().st_mtime_ns
    w._autosave_tick()  # unchanged: not rewritten
    assert beside.stat().st_mtime_ns == stamp
    w.rename_object(2, "nodule")
    w._autosave_tick()
    assert read_prompt_file(beside).objects[0].name == "nodule"
    assert w.autosave.flush()  # the labels' thread may be writing its own temporary file
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
