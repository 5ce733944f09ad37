"""Batch runs on a 2-worker dask LocalCluster, resume, failures; evaluation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sammed2d.batch import evaluate_volume, read_manifest, run_batch
from sammed2d.cli import main
from sammed2d.errors import SamMed2DError
from sammed2d.io import Volume, read_volume, write_volume

from ..conftest import ABDOMEN_CT, need


@pytest.fixture
def cases(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "cases"
    folder.mkdir()
    prompts = {"axis": 2, "objects": [{"id": 1, "slices": {"1": {"box": [2, 2, 12, 12]}}}]}
    (folder / "p.json").write_text(json.dumps(prompts))
    lines = ["image,prompts,labels"]
    for n in range(3):
        array = rng.normal(0, 50, (20, 18, 4)).astype(np.int16)
        affine = np.diag([0.7 + n, 0.8, 2.0, 1.0])
        write_volume(folder / f"case{n}.nrrd", array, Volume(array, affine))
        lines.append(f"case{n}.nrrd,p.json,")
    (folder / "broken.nii.gz").write_bytes(b"\x1f\x8b garbage")
    lines.append("broken.nii.gz,p.json,")
    (folder / "manifest.csv").write_text("\n".join(lines) + "\n")
    return folder


def test_batch_on_local_cluster_with_failure_and_resume(cases, tmp_path, tiny_checkpoint):
    out = tmp_path / "out"
    # a first, interrupted run that finished only case0
    (cases / "first.csv").write_text("image,prompts,labels\ncase0.nrrd,p.json,\n")
    first = run_batch(cases / "first.csv", out, workers=2, model=str(tiny_checkpoint))
    assert [r.status for r in first] == ["done"]
    done_before = (out / "case0_labels.nrrd").stat().st_mtime_ns

    results = run_batch(cases / "manifest.csv", out, workers=2, model=str(tiny_checkpoint))
    status = {r.case: r.status for r in results}
    assert status["case0.nrrd"] == "done earlier"
    assert status["case1.nrrd"] == status["case2.nrrd"] == "done"
    assert status["broken.nii.gz"].startswith("failed: volume")
    assert (out / "case0_labels.nrrd").stat().st_mtime_ns == done_before
    for n in range(3):
        src, lab = read_volume(cases / f"case{n}.nrrd"), read_volume(out / f"case{n}_labels.nrrd")
        assert np.allclose(src.affine, lab.affine, atol=1e-4)
    assert not (out / "broken_labels.nii.gz").exists()
    assert (out / "summary.csv").read_text(encoding="utf-8").count("\n") == 5
    for n in range(1, 3):  # each case's sizes beside its labels, from its own voxel size
        labels = read_volume(out / f"case{n}_labels.nrrd").array
        row = (out / f"case{n}_sizes.csv").read_text().splitlines()[1].split(",")
        voxels = int((labels == 1).sum())
        assert row[:3] == ["1", "Segment_1", str(voxels)]  # the name its labels file gives it
        assert float(row[3]) == pytest.approx(voxels * (0.7 + n) * 0.8 * 2.0 / 1000, abs=1e-3)
    assert not (out / "broken_sizes.csv").exists()


def test_a_case_seeded_by_drawn_labels(cases, tmp_path, tiny_checkpoint):
    """A `seeds` column stands in for prompts: the labels drawn on slices 0 and 3 (6 mm
    apart) are kept and the slices between interpolated, with the labels' names."""
    from sammed2d.labelfiles import read_labels, write_labels
    from sammed2d.segments import Segment

    volume = read_volume(cases / "case0.nrrd")
    drawn = np.zeros(volume.array.shape, np.uint8)
    drawn[3:12, 4:10, 0] = 2
    drawn[3:12, 4:10, 3] = 2
    write_labels(cases / "drawn.nii.gz", drawn, volume, [Segment(2, "lesion", (9, 8, 7))])
    (cases / "seeded.csv").write_text(
        "image,prompts,labels,seeds\ncase0.nrrd,,,drawn.nii.gz\ncase1.nrrd,,,\n"
        "case2.nrrd,p.json,,drawn.nii.gz\n"
    )
    out = tmp_path / "out"
    results = run_batch(cases / "seeded.csv", out, workers=2, model=str(tiny_checkpoint))
    status = {r.case: r.status for r in results}
    assert status == {
        "case0.nrrd": "done",
        "case1.nrrd": "failed: no prompts or seeds file for this case",
        "case2.nrrd": "failed: both a prompts and a seeds file: give one",
    }
    labels, segments = read_labels(out / "case0_labels.nrrd")
    expected = np.zeros(drawn.shape, bool)
    expected[3:12, 4:10, :] = True
    assert np.array_equal(labels.array == 2, expected)
    assert [(s.id, s.name, s.color) for s in segments] == [(2, "lesion", (9, 8, 7))]


def test_a_channel_column_picks_a_volume_of_a_4d_case(cases, tmp_path, tiny_checkpoint):
    import nibabel as nib

    stack = np.random.default_rng(1).normal(0, 50, (20, 18, 4, 3)).astype(np.float32)
    nib.save(nib.Nifti1Image(stack, np.diag([0.7, 0.8, 2.0, 1.0])), str(cases / "mr.nii.gz"))
    (cases / "mr.csv").write_text(
        "case,image,prompts,labels,channel\nt2,mr.nii.gz,p.json,,2\nall,mr.nii.gz,p.json,,\n"
    )
    assert [c.channel for c in read_manifest(cases / "mr.csv")] == [2, None]
    results = run_batch(cases / "mr.csv", tmp_path / "out", workers=1, model=str(tiny_checkpoint))
    status = {r.case: r.status for r in results}
    assert status["t2"] == "done"
    assert status["all"].startswith("failed: volume") and "--channel 0..2" in status["all"]
    assert read_volume(tmp_path / "out" / "t2_labels.nii.gz").array.shape == (20, 18, 4)
    (cases / "bad.csv").write_text("image,prompts,labels,channel\nmr.nii.gz,p.json,,T2\n")
    with pytest.raises(SamMed2DError, match="row 2: channel 'T2' is not a whole number"):
        read_manifest(cases / "bad.csv")


def test_manifest_paths_are_relative_to_it(cases):
    parsed = read_manifest(cases / "manifest.csv")
    assert parsed[0].image == (cases / "case0.nrrd").resolve() and parsed[0].labels is None


def test_a_spreadsheet_manifest_reads_whatever_the_locale(cases):
    """Spreadsheets save CSV as UTF-8 with a byte-order mark; read with the locale's
    encoding the header became '\ufeffimage' (no `image` column), and a non-ASCII folder
    name failed to decode where the locale is ASCII."""
    import locale

    (cases / "Müller").mkdir()
    (cases / "Müller" / "p.json").write_bytes((cases / "p.json").read_bytes())
    text = "image,prompts,labels\ncase0.nrrd,Müller/p.json,\n"
    (cases / "excel.csv").write_bytes(b"\xef\xbb\xbf" + text.encode())
    before = locale.setlocale(locale.LC_CTYPE)
    locale.setlocale(locale.LC_CTYPE, "C")
    try:
        parsed = read_manifest(cases / "excel.csv")
    finally:
        locale.setlocale(locale.LC_CTYPE, before)
    assert parsed[0].prompts == (cases / "Müller" / "p.json").resolve()
    (cases / "latin1.csv").write_bytes(text.encode("latin-1"))
    with pytest.raises(SamMed2DError, match="latin1.csv: not UTF-8 text .*save it as CSV UTF-8"):
        read_manifest(cases / "latin1.csv")


def test_batch_cli_reports_failures(cases, tmp_path, tiny_checkpoint, capsys):
    code = main(
        [
            "batch",
            str(cases / "manifest.csv"),
            "--out",
            str(tmp_path / "o"),
            "--workers",
            "2",
            "--model",
            str(tiny_checkpoint),
        ]
    )
    out = capsys.readouterr().out
    assert code == 1 and "3 of 4 cases finished" in out and "broken.nii.gz" in out


def test_evaluate_2d_prompts_on_a_phantom(litemedsam, shared_cache):
    vol = np.full((48, 48, 3), -80, np.int16)
    truth = np.zeros(vol.shape, np.uint8)
    truth[10:30, 12:34, :] = 1
    vol[truth == 1] = 150
    scores = evaluate_volume(
        Volume(vol, np.eye(4)), Volume(truth), "box", model=litemedsam, cache=shared_cache
    )
    assert scores[1] > 0.8  # a tight box on a flat block: LiteMedSAM trims its edges


def test_evaluate_reproduces_the_propagation_benchmark(capsys, tmp_path):
    data = need(ABDOMEN_CT)
    import subprocess
    import sys
    from pathlib import Path

    code = main(
        [
            "evaluate",
            str(data / "ct.nii.gz"),
            str(data / "labels.nii.gz"),
            "--prompt",
            "box3d",
            "--csv",
            str(tmp_path / "dice.csv"),
            "--device",
            "cpu",
            "--cache",
            str(tmp_path / "cache"),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0 and "liver" in out
    mean = float(out.splitlines()[-1].split()[1])
    bench = Path(__file__).resolve().parents[2] / "benchmarks" / "propagation.py"
    printed = subprocess.run(
        [
            sys.executable,
            str(bench),
            "--protocols",
            "A",
            "--labels",
            "labels.nii.gz",
            "--no-baseline",
            "--cache",
            str(tmp_path / "cache"),
        ],
        capture_output=True,
        text=True,
        timeout=900,
    ).stdout
    line = [ln for ln in printed.splitlines() if ln.startswith("protocol A:")][0]
    assert abs(float(line.split("mean ")[1].split()[0]) - mean) < 1e-3
    assert mean >= 0.90


def test_killed_run_resumes_with_only_the_missing_cases(cases, tmp_path, tiny_checkpoint):
    """Kill a run after its first output; a rerun computes only the rest.

    Deterministic: cases 1 and 2 read their prompts from named pipes that nobody writes
    until the kill, so only case 0 can finish before it, whatever the scheduling."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "killed"
    for n in (1, 2):
        os.mkfifo(cases / f"wait{n}.json")
    manifest = cases / "three.csv"
    manifest.write_text(
        "image,prompts,labels\ncase0.nrrd,p.json,\ncase1.nrrd,wait1.json,\ncase2.nrrd,wait2.json,\n"
    )
    command = [
        sys.executable,
        "-m",
        "sammed2d.cli",
        "batch",
        str(manifest),
        "--out",
        str(out),
        "--workers",
        "2",
        "--model",
        str(tiny_checkpoint),
    ]
    proc = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.time() + 180
    while time.time() < deadline and not (out / "case0_labels.nrrd").exists():
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole run, workers included
    proc.wait()
    finished = {p.name: p.stat().st_mtime_ns for p in out.glob("case*_labels.nrrd")}
    assert list(finished) == ["case0_labels.nrrd"]
    for n in (1, 2):
        (cases / f"wait{n}.json").unlink()
        (cases / f"wait{n}.json").write_text((cases / "p.json").read_text(encoding="utf-8"))
    results = run_batch(manifest, out, workers=2, model=str(tiny_checkpoint))
    assert [r.status for r in results] == ["done earlier", "done", "done"]
    assert (out / "case0_labels.nrrd").stat().st_mtime_ns == finished["case0_labels.nrrd"]
    assert len(list(out.glob("case*_labels.nrrd"))) == 3
    assert not list(out.rglob(".tmp-*"))


def test_same_file_names_in_different_folders_get_their_own_outputs(tmp_path, tiny_checkpoint):
    rng = np.random.default_rng(1)
    prompts = {"axis": 2, "objects": [{"id": 1, "slices": {"1": {"box": [2, 2, 12, 12]}}}]}
    (tmp_path / "p.json").write_text(json.dumps(prompts))
    for n, folder in enumerate(["s0001", "s0002"]):
        (tmp_path / folder).mkdir()
        array = rng.normal(0, 50, (20, 18, 4)).astype(np.int16)
        write_volume(
            tmp_path / folder / "ct.nii.gz", array, Volume(array, np.diag([1, 1, 2 + n, 1]))
        )
    manifest = tmp_path / "m.csv"
    manifest.write_text("image,prompts,labels\ns0001/ct.nii.gz,p.json,\ns0002/ct.nii.gz,p.json,\n")
    results = run_batch(manifest, tmp_path / "out", workers=1, model=str(tiny_checkpoint))
    assert [r.status for r in results] == ["done", "done"]
    assert [r.case for r in results] == ["s0001/ct.nii.gz", "s0002/ct.nii.gz"]
    for n, folder in enumerate(["s0001", "s0002"]):
        out = read_volume(tmp_path / "out" / folder / "ct_labels.nii.gz")
        assert out.affine[2, 2] == 2 + n  # each output on its own image's grid


def test_clashing_outputs_are_refused_up_front(tmp_path):
    (tmp_path / "a").mkdir()
    manifest = tmp_path / "m.csv"
    manifest.write_text("image,prompts,labels,case\na/ct.nii.gz,p.json,,x\nb/ct.nii.gz,p.json,,x\n")
    with pytest.raises(SamMed2DError, match=r"rows 2 and 3 would write the same output \(x\)"):
        read_manifest(manifest)
    manifest.write_text("image,prompts,labels,case\na/ct.nii.gz,p.json,,../escape\n")
    with pytest.raises(SamMed2DError, match="must be a relative name"):
        read_manifest(manifest)
    manifest.write_text(
        "image,prompts,labels,case\na/ct.nii.gz,p.json,,first\nb/ct.nii.gz,p.json,,second\n"
    )
    assert [c.name for c in read_manifest(manifest)] == ["first", "second"]


def test_batch_without_dask_names_the_extra(monkeypatch, tmp_path):
    import builtins

    real_import = builtins.__import__

    def no_dask(name, *args, **kwargs):
        if name.startswith("dask"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_dask)
    (tmp_path / "m.csv").write_text("image,prompts,labels\n")
    with pytest.raises(SamMed2DError, match=r"pip install 'sammed2d\[distributed\]'"):
        run_batch(tmp_path / "m.csv", tmp_path / "out")


def test_batch_writes_dicom_seg_and_rt_structure_sets_for_dicom_cases(
    cases, tmp_path, tiny_checkpoint
):
    """`--format .dcm` / `.rtstruct.dcm`: a DICOM series case gets a SEG or an RT Structure
    Set referencing its series, holding what the same run writes as NIfTI; a NIfTI/NRRD case
    fails in one line naming what it needs, and the others go on."""
    pytest.importorskip("highdicom")
    from sammed2d.labelfiles import read_labels

    from .test_io import write_dicom_series

    rng = np.random.default_rng(1)
    array = rng.normal(0, 50, (18, 20, 4)).astype(np.int16)  # (i, j, k): 20 rows, 18 columns
    array[4:12, 5:14, :] += 300
    write_dicom_series(cases / "series", array)
    manifest = cases / "dicom.csv"
    manifest.write_text("image,prompts,labels\nseries,p.json,\ncase0.nrrd,p.json,\n")
    labels = {}
    for fmt in (".nii.gz", ".dcm", ".rtstruct.dcm"):
        out = tmp_path / fmt.strip(".")
        results = run_batch(manifest, out, workers=1, model=str(tiny_checkpoint), out_format=fmt)
        status = {r.case: r.status for r in results}
        assert status["series"] == "done"
        volume = read_volume(cases / "series")
        labels[fmt] = read_labels(out / f"series_labels{fmt}", reference=volume)[0].array
        if fmt == ".nii.gz":
            assert status["case0.nrrd"] == "done"
        else:
            assert status["case0.nrrd"].startswith("failed: output")
            assert "needs the DICOM source" in status["case0.nrrd"]
            assert not (out / f"case0_labels{fmt}").exists()
    assert labels[".nii.gz"].any()
    assert np.array_equal(labels[".dcm"] > 0, labels[".nii.gz"] > 0)
    assert np.array_equal(labels[".rtstruct.dcm"] > 0, labels[".nii.gz"] > 0)
