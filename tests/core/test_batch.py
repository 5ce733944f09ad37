"""Batch runs on a 2-worker dask LocalCluster, resume, failures; evaluation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sammed2d.batch import evaluate_volume, read_manifest, run_batch
from sammed2d.cli import main
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
    assert (out / "summary.csv").read_text().count("\n") == 5


def test_manifest_paths_are_relative_to_it(cases):
    parsed = read_manifest(cases / "manifest.csv")
    assert parsed[0].image == (cases / "case0.nrrd").resolve() and parsed[0].labels is None


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
        [sys.executable, str(bench), "--protocols", "A", "--cache", str(tmp_path / "cache")],
        capture_output=True,
        text=True,
        timeout=900,
    ).stdout
    line = [ln for ln in printed.splitlines() if ln.startswith("protocol A")][0]
    assert abs(float(line.split("mean ")[1].split()[0]) - mean) < 1e-3
    assert mean >= 0.90


def test_killed_run_resumes_with_only_the_missing_cases(cases, tmp_path, tiny_checkpoint):
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "killed"
    manifest = cases / "three.csv"
    manifest.write_text(
        "image,prompts,labels\n" + "".join(f"case{n}.nrrd,p.json,\n" for n in range(3))
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
        "1",
        "--model",
        str(tiny_checkpoint),
    ]
    proc = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.time() + 180
    while time.time() < deadline and not list(out.glob("case*_labels.nrrd")):
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole run, workers included
    proc.wait()
    finished = {p.name: p.stat().st_mtime_ns for p in out.glob("case*_labels.nrrd")}
    assert finished and len(finished) < 3, finished
    results = run_batch(manifest, out, workers=2, model=str(tiny_checkpoint))
    skipped = {r.case for r in results if r.status == "done earlier"}
    assert {name.replace("_labels", "") for name in finished} == skipped
    assert all(r.status in ("done", "done earlier") for r in results)
    for name, mtime in finished.items():
        assert (out / name).stat().st_mtime_ns == mtime  # not recomputed
    assert len(list(out.glob("case*_labels.nrrd"))) == 3
    assert not list(out.glob(".tmp-*"))
