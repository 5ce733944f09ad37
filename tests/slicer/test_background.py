"""The module's background runner: results, failures and Cancel reach the GUI thread."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

MODULE_DIR = Path(__file__).resolve().parents[2] / "slicer_module" / "SAMMed2D"
sys.path.insert(0, str(MODULE_DIR))

from SAMMed2DLib import BackgroundRun  # noqa: E402


def test_the_result_and_the_last_progress_come_back():
    def work(progress, should_stop):
        for done in range(1, 6):
            progress(done, 5)
        return threading.current_thread().name

    run = BackgroundRun(work)
    assert run.wait(10)
    progress, outcome = run.poll()
    assert progress == (5, 5)
    assert outcome[0] == "done" and outcome[1] != threading.current_thread().name


def test_a_failure_comes_back_with_its_traceback():
    def work(progress, should_stop):
        raise ValueError("slice 3: no prompt")

    run = BackgroundRun(work)
    assert run.wait(10)
    _, (kind, exc, text) = run.poll()
    assert kind == "error" and str(exc) == "slice 3: no prompt"
    assert "Traceback" in text and "ValueError" in text


def test_cancel_reaches_the_work_and_it_ends():
    started = threading.Event()

    def work(progress, should_stop):
        started.set()
        done = 0
        while not should_stop():
            done += 1
            progress(done, 10**9)
        return done

    run = BackgroundRun(work)
    assert started.wait(10)
    assert run.poll()[1] is None  # still running
    run.cancel()
    assert run.wait(10) and run.cancelled
    assert run.poll()[1][0] == "done"
