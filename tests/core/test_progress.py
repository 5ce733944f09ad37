"""Long commands report progress in logs, not only on a terminal."""

from __future__ import annotations

import io
import subprocess
import sys

from sammed2d.progress import progress_reporter


def test_plain_lines_with_rate_and_time_left_off_a_terminal(monkeypatch):
    clock = iter(range(0, 1000, 2))  # two seconds a step
    monkeypatch.setattr("sammed2d.progress.time.perf_counter", lambda: next(clock))
    stream = io.StringIO()  # not a tty, as a job scheduler's log
    with progress_reporter("propagating", stream=stream, interval=0.0) as update:
        for done in range(0, 11, 5):
            update(done, 10)
        update(10, 10)  # a repeat prints nothing new
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("propagating: 5/10 slices")
    assert "slice/s, about" in lines[0] and "s left" in lines[0]
    assert lines[-1].startswith("propagating: 10/10 slices") and len(lines) == 2


def test_no_rate_from_under_a_second():
    """A reporter made at its first step (one per epoch) printed 68,766 steps/s."""
    stream = io.StringIO()
    with progress_reporter("epoch 5/5", unit="step", stream=stream, interval=0.0) as update:
        update(1, 24)
    assert stream.getvalue().splitlines()[0] == "epoch 5/5: 1/24 steps, 0 s"


def test_interrupted_work_says_where_it_stopped():
    stream = io.StringIO()
    try:
        with progress_reporter("embedding", stream=stream, interval=60.0) as update:
            update(0, 20)  # nothing finished yet: nothing to say
            update(3, 20)
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        pass
    assert stream.getvalue().splitlines()[-1].endswith("(stopped)")


def test_cli_propagate_logs_progress_when_piped(tmp_path, tiny_checkpoint):
    import json

    import numpy as np

    from sammed2d.io import Volume, write_volume

    array = np.random.default_rng(0).normal(0, 50, (20, 18, 6)).astype(np.int16)
    write_volume(tmp_path / "v.nii.gz", array, Volume(array, np.eye(4)))
    prompts = {
        "axis": 2,
        "objects": [{"id": 1, "range": [0, 5], "slices": {"2": {"box": [2, 2, 12, 12]}}}],
    }
    (tmp_path / "p.json").write_text(json.dumps(prompts))
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "sammed2d.cli",
            "propagate",
            str(tmp_path / "v.nii.gz"),
            "--prompts",
            str(tmp_path / "p.json"),
            "--out",
            str(tmp_path / "l.nii.gz"),
            "--model",
            str(tiny_checkpoint),
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert "propagating: " in run.stderr and "/6 slices" in run.stderr
