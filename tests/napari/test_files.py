"""Label files and prompt files through a real napari viewer (run under xvfb-run)."""

from __future__ import annotations

import json

import numpy as np
import pytest

napari = pytest.importorskip("napari")

from napari_sammed2d._io import write_labels_layer  # noqa: E402
from napari_sammed2d._widget import SegmentWidget, camera_of  # noqa: E402
from sammed2d.cli import main  # noqa: E402
from sammed2d.errors import SamMed2DError, SourceWarning  # noqa: E402
from sammed2d.io import Volume, read_volume, write_volume  # noqa: E402
from sammed2d.labelfiles import read_labels, write_labels  # noqa: E402
from sammed2d.segments import Segment, default_segment  # noqa: E402

from ..conftest import SHARED  # noqa: E402

CT_DICOM = SHARED / "data" / "ct_dicom"


def lps_affine():
    """A scanner-like axial grid: RAS axes negated in x and y, anisotropic, off-origin."""
    affine = np.diag([-0.8, -0.8, 2.5, 1.0])
    affine[:3, 3] = [100.0, 120.0, -40.0]
    return affine


def block_file(tmp_path):
    rng = np.random.default_rng(0)
    array = rng.normal(-80, 5, (40, 48, 8)).astype(np.int16)  # voxel (i, j, k)
    array[10:26, 12:30, 2:6] = 150
    array[:3] = -1000  # air beside the body, as in any CT
    return write_volume(tmp_path / "ct.nii.gz", array, Volume(array, lps_affine()))


def world_of(layer, index):
    return np.asarray(layer.data_to_world(np.asarray(index, float)))


def test_label_files_open_as_named_coloured_labels_on_the_image(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    src = block_file(tmp_path)
    ct = read_volume(src)
    labels = np.zeros(ct.array.shape, np.uint8)
    labels[10:26, 12:30, 2:6] = 3
    segments = [Segment(3, "tumour", (255, 0, 0))]
    paths = [
        write_labels(tmp_path / "a.seg.nrrd", labels, ct, segments),
        write_labels(tmp_path / "b.nii.gz", labels, ct, segments),
    ]
    # A .seg.nrrd cropped to the object, as Slicer may save it: it must land on the image.
    crop = Volume(labels[8:30, 10:32, 1:7], ct.affine.copy())
    crop.affine[:3, 3] = ct.affine[:3, :3] @ [8, 10, 1] + ct.affine[:3, 3]
    paths.append(write_labels(tmp_path / "c.seg.nrrd", crop.array, crop, segments))
    (image,) = viewer.open(str(src), plugin="napari-sammed2d")
    assert image.data.shape == (8, 48, 40)
    for path in paths:
        (layer,) = viewer.open(str(path), plugin="napari-sammed2d")
        assert layer.__class__.__name__ == "Labels", path
        assert np.allclose(layer.colormap.map(3)[:3], (1, 0, 0))
        names = dict(zip(layer.features["index"], layer.features["name"]))
        assert names[3] == "tumour"
        # The labelled voxel (i, j, k) = (10, 12, 2) sits where the image's does.
        inside = np.argwhere(layer.data == 3)[0]
        assert np.allclose(
            world_of(layer, inside),
            world_of(
                image,
                inside
                + [offset for offset in ((1, 10, 8) if path.name.startswith("c") else (0, 0, 0))],
            ),
        )


def test_nifti_and_sidecar_round_trip_through_napari(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    src = block_file(tmp_path)
    ct = read_volume(src)
    labels = np.zeros(ct.array.shape, np.uint8)
    labels[10:26, 12:30, 2:6] = 1
    labels[30:34, 2:5, 7] = 2
    segments = [default_segment(1, "liver"), Segment(2, "lesion", (0, 0, 255))]
    first = write_labels(tmp_path / "labels.nii.gz", labels, ct, segments)
    (layer,) = viewer.open(str(first), plugin="napari-sammed2d")
    out = tmp_path / "again.seg.nrrd"
    write_labels_layer(str(out), layer.data, layer._get_state())
    back, segs = read_labels(out, reference=ct)
    assert np.array_equal(back.array, labels)
    assert segs == segments
    # A layer painted in napari (no segments known) keeps its colormap's colours.
    painted = viewer.add_labels(
        layer.data.copy(),
        metadata={
            "sammed2d": {k: v for k, v in layer.metadata["sammed2d"].items() if k != "segments"}
        },
    )
    write_labels_layer(str(tmp_path / "p.nii.gz"), painted.data, painted._get_state())
    side = json.loads((tmp_path / "p.json").read_text(encoding="utf-8"))["segments"]
    assert side["1"]["color"] == [int(round(c * 255)) for c in painted.colormap.map(1)[:3]]


@pytest.mark.skipif(not CT_DICOM.is_dir(), reason="the DICOM CT series is absent")
def test_dicom_seg_opens_on_the_series(make_napari_viewer, tmp_path):
    pytest.importorskip("highdicom")
    viewer = make_napari_viewer()
    ct = read_volume(CT_DICOM)
    labels = np.zeros(ct.array.shape, np.uint8)
    labels[300:360, 200:280, 6:9] = 1
    seg = write_labels(
        tmp_path / "s.dcm", labels, ct, [default_segment(1, "spleen")], source_series=CT_DICOM
    )
    (image,) = viewer.open(str(CT_DICOM), plugin="napari-sammed2d")
    (layer,) = viewer.open(str(seg), plugin="napari-sammed2d")
    assert layer.__class__.__name__ == "Labels"
    # The SEG holds only its 3 frames; placed in the world, they cover the image's voxels.
    assert layer.data.shape[0] == 3
    k, j, i = np.argwhere(layer.data == 1)[0]
    assert np.allclose(world_of(layer, (k, j, i)), world_of(image, (6 + k, j, i)))
    assert dict(zip(layer.features["index"], layer.features["name"]))[1] == "spleen"
    # Saving the napari labels of a DICOM series writes a SEG again.
    back, _ = saved_through_the_writer(viewer, image, labels, tmp_path / "again.dcm", ct)
    assert np.array_equal(back.array, labels)


@pytest.mark.skipif(not CT_DICOM.is_dir(), reason="the DICOM CT series is absent")
def test_labels_of_a_series_save_as_an_rt_structure_set_and_refuse_to_open_as_one(
    make_napari_viewer, tmp_path
):
    """The writer takes `x.rtstruct.dcm` (for planning systems) as the CLI does: contours on
    the series that give back the labels; opening that file is one line, not ITK's."""
    from tests.core.test_rtstruct import read_back

    viewer = make_napari_viewer()
    ct = read_volume(CT_DICOM)
    (image,) = viewer.open(str(CT_DICOM), plugin="napari-sammed2d")
    labels = np.zeros(ct.array.shape, np.uint8)
    labels[300:360, 200:280, 6:9] = 3
    layer = viewer.add_labels(
        np.transpose(labels, (2, 1, 0)), metadata=dict(image.metadata), scale=image.scale,
        translate=image.translate,
    )  # fmt: skip
    path = tmp_path / "plan.rtstruct.dcm"
    with pytest.warns(SourceWarning):  # the shared series lacks a Study ID
        viewer.layers.selection = {layer}
        assert viewer.layers.save(str(path), selected=True, plugin="napari-sammed2d")
    roi = read_back(path, CT_DICOM)
    (found,) = roi.values()
    assert np.array_equal(found, labels == 3)
    with pytest.raises(Exception, match="an RT Structure Set"):
        viewer.open(str(path), plugin="napari-sammed2d")


def saved_through_the_writer(viewer, image, labels, path, reference):
    """`labels` (voxel i, j, k of `reference`) as a Labels layer on `image`, written by the
    plugin's writer to `path` and read back onto `reference`: (volume, segments)."""
    layer = viewer.add_labels(
        np.transpose(labels, (2, 1, 0)),
        metadata=dict(image.metadata),
        scale=image.scale,
        translate=image.translate,
    )
    write_labels_layer(str(path), layer.data, layer._get_state())
    return read_labels(path, reference=reference)


@pytest.mark.parametrize("given_as", ["file", "folder"])
def test_labels_on_a_multiframe_dicom_are_saved_as_seg(make_napari_viewer, tmp_path, given_as):
    """An enhanced multi-frame DICOM (one file holding the volume) opens as an image, and its
    labels are written as a SEG that references the file's frames, as a series' are."""
    pytest.importorskip("highdicom")
    from tests.core.test_labelfiles import enhanced_ct

    array = np.arange(12 * 10 * 6, dtype=np.int16).reshape(12, 10, 6)
    source, _ = enhanced_ct(tmp_path, array, "converted")
    if given_as == "folder":
        (tmp_path / "export").mkdir()
        source = source.rename(tmp_path / "export" / "IM0001").parent
    viewer = make_napari_viewer()
    (image,) = viewer.open(str(source), plugin="napari-sammed2d")
    volume = read_volume(source)
    labels = np.zeros(volume.array.shape, np.uint8)
    labels[2:7, 3:8, 1:3] = 1
    back, segs = saved_through_the_writer(viewer, image, labels, tmp_path / "labels.dcm", volume)
    assert np.array_equal(back.array, labels) and len(segs) == 1


def test_saved_prompts_replay_through_the_cli_bit_for_bit(make_napari_viewer, qtbot, tmp_path):
    viewer = make_napari_viewer()
    w = SegmentWidget(viewer)
    try:
        src = block_file(tmp_path)
        viewer.open(str(src), plugin="napari-sammed2d")
        w.preset_combo.setCurrentText("abdomen")
        points, shapes, labels = w.ensure_prompt_layers()
        viewer.dims.set_point(0, world_of(viewer.layers["ct"], (3, 0, 0))[0])
        # A box on layer slice 3 (file slice k = 3) around rows 11..30, columns 9..26.
        shapes.add_rectangles(np.array([[3, 11, 9], [3, 11, 26], [3, 30, 26], [3, 30, 9]], float))
        w.wait_idle()
        w.propagate_object()
        with qtbot.waitSignal(w._busy.finished, timeout=120_000):
            pass
        assert labels.data.any()
        w.save_prompts(tmp_path / "prompts.json")
        saved = json.loads((tmp_path / "prompts.json").read_text(encoding="utf-8"))
        assert saved["axis"] == 2 and saved["window"] == "abdomen"
        assert saved["model"]["name"] == "litemedsam" and len(saved["model"]["sha256"]) == 64
        assert saved["objects"][0]["slices"]["3"]["box"] == [11.0, 9.0, 30.0, 26.0]

        out = tmp_path / "replay.nii.gz"
        assert (
            main(
                [
                    "propagate",
                    str(src),
                    "--prompts",
                    str(tmp_path / "prompts.json"),
                    "--out",
                    str(out),
                ]
            )
            == 0
        )
        replay = read_volume(out).array
        assert np.array_equal(np.transpose(labels.data, (2, 1, 0)), replay)

        # Loading puts the same box back, on the same slice, for the same object.
        shapes.data = []
        w.load_prompts(tmp_path / "prompts.json")
        assert len(shapes.data) == 1
        assert np.allclose(np.sort(shapes.data[0], axis=0)[[0, -1]], [[3, 11, 9], [3, 30, 26]])
    finally:
        w.shutdown()


def test_a_prompts_files_settings_and_ranges_drive_napari_as_they_drive_the_cli(
    make_napari_viewer, qtbot, tmp_path
):
    # Before, napari kept only the slice step of a loaded file and none of its objects'
    # slice ranges: a file tuned for its scan (box_jitter for faint edges, as the README
    # suggests) propagated with the defaults in napari, ranged objects stopped by themselves,
    # and saving the file again wrote the defaults over both.
    viewer = make_napari_viewer()
    w = SegmentWidget(viewer)
    try:
        src = block_file(tmp_path)
        viewer.open(str(src), plugin="napari-sammed2d")
        prompts = {
            "axis": 2,
            "window": "abdomen",
            "objects": [{"id": 1, "slices": {"3": {"box": [11.0, 9.0, 30.0, 26.0]}}}],
            # every carried mask counts as vanished: the prompted slice alone is labelled
            "settings": {"min_area": 1_000_000},
        }
        path = tmp_path / "tuned.json"
        path.write_text(json.dumps(prompts))
        w.load_prompts(path)
        assert "min_area 1000000" in w.status.text()
        _, _, labels = w.ensure_prompt_layers()
        w.propagate_object()
        with qtbot.waitSignal(w._busy.finished, timeout=120_000):
            pass
        found = np.transpose(labels.data, (2, 1, 0))
        assert [k for k in range(found.shape[2]) if found[..., k].any()] == [3]
        out = tmp_path / "replay.nii.gz"
        assert main(["propagate", str(src), "--prompts", str(path), "--out", str(out)]) == 0
        assert np.array_equal(found, read_volume(out).array)
        w.save_prompts(tmp_path / "again.json")
        again = json.loads((tmp_path / "again.json").read_text(encoding="utf-8"))
        assert again["settings"]["min_area"] == 1_000_000

        # A slice range: the block spans slices 2-5; its walk stays in 3-4, as the CLI's.
        del prompts["settings"]
        prompts["objects"][0]["range"] = [3, 4]
        path.write_text(json.dumps(prompts))
        w.load_prompts(path)
        assert "1 with a slice range" in w.status.text()
        assert "propagation settings" not in w.status.text()
        w.propagate_object()
        with qtbot.waitSignal(w._busy.finished, timeout=120_000):
            pass
        found = np.transpose(labels.data, (2, 1, 0))
        assert [k for k in range(found.shape[2]) if found[..., k].any()] == [3, 4]
        assert main(["propagate", str(src), "--prompts", str(path), "--out", str(out)]) == 0
        assert np.array_equal(found, read_volume(out).array)
        w.save_prompts(tmp_path / "again.json")
        assert json.loads((tmp_path / "again.json").read_text(encoding="utf-8"))["objects"][0][
            "range"
        ] == [3, 4]
        # Clearing the object's prompts lets its range go: a box drawn afterwards walks
        # by itself, as any drawn box does.
        w.clear_prompts()
        shapes = w.ensure_prompt_layers()[1]
        shapes.add_rectangles(np.array([[3, 11, 9], [3, 11, 26], [3, 30, 26], [3, 30, 9]], float))
        w.wait_idle()
        w.save_prompts(tmp_path / "again.json")
        assert (
            "range"
            not in json.loads((tmp_path / "again.json").read_text(encoding="utf-8"))["objects"][0]
        )
    finally:
        w.shutdown()


def test_a_ct_opens_with_the_soft_tissue_window(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(block_file(tmp_path)), plugin="napari-sammed2d")
    assert tuple(layer.contrast_limits) == (-160.0, 240.0)
    assert [str(u) for u in layer.units] == ["millimeter"] * 3  # the scale bar reads mm


def test_a_ras_nifti_shows_radiologically(make_napari_viewer, qtbot, tmp_path):
    """A NIfTI stored RAS (x towards the patient's right, y anterior): a block at small i
    and small j (the patient's left, posterior) must show at the screen's lower right."""
    viewer = make_napari_viewer(show=True)
    w = SegmentWidget(viewer)
    try:
        array = np.zeros((60, 60, 5), np.int16)  # soft tissue: grey in the window
        array[5:15, 5:15, :] = 400  # white
        array[59, 59, :] = -1000  # one voxel of air, so "auto" sees a CT
        src = write_volume(tmp_path / "ras.nii.gz", array, Volume(array, np.diag([1.0, 1, 2, 1])))
        viewer.open(str(src), plugin="napari-sammed2d")
        qtbot.waitUntil(lambda: "SAM boxes" in viewer.layers, timeout=5000)
        for name in ("SAM boxes", "SAM points", "SAM labels"):
            viewer.layers[name].visible = False
        assert tuple(camera_of(viewer).orientation2d) == ("up", "left")
        shot = viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(float)
        bright = np.argwhere(shot.mean(axis=-1) > 200)
        body = np.argwhere(shot.mean(axis=-1) > 5)
        centre = (body.min(axis=0) + body.max(axis=0)) / 2
        assert bright.size and np.all(bright.mean(axis=0) > centre)  # lower right
    finally:
        w.shutdown()


def test_a_ct_beside_a_labels_json_still_opens_as_an_image(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    src = block_file(tmp_path)
    labels = np.zeros(read_volume(src).array.shape, np.uint8)
    write_volume(tmp_path / "labels.nii.gz", labels, read_volume(src))
    (tmp_path / "labels.json").write_text(json.dumps({"1": "liver"}))
    (image,) = viewer.open(str(src), plugin="napari-sammed2d")
    (lab,) = viewer.open(str(tmp_path / "labels.nii.gz"), plugin="napari-sammed2d")
    assert image.__class__.__name__ == "Image" and lab.__class__.__name__ == "Labels"


def test_labels_painted_on_a_layer_in_micrometres_are_written_in_mm(tmp_path):
    """A Labels layer from another reader, whose units are µm, is saved with its spacing in
    mm (the unit NIfTI readers and Slicer take), not as 1000x as large."""
    from napari.layers import Labels

    data = np.zeros((3, 4, 5), np.uint16)
    data[1, 2, 3] = 1
    layer = Labels(data, scale=(3000.0, 750.0, 750.0), units="um")
    path = str(tmp_path / "painted.nii.gz")
    write_labels_layer(path, data, layer.as_layer_data_tuple()[1])  # what napari hands a writer
    assert np.allclose(read_volume(path).spacing[:3], (0.75, 0.75, 3.0))


def test_prompts_saved_on_another_scan_are_refused_before_anything_changes(
    make_napari_viewer, tmp_path
):
    """Load prompts checks the file's slices and boxes against the open image (x and y in
    the file's own voxel axes) and refuses one that does not fit in one line, before its
    window, settings or objects replace anything. Loading a file again replaces its
    objects' prompts instead of doubling them."""
    viewer = make_napari_viewer()
    w = SegmentWidget(viewer)
    try:
        viewer.open(str(block_file(tmp_path)), plugin="napari-sammed2d")  # (i, j, k) 40, 48, 8
        w.preset_combo.setCurrentText("bone")
        fits = {
            "axis": 2,
            "window": "abdomen",
            "objects": [
                {"id": 1, "name": "block", "slices": {"3": {"box": [11.0, 9.0, 47.0, 26.0]}}}
            ],
        }
        wide = json.loads(json.dumps(fits))
        wide["objects"][0]["slices"]["3"]["box"] = [11.0, 9.0, 60.0, 26.0]  # x past j's 48
        deep = json.loads(json.dumps(fits))
        deep["objects"][0]["slices"] = {"8": {"box": [11.0, 9.0, 30.0, 26.0]}}
        for name, record, reason in [
            ("wide.json", wide, "box [11, 9, 60, 26] reaches outside the 48 x 40 image"),
            ("deep.json", deep, "prompt on slice 8, outside the volume's 0..7 along axis 2"),
        ]:
            (tmp_path / name).write_text(json.dumps(record))
            with pytest.raises(SamMed2DError, match="saved on another scan") as caught:
                w.load_prompts(tmp_path / name)
            assert reason in str(caught.value) and "\n" not in str(caught.value)
            assert w.preset_combo.currentText() == "bone"
            assert w.table.objects[1].name != "block"
            layers = [viewer.layers[n] for n in ("SAM points", "SAM boxes") if n in viewer.layers]
            assert all(len(layer.data) == 0 for layer in layers)
        (tmp_path / "fits.json").write_text(json.dumps(fits))
        for _ in range(2):
            w.load_prompts(tmp_path / "fits.json")
        shapes = w.ensure_prompt_layers()[1]
        assert len(shapes.data) == 1 and w.table.objects[1].name == "block"
        assert w.preset_combo.currentText() == "abdomen"
    finally:
        w.shutdown()


def test_labels_loaded_from_a_file_are_drawn_objects_that_propagate(
    make_napari_viewer, qtbot, tmp_path
):
    """Load labels…: a label file drawn on two slices becomes an object whose labelled
    slices are taken as given; Propagate all fills between them and past them."""
    viewer = make_napari_viewer()
    w = SegmentWidget(viewer)
    try:
        src = block_file(tmp_path)
        ct = read_volume(src)
        drawing = np.zeros(ct.array.shape, np.uint8)  # voxel (i, j, k); the block is k 2-5
        drawing[11:25, 13:29, 2] = 3
        drawing[10:26, 12:30, 4] = 3
        segments = [Segment(3, "tumour", (255, 0, 0))]
        # Cropped, as Slicer may save a .seg.nrrd: it must land on the image's grid.
        crop = Volume(drawing[8:30, 10:32, 1:7], ct.affine.copy())
        crop.affine[:3, 3] = ct.affine[:3, :3] @ [8, 10, 1] + ct.affine[:3, 3]
        path = write_labels(tmp_path / "drawn.seg.nrrd", crop.array, crop, segments)
        viewer.open(str(src), plugin="napari-sammed2d")
        _, _, labels = w.ensure_prompt_layers()
        labels.data_setitem((np.array([0]), np.array([0]), np.array([0])), 3)  # gives way
        before = labels.data.copy()
        w.load_labels(path)
        layer_drawing = np.transpose(drawing, (2, 1, 0))
        assert np.array_equal(labels.data == 3, layer_drawing == 3)
        assert w.table.objects[3].name == "tumour" and w.table.objects[3].color == (255, 0, 0)
        assert "1 object(s) loaded from drawn.seg.nrrd, drawn on 2 slice(s)" in w.status.text()
        labels.undo()  # the load is one step
        assert np.array_equal(labels.data, before)
        labels.redo()
        w.propagate_all()
        with qtbot.waitSignal(w._busy.finished, timeout=120_000):
            pass
        # Intensity auto: the window its drawn slices asked for is the object's, and shown
        assert w.table.objects[3].window == "abdomen"
        assert "tumour 2–5 (abdomen)" in w.status.text()
        for k in (2, 4):  # kept as drawn
            assert np.array_equal(labels.data[k] == 3, layer_drawing[k] == 3)
        assert [k for k in range(8) if (labels.data[k] == 3).any()] == [2, 3, 4, 5]
        block = np.zeros((48, 40), bool)
        block[12:30, 10:26] = True
        for k in (3, 5):  # between the drawings, and past the last
            found = labels.data[k] == 3
            assert 2 * (found & block).sum() / (found.sum() + block.sum()) > 0.75  # 0.79 at 5
        # Check next goes to the slices the model made, not to the drawn ones.
        seen = set()
        for _ in range(2):
            w.check_next()
            seen.add(int(round(viewer.layers["ct"].world_to_data(viewer.dims.point)[0])))
        assert seen == {3, 5}, w.status.text()
        # Labels on another grid are refused before anything changes.
        kept = labels.data.copy()
        other = Volume(np.ones((5, 5, 5), np.uint8), np.eye(4))
        bad = write_labels(tmp_path / "other.nii.gz", other.array, other, [])
        with pytest.raises(SamMed2DError, match="not on the image's voxel grid"):
            w.load_labels(bad)
        assert np.array_equal(labels.data, kept)
    finally:
        w.shutdown()


def test_a_4d_file_opens_as_one_layer_per_volume_and_each_can_be_segmented(
    make_napari_viewer, qtbot, tmp_path
):
    """MR sequences in one 4D NIfTI open as napari's channel_axis would: a layer each, named
    with its index, on the same grid; the widget segments the one chosen, and its labels
    save as a 3D volume on that grid."""
    import nibabel as nib

    rng = np.random.default_rng(0)
    sequences = rng.normal(-80, 5, (40, 48, 8, 2)).astype(np.float32)
    sequences[10:26, 12:30, 2:6, 1] = 150
    source = tmp_path / "mr.nii.gz"
    nib.save(nib.Nifti1Image(sequences, lps_affine()), str(source))
    viewer = make_napari_viewer()
    w = SegmentWidget(viewer)
    try:
        layers = viewer.open(str(source), plugin="napari-sammed2d")
        assert [layer.name for layer in layers] == ["mr [0]", "mr [1]"]
        assert [layer.visible for layer in layers] == [True, False]
        assert np.array_equal(layers[1].data, np.transpose(sequences[..., 1], (2, 1, 0)))
        assert np.allclose(layers[0].scale, layers[1].scale)
        w.image_combo.setCurrentText("mr [1]")
        w.preset_combo.setCurrentText("abdomen")
        _, shapes, labels = w.ensure_prompt_layers()
        shapes.add_rectangles(np.array([[3, 11, 9], [3, 11, 26], [3, 30, 26], [3, 30, 9]], float))
        w.wait_idle()
        w.propagate_object()
        with qtbot.waitSignal(w._busy.finished, timeout=120_000):
            pass
        assert [z for z in range(8) if (labels.data[z] == 1).any()] == [2, 3, 4, 5]
        out = tmp_path / "labels.nii.gz"
        write_labels_layer(str(out), labels.data, labels._get_state())
        saved = read_volume(out)
        assert saved.array.shape == (40, 48, 8) and np.allclose(saved.affine, lps_affine())
        # Saved prompts name the volume they were placed on, and replay on it without flags.
        w.save_prompts(tmp_path / "prompts.json")
        assert json.loads((tmp_path / "prompts.json").read_text(encoding="utf-8"))["channel"] == 1
        replay = tmp_path / "replay.nii.gz"
        args = ["propagate", str(source), "--prompts", str(tmp_path / "prompts.json")]
        assert main([*args, "-o", str(replay)]) == 0
        assert np.array_equal(read_volume(replay).array, saved.array)
    finally:
        w.shutdown()
