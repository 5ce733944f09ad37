"""Model work off Slicer's GUI thread.

The thread runs only NumPy and the engine: it never touches MRML, VTK or Qt objects, which
belong to the GUI thread. The module polls from a `qt.QTimer` and applies the result on the
GUI thread, so Slicer stays responsive and nothing in the scene changes under the user's
hands while the model runs.
"""

from __future__ import annotations

import threading
import traceback


class BackgroundRun:
    """`work(progress, should_stop)` in a daemon thread; `poll()` from the GUI thread."""

    def __init__(self, work, name: str = "SAM-Med2D") -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._progress: tuple[int, int] | None = None
        self._outcome: tuple | None = None  # ("done", result) or ("error", exc, text)
        self._thread = threading.Thread(target=self._run, args=(work,), name=name, daemon=True)
        self._thread.start()

    def _run(self, work) -> None:
        try:
            result = work(self._report, self._stop.is_set)
        except BaseException as exc:  # noqa: BLE001 - every failure goes back to the GUI
            outcome = ("error", exc, traceback.format_exc())
        else:
            outcome = ("done", result)
        with self._lock:
            self._outcome = outcome

    def _report(self, done: int, total: int) -> None:
        with self._lock:
            self._progress = (int(done), int(total))

    def cancel(self) -> None:
        """Ask the work to stop at its next check; `poll` still reports how it ended."""
        self._stop.set()

    @property
    def cancelled(self) -> bool:
        return self._stop.is_set()

    def poll(self):
        """(progress (done, total) or None, outcome or None). The outcome is
        ("done", result) or ("error", exception, traceback text) once the work has ended."""
        with self._lock:
            return self._progress, self._outcome

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the work has ended (for scripts and tests; the GUI polls)."""
        self._thread.join(timeout)
        return not self._thread.is_alive()
