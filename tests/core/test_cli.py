"""The `sammed2d` command line on small generated data with known geometry."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sammed2d.cli import main
from sammed2d.io import Volume, read_image, read_volume, write_volume

from .test_io import oblique_affine, write_dicom_series


@pytest.fixture
def volume_file(tmp_path):
    rng = np.random.default_rng(0)
    array = rng.normal(-80, 5, (40, 36, 6)).astype(np.int16)
    array[10:25, 8:20, 1:5] = 150
    path = write_volume(tmp_path / "ct.nii.gz", array, Volume(array, oblique_affine()))
    return path


@pytest.fixture
def prompts_file(tmp_path):
    data = {
        "axis": 2,
        "objects": [
            {"id": 3, "name": "block", "range": [1, 4], "slices": {"2": {"box": [7, 9, 21, 26]}}},
            {"id": 5, "slices": {"3": {"points": [[14, 17]], "labels": [1]}}},
        ],
    }
    path = tmp_path / "prompts.json"
    path.write_text(json.dumps(data))
    return path


def run_cli(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, text):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sammed2d: error:"), err
    assert text in lines[0], lines[0]


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha", "dicom"])
def test_propagate_keeps_input_geometry(tmp_path, capsys, tiny_checkpoint, prompts_file, suffix):
    array = np.random.default_rng(0).normal(0, 50, (40, 36, 6)).astype(np.int16)
    if suffix == "dicom":
        source = write_dicom_series(tmp_path / "series", array)
    else:
        source = write_volume(tmp_path / f"ct{suffix}", array, Volume(array, oblique_affine()))
    out = tmp_path / "labels.nii.gz"
    code, stdout, _ = run_cli(
        capsys,
        "propagate",
        source,
        "--prompts",
        prompts_file,
        "--out",
        out,
        "--model",
        tiny_checkpoint,
        "--device",
        "cpu",
    )
    assert code == 0
    src, labels = read_volume(source), read_volume(out)
    assert labels.array.shape == src.array.shape
    assert np.allclose(labels.affine, src.affine, atol=1e-4)
    assert set(np.unique(labels.array)) <= {0, 3, 5}
    assert "object 3 block:" in stdout and "object 5:" in stdout and " s" in stdout


def test_propagate_never_writes_its_names_file_over_the_prompts(
    tmp_path, capsys, volume_file, prompts_file, tiny_checkpoint
):
    """`-o prompts.nii.gz` would put the labels' names in `prompts.json`, the prompts file
    it was given: refused in one line before the model runs, and the prompts stay."""
    before = prompts_file.read_bytes()
    out = prompts_file.with_name("prompts.nii.gz")
    code, _, err = run_cli(
        capsys, "propagate", volume_file, "--prompts", prompts_file, "-o", out,
        "--model", tiny_checkpoint, "--device", "cpu",
    )  # fmt: skip
    assert_one_line_error(code, err, "holds no label names")
    assert prompts_file.read_bytes() == before and not out.exists()
    # A names file the suite wrote before is a names file: replaced, as any output is.
    out = tmp_path / "labels.nii.gz"
    for _ in range(2):
        code, _, _ = run_cli(
            capsys, "propagate", volume_file, "--prompts", prompts_file, "-o", out,
            "--model", tiny_checkpoint, "--device", "cpu",
        )  # fmt: skip
        assert code == 0 and out.with_name("labels.json").exists()


def test_propagate_with_real_model_and_cache(tmp_path, capsys, volume_file, prompts_file):
    cache = tmp_path / "cache"
    out = tmp_path / "labels.nrrd"
    code, stdout, _ = run_cli(
        capsys,
        "propagate",
        volume_file,
        "--prompts",
        prompts_file,
        "--out",
        out,
        "--cache",
        cache,
        "--window",
        "abdomen",
    )
    assert code == 0, stdout
    labels = read_volume(out).array
    truth = np.zeros_like(labels, bool)
    truth[10:25, 8:20, 1:5] = True
    found = labels > 0
    assert 2 * (found & truth).sum() / (found.sum() + truth.sum()) > 0.85
    assert "slices 1-4" in stdout
    assert len(list(cache.rglob("*.npz"))) >= 4
    # each object's slices to check first follow its line: the block's are among the
    # slices it reached, and not the one its box was drawn on
    block = stdout.split("object 3 block:")[1].splitlines()
    assert block[1].startswith("  check first: slice ")
    listed = [int(part.split()[1]) for part in block[1].split(":", 1)[1].split(";")]
    assert listed and set(listed) <= {1, 3, 4}, block[1]


def test_measure_prints_and_writes_each_objects_size(tmp_path, capsys, volume_file):
    """`measure`: each object's volume and longest axial diameter from any label format,
    named by the file or by --names; a CSV beside; bad input in one line."""
    from sammed2d.labelfiles import write_labels
    from sammed2d.measure import object_sizes
    from sammed2d.segments import Segment

    volume = read_volume(volume_file)  # 0.8 x 0.9 x 2.5 mm voxels, turned in plane
    labels = np.zeros(volume.array.shape, np.uint8)
    labels[10:25, 8:20, 1:5] = 2
    labels[30:33, 30:34, 2] = 6
    seg = write_labels(
        tmp_path / "l.seg.nrrd",
        labels,
        volume,
        [Segment(2, "block", (200, 40, 40)), Segment(6, "nodule", (40, 200, 40))],
    )
    code, out, err = run_cli(capsys, "measure", seg, "--csv", tmp_path / "sizes.csv")
    assert code == 0 and "own grid" in err  # a .seg.nrrd may be cropped: its own numbers
    block, nodule = object_sizes(labels, volume.affine)
    lines = out.splitlines()
    assert lines[0] == (
        f"2 block: {15 * 12 * 4 * 1.8 / 1000:.1f} mL, longest diameter "
        f"{np.hypot(15 * 0.8, 12 * 0.9):.1f} mm (slice {block.diameter_slice}), slices 1-4"
    )
    assert lines[1].startswith("6 nodule: 0.0 mL, longest diameter ")
    assert lines[2] == f"sizes written to {tmp_path / 'sizes.csv'}"
    rows = (tmp_path / "sizes.csv").read_text().splitlines()
    assert rows[1].startswith("2,block,720,1.296,1,4,") and rows[2].startswith("6,nodule,12,")

    nifti = write_volume(tmp_path / "l.nii.gz", labels, volume)
    names = tmp_path / "names.json"
    names.write_text(json.dumps({"6": "nodule"}))
    code, out, err = run_cli(capsys, "measure", nifti, "--names", names, "--axis", "0")
    assert code == 0 and not err, err
    assert out.splitlines()[1].startswith("6 nodule: ") and out.splitlines()[1].endswith(
        "slices 30-32"
    )
    code, _, err = run_cli(capsys, "measure", volume_file)
    assert_one_line_error(code, err, "is not a label")
    code, _, err = run_cli(capsys, "measure", tmp_path / "none.nii.gz")
    assert_one_line_error(code, err, "file not found")


def test_compare_two_segmentations_of_one_image(tmp_path, capsys, volume_file):
    """`compare`: per object, Dice, both volumes and surface distances of two label files of
    one image, the second put on the first's grid (here a crop of it); a CSV beside."""
    from sammed2d.labelfiles import write_labels
    from sammed2d.segments import Segment

    volume = read_volume(volume_file)  # 0.8 x 0.9 x 2.5 mm voxels
    model = np.zeros(volume.array.shape, np.uint8)
    model[10:25, 8:20, 1:5] = 2
    reader = np.zeros_like(model)
    reader[10:25, 8:22, 1:5] = 2  # two columns wider
    reader[30:33, 30:34, 2] = 6
    first = write_labels(tmp_path / "model.nii.gz", model, volume, [Segment(2, "block", (9, 9, 9))])
    crop = (slice(5, 36), slice(4, 36), slice(0, 6))
    shift = volume.affine.copy()
    shift[:3, 3] = volume.affine[:3, :3] @ [5, 4, 0] + volume.affine[:3, 3]
    second = write_volume(tmp_path / "reader.nii.gz", reader[crop], Volume(reader[crop], shift))
    code, out, err = run_cli(capsys, "compare", first, second, "--csv", tmp_path / "c.csv")
    assert code == 0, err
    lines = out.splitlines()
    dice = 2 * 15 * 12 * 4 / (15 * 12 * 4 + 15 * 14 * 4)
    assert lines[0].startswith(
        f"2 block: Dice {dice:.3f}, {15 * 12 * 4 * 1.8 / 1000:.1f} / "
        f"{15 * 14 * 4 * 1.8 / 1000:.1f} mL (+16.7 %), HD95 1.8 mm, mean surface distance "
    )
    assert lines[1] == "6 Segment_6: Dice 0.000, 0.0 / 0.0 mL, only in the second"
    rows = (tmp_path / "c.csv").read_text().splitlines()
    assert rows[1].startswith(f"2,block,{dice:.4f},") and rows[2].startswith(
        "6,Segment_6,0.0000,0.000,0.022,,"
    )
    code, _, err = run_cli(capsys, "compare", first, volume_file)
    assert_one_line_error(code, err, "is not a label")


def test_measure_numbers_a_dicom_segs_slices_as_its_series(tmp_path, capsys):
    """A DICOM SEG holds only its labelled frames: measured alone its slices are its own
    (and it says so); with --reference, the series' slices."""
    from sammed2d.labelfiles import write_labels
    from sammed2d.segments import Segment

    array = np.random.default_rng(0).normal(0, 50, (40, 36, 6)).astype(np.int16)
    series = write_dicom_series(tmp_path / "series", array)
    labels = np.zeros(array.shape, np.uint8)
    labels[5:15, 5:25, 3:5] = 1
    seg = write_labels(
        tmp_path / "l.dcm",
        labels,
        read_volume(series),
        [Segment(1, "lesion", (200, 40, 40))],
        source_series=series,
    )
    code, out, err = run_cli(capsys, "measure", seg)
    assert code == 0 and out.rstrip().endswith("slices 0-1") and "--reference" in err
    code, out, err = run_cli(capsys, "measure", seg, "--reference", series)
    assert code == 0 and out.rstrip().endswith("slices 3-4"), out
    ml = 10 * 20 * 2 * 0.7 * 0.8 * 2.0 / 1000  # the series' 0.7 x 0.8 x 2 mm voxels
    assert out.startswith(f"1 lesion: {ml:.1f} mL, longest diameter {np.hypot(7, 16):.1f} mm")


def test_propagate_from_labels_drawn_on_some_slices(tmp_path, capsys, volume_file):
    """--seeds: labels drawn on a few slices (here a .seg.nrrd, names kept) are taken as
    given there, interpolated between two drawings 5 mm apart, and walked past them until
    the structure ends; --between stays between the first and last drawn slice."""
    from sammed2d.labelfiles import read_labels, write_labels
    from sammed2d.segments import Segment

    volume = read_volume(volume_file)
    truth = np.zeros(volume.array.shape, bool)
    truth[10:25, 8:20, 1:5] = True  # the block, on slices 1-4, 2.5 mm apart
    drawn = np.zeros(volume.array.shape, np.uint8)
    drawn[11:24, 9:19, 1] = 4  # drawn a voxel inside the block, on slices 1 and 3
    drawn[11:24, 9:19, 3] = 4
    seeds = write_labels(
        tmp_path / "drawn.seg.nrrd", drawn, volume, [Segment(4, "block", (200, 40, 40))]
    )
    out = tmp_path / "labels.nii.gz"
    code, stdout, err = run_cli(
        capsys, "propagate", volume_file, "--seeds", seeds, "-o", out, "--window", "abdomen"
    )
    assert code == 0, err
    labels, segments = read_labels(out)
    found = labels.array == 4
    assert [(s.id, s.name, s.color) for s in segments] == [(4, "block", (200, 40, 40))]
    for k in (1, 2, 3):  # as drawn, and between two drawings their shape
        assert np.array_equal(found[..., k], drawn[..., 1] == 4)
    a, b = found[..., 4], truth[..., 4]  # past the last drawing: the model's
    assert 2 * (a & b).sum() / (a.sum() + b.sum()) > 0.85
    assert not found[..., 5].any()  # where the block ends, the walk stopped
    ml = found.sum() * 0.8 * 0.9 * 2.5 / 1000  # the oblique affine's voxels
    assert f"object 4 block: slices 1-4 (4 slices), {ml:.1f} mL," in stdout

    code, stdout, err = run_cli(
        capsys, "propagate", volume_file, "--seeds", seeds, "-o", out, "--between",
        "--window", "abdomen",
    )  # fmt: skip
    assert code == 0, err
    expected = drawn == 4
    expected[..., 2] = expected[..., 1]  # slices 1-3 only
    assert np.array_equal(read_volume(out).array == 4, expected)
    empty = write_volume(tmp_path / "empty.nii.gz", np.zeros_like(drawn), volume)
    code, _, err = run_cli(capsys, "propagate", volume_file, "--seeds", empty, "-o", out)
    assert_one_line_error(code, err, "no labelled voxels to propagate from")
    code, _, err = run_cli(capsys, "propagate", volume_file, "-o", out)
    assert_one_line_error(code, err, "give --prompts PROMPTS.json or --seeds LABELS")


def test_propagate_slice_step_walks_fewer_slices(tmp_path, capsys, volume_file, prompts_file):
    cache = tmp_path / "cache"
    out = tmp_path / "labels.nii.gz"
    argv = ["propagate", volume_file, "--prompts", prompts_file, "--out", out]
    code, stdout, _ = run_cli(capsys, *argv, "--cache", cache, "--slice-step", 3)
    assert code == 0, stdout
    labels = read_volume(out).array
    # block 3 over its range 1-4 from slice 2: 3 (a multiple of 3) and both ends of the
    # range are walked, and the block is found on all four slices and nowhere else (the
    # stepping itself is tested in test_propagate)
    assert [bool((labels[:, :, z] == 3).any()) for z in range(6)] == [0, 1, 1, 1, 1, 0]
    assert "walked every 3 slices" in stdout
    code, _, err = run_cli(capsys, *argv, "--slice-step", 0)
    assert_one_line_error(code, err, "slice_step 0")


def test_propagate_warns_of_slices_thinner_than_any_scan(tmp_path, capsys, tiny_checkpoint):
    """Slices 0.003 mm apart (a CT whose units were lost) would make every step of 3 mm a
    thousand slices: the steps are capped and the run says what to check."""
    from sammed2d.propagate import MAX_REACH, slices_within

    assert slices_within(3.0, np.diag([0.5, 0.5, 0.5, 1.0]), 2) == 6  # 0.5 mm slices
    assert slices_within(3.0, np.diag([0.003, 0.003, 0.003, 1.0]), 2) == MAX_REACH == 8
    array = np.full((24, 20, 12), -80, np.int16)
    array[6:16, 5:14, 2:10] = 150
    path = write_volume(
        tmp_path / "ct.nii.gz", array, Volume(array, np.diag([0.003, 0.003, 0.003, 1.0]))
    )
    prompts = tmp_path / "p.json"
    prompts.write_text(
        json.dumps({"objects": [{"id": 1, "slices": {"5": {"box": [5, 6, 14, 16]}}}]})
    )
    argv = ["propagate", path, "--prompts", prompts, "--out", tmp_path / "l.nii.gz"]
    code, out, err = run_cli(capsys, *argv, "--model", tiny_checkpoint)
    assert code == 0, err
    assert "0.003 mm apart" in err and "--slice-step 1" in err
    code, out, err = run_cli(capsys, *argv, "--model", tiny_checkpoint, "--slice-step", 1)
    assert code == 0 and "mm apart" not in err


def test_segment_colour_dicom(tmp_path, capsys, tiny_checkpoint):
    """A colour ultrasound DICOM goes through `segment` as an RGB image; the mask has the
    image's rows and columns."""
    from tests.core.test_io import colour_phantom, write_colour_dicom

    path = write_colour_dicom(tmp_path / "us.dcm", colour_phantom())
    argv = ["segment", path, "--box", 10, 6, 25, 15, "-o", tmp_path / "m.png"]  # -o: --out
    code, out, err = run_cli(capsys, *argv, "--model", tiny_checkpoint)
    assert code == 0, err
    assert "predicted IoU" in out
    assert read_image(tmp_path / "m.png").shape == (24, 32)


@pytest.mark.parametrize(
    ("with_slice", "out", "expected"),
    [
        (False, "m.jpg", ".png, .tif, .tiff, .nii, .nii.gz"),
        (False, "m.nrrd", ".nii.gz"),
        (True, "m.jpg", ".nii.gz, .nrrd, .nhdr, .mha, .mhd"),
    ],
)
def test_segment_refuses_an_output_format_before_the_model_loads(
    tmp_path, capsys, volume_file, with_slice, out, expected
):
    """The mask's format is checked first (the missing model would be named otherwise), and
    the formats named are those this kind of input can be written as: a volume's slice also
    as NRRD or MHA, on the volume's grid."""
    where = [volume_file, "--slice", 2] if with_slice else [tmp_path / "img.png"]
    code, _, err = run_cli(
        capsys,
        "segment",
        *where,
        "--box",
        1,
        1,
        9,
        9,
        "-o",
        tmp_path / out,
        "--model",
        tmp_path / "nowhere.pth",
    )
    assert_one_line_error(code, err, "unsupported mask format ." + out.split(".")[-1])
    assert err.strip().endswith(expected)
    assert not (tmp_path / out).exists()


def test_segment_2d_image_and_volume_slice(tmp_path, capsys, volume_file, tiny_checkpoint):
    import imageio.v3 as iio

    image = np.zeros((30, 40), np.uint8)
    image[5:20, 10:30] = 200
    iio.imwrite(tmp_path / "img.png", image)
    code, out, _ = run_cli(
        capsys,
        "segment",
        tmp_path / "img.png",
        "--box",
        10,
        5,
        30,
        20,
        "--out",
        tmp_path / "m.png",
        "--model",
        tiny_checkpoint,
    )
    assert code == 0 and "predicted IoU" in out
    assert read_image(tmp_path / "m.png").shape == (30, 40)
    code, out, _ = run_cli(
        capsys,
        "segment",
        volume_file,
        "--slice",
        2,
        "--point",
        14,
        17,
        "--negative",
        2,
        2,
        "--out",
        tmp_path / "p.nii.gz",
        "--model",
        tiny_checkpoint,
    )
    assert code == 0
    # a one-slice volume at slice 2 of the source's grid: it overlays the volume
    src, mask = read_volume(volume_file), read_volume(tmp_path / "p.nii.gz")
    assert mask.array.shape == (40, 36, 1)
    assert np.allclose(mask.affine[:3, :3], src.affine[:3, :3])
    assert np.allclose(mask.affine @ [0, 0, 0, 1], src.affine @ [0, 0, 2, 1], atol=1e-4)
    for axis, out in [(0, "a0.nrrd"), (1, "a1.nii.gz")]:
        code, _, _ = run_cli(
            capsys,
            "segment",
            volume_file,
            "--slice",
            3,
            "--axis",
            axis,
            "--box",
            1,
            1,
            5,
            5,
            "--out",
            tmp_path / out,
            "--model",
            tiny_checkpoint,
        )
        back = read_volume(tmp_path / out)
        expected_shape = list(src.array.shape)
        expected_shape[axis] = 1
        assert code == 0 and list(back.array.shape) == expected_shape
        corner = [0, 0, 0, 1]
        corner[axis] = 3
        assert np.allclose(back.affine @ [0, 0, 0, 1], src.affine @ corner, atol=1e-3)
    # LiteMedSAM was trained on boxes: the real-weights check uses one
    code, out, _ = run_cli(
        capsys,
        "segment",
        volume_file,
        "--slice",
        2,
        "--axis",
        2,
        "--box",
        7,
        9,
        21,
        26,
        "--out",
        tmp_path / "m.tif",
    )
    assert code == 0
    mask = read_image(tmp_path / "m.tif") > 0
    assert mask.shape == (40, 36)
    truth = np.zeros((40, 36), bool)
    truth[10:25, 8:20] = True
    assert 2 * (mask & truth).sum() / (mask.sum() + truth.sum()) > 0.85


def test_embed_then_info(tmp_path, capsys, volume_file, tiny_checkpoint):
    code, out, _ = run_cli(
        capsys, "embed", volume_file, "--cache", tmp_path / "c", "--model", tiny_checkpoint
    )
    assert code == 0 and "6 slices embedded" in out
    assert len(list((tmp_path / "c").rglob("*.npz"))) == 6
    code, out, _ = run_cli(capsys, "info")
    assert code == 0 and "litemedsam" in out and "lite_medsam.pth" in out and "devices: cpu" in out
    assert str(Path.home() / ".cache" / "sammed2d") in out  # where to put named weights


def test_demo_writes_labels_and_montage(tmp_path, capsys, tiny_checkpoint):
    code, out, _ = run_cli(capsys, "demo", "--out", tmp_path / "demo", "--model", tiny_checkpoint)
    assert code == 0 and "mean Dice" in out
    labels = read_volume(tmp_path / "demo" / "phantom_labels.nii.gz")
    ct = read_volume(tmp_path / "demo" / "phantom_ct.nii.gz")
    assert labels.array.shape == ct.array.shape and np.allclose(labels.affine, ct.affine)
    assert read_image(tmp_path / "demo" / "montage.png").ndim == 3


def test_bad_inputs_exit_2_with_one_line(
    tmp_path, capsys, volume_file, prompts_file, tiny_checkpoint
):
    out = tmp_path / "out.nii.gz"
    base = ["--out", out, "--model", tiny_checkpoint]
    code, _, err = run_cli(
        capsys, "propagate", tmp_path / "nope.nii.gz", "--prompts", prompts_file, *base
    )
    assert_one_line_error(code, err, "file not found")
    (tmp_path / "scan.abc").write_text("x")
    code, _, err = run_cli(
        capsys, "propagate", tmp_path / "scan.abc", "--prompts", prompts_file, *base
    )
    assert_one_line_error(code, err, "unsupported format .abc")
    (tmp_path / "bad.json").write_text("{not json")
    code, _, err = run_cli(
        capsys, "propagate", volume_file, "--prompts", tmp_path / "bad.json", *base
    )
    assert_one_line_error(code, err, "malformed JSON")
    # --slice on a 2D image said the format was unsupported, naming the volume formats
    from PIL import Image

    Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "flat.png")
    code, _, err = run_cli(
        capsys, "segment", tmp_path / "flat.png", "--slice", "3", "--box", "1", "1", "9", "9",
        "--out", tmp_path / "m.png", "--model", tiny_checkpoint,
    )  # fmt: skip
    assert_one_line_error(code, err, "--slice needs a volume")
    # and a volume without --slice was told to be saved as NIfTI, which it already was
    for image, said in ((volume_file, "a volume of shape"), (tmp_path, "a folder")):
        code, _, err = run_cli(
            capsys, "segment", image, "--box", "1", "1", "9", "9",
            "--out", tmp_path / "m.png", "--model", tiny_checkpoint,
        )  # fmt: skip
        assert_one_line_error(code, err, said)
        assert "give --slice N" in err
    far = tmp_path / "far.json"
    far.write_text(
        json.dumps({"axis": 2, "objects": [{"id": 1, "slices": {"9": {"box": [1, 1, 5, 5]}}}]})
    )
    code, _, err = run_cli(capsys, "propagate", volume_file, "--prompts", far, *base)
    assert_one_line_error(code, err, "slice 9, outside the volume's 0..5")
    outside = tmp_path / "outside.json"
    outside.write_text(
        json.dumps({"axis": 2, "objects": [{"id": 1, "slices": {"2": {"box": [1, 1, 500, 5]}}}]})
    )
    code, _, err = run_cli(capsys, "propagate", volume_file, "--prompts", outside, *base)
    assert_one_line_error(code, err, "reaches outside")
    fake = tmp_path / "fake.pth"
    fake.write_text("not weights")
    code, _, err = run_cli(
        capsys, "propagate", volume_file, "--prompts", prompts_file, "--out", out, "--model", fake
    )
    assert_one_line_error(code, err, "fake.pth")
    code, _, err = run_cli(capsys, "segment", volume_file, "--out", tmp_path / "m.png")
    assert_one_line_error(code, err, "give --box")
    code, _, err = run_cli(
        capsys,
        "segment",
        volume_file,
        "--slice",
        1,
        "--box",
        1,
        1,
        5,
        5,
        "--out",
        tmp_path / "m.jpg",
        "--model",
        tiny_checkpoint,
    )
    assert_one_line_error(code, err, "unsupported mask format .jpg")
    assert not out.exists() and not (tmp_path / "m.png").exists()
    assert not list(tmp_path.glob(".tmp-*"))


def test_console_script_runs(tmp_path):
    exe = shutil.which("sammed2d") or str(
        __import__("pathlib").Path(sys.executable).parent / "sammed2d"
    )
    result = subprocess.run([exe, "info"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "sam-med2d" in result.stdout
    result = subprocess.run(
        [
            exe,
            "segment",
            str(tmp_path / "x.png"),
            "--box",
            "1",
            "1",
            "2",
            "2",
            "--out",
            str(tmp_path / "m.png"),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    # a reader that goes early (`sammed2d info | head -1`) gets no traceback
    piped = subprocess.Popen(
        [exe, "info"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    piped.stdout.close()  # before anything is written: every write meets a closed pipe
    _, err = piped.communicate(timeout=120)
    assert piped.returncode == 0 and "Traceback" not in err, err


def test_a_4d_file_is_segmented_on_the_channel_chosen(tmp_path, capsys, prompts_file):
    """MR sequences in one 4D NIfTI: without --channel one line says how many there are;
    with it the chosen one is segmented, and the labels are 3D on its grid."""
    import nibabel as nib

    rng = np.random.default_rng(0)
    sequences = rng.normal(-80, 5, (40, 36, 6, 2)).astype(np.float32)
    sequences[10:25, 8:20, 1:5, 1] = 150  # the block shows in the second sequence only
    source = tmp_path / "mr.nii.gz"
    nib.save(nib.Nifti1Image(sequences, oblique_affine()), str(source))
    out = tmp_path / "labels.nii.gz"
    code, _, err = run_cli(capsys, "propagate", source, "--prompts", prompts_file, "-o", out)
    assert_one_line_error(code, err, "2 volumes on one grid")
    assert "--channel 0..1" in err and not out.exists()
    code, _, _ = run_cli(
        capsys, "propagate", source, "--channel", "1", "--prompts", prompts_file, "-o", out,
        "--window", "abdomen",
    )  # fmt: skip
    assert code == 0
    labels = read_volume(out)
    assert labels.array.shape == (40, 36, 6) and np.allclose(labels.affine, oblique_affine())
    block = np.zeros((40, 36, 6), bool)
    block[10:25, 8:20, 1:5] = True
    found = labels.array == 3
    assert 2 * (found & block).sum() / (found.sum() + block.sum()) > 0.8
    code, _, err = run_cli(
        capsys, "evaluate", source, out, "--channel", "5", "--prompt", "box"
    )  # fmt: skip
    assert_one_line_error(code, err, "--channel 5; it holds 0..1")
