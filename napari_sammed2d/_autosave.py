"""Auto-save of the labels layer to a file the user picks, written off the GUI thread.

napari saves nothing by itself, and a crash loses every mask drawn since the last save.
Auto-save is off until the user names a file (a scan's labels are patient data: nothing is
written where they did not ask). The GUI thread only hands over the live array and its
names every few seconds; a thread of its own fingerprints it and writes it, through a
temporary file renamed into place, only where it differs from what the file holds.

The array is read while the viewer may be writing to it: no copy of a 512 x 512 x 300
volume on the GUI thread. A save that overlapped an edit can hold part of that edit; its
fingerprint then differs from the next offer's, so the next save writes the finished state.
"""

from __future__ import annotations

import atexit
import threading
import time
import weakref
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from sammed2d.errors import NothingToWrite, SamMed2DError

from ._session import Latest

# What the labels writer (napari_sammed2d._io.write_labels_layer) can write.
SUFFIXES = (".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".mha", ".dcm")


def checked_path(path) -> Path:
    """`path` as a file auto-save can write, or a one-line error saying why not."""
    path = Path(path).expanduser()
    name = path.name.lower()
    if not any(name.endswith(s) for s in SUFFIXES):
        raise SamMed2DError(
            f"auto-save to {path.name}: choose a file ending in {', '.join(SUFFIXES)}"
        )
    if not path.parent.is_dir():
        raise SamMed2DError(f"auto-save to {path}: the folder {path.parent} does not exist")
    return path


def prompts_beside(path) -> Path:
    """Where auto-save keeps the prompts of labels auto-saved to `path`: NAME.prompts.json
    beside NAME.seg.nrrd (or .nii.gz, .dcm…)."""
    path = Path(path)
    name = path.name
    for suffix in sorted(SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return path.with_name(f"{name}.prompts.json")


def fingerprint(data: np.ndarray, meta: dict) -> tuple:
    """What decides whether the file is up to date: the voxels (CRC-32, which runs without
    Python's lock), their shape and type, and the names, colours and geometry written with
    them."""
    array = np.ascontiguousarray(data)
    crc = zlib.crc32(memoryview(array).cast("B")) if array.size else 0
    info = (meta.get("metadata") or {}).get("sammed2d") or {}
    features = meta.get("features")
    names = None
    if features is not None and "name" in features:
        names = tuple(map(str, features["name"]))
    return (
        crc,
        array.shape,
        str(array.dtype),
        repr(info.get("segments")),
        names,
        tuple(np.asarray(meta.get("scale", ()), float).tolist()),
        tuple(map(str, meta.get("units") or ())),
    )


class AutoSave:
    """One thread that writes the newest offered labels to `path` when they changed.

    `write(path, data, meta)` writes the file (atomically); `notify` gets ("saved", path),
    ("empty", path) where the file type cannot hold labels with no object, or ("error",
    text) from the saving thread (the widget relays it to the GUI thread).
    """

    def __init__(
        self,
        write: Callable[[str, np.ndarray, dict], object],
        notify: Callable[[tuple], None] = lambda message: None,
    ) -> None:
        self._write = write
        self._notify = notify
        self._mailbox = Latest()
        self._written = None  # (path, fingerprint) the file holds
        self._stopping = False
        self._thread = None
        self.saves = 0  # files written (what tests and the status line count)
        # The saving thread is a daemon (it must not keep napari from quitting), so an
        # exit waits here for what is pending rather than cutting a write short.
        atexit.register(_stop_at_exit, weakref.ref(self))

    def offer(self, path, data: np.ndarray, meta: dict) -> None:
        """Hand over the labels as they are now (GUI thread; returns at once)."""
        if self._thread is None:
            self._stopping = False
            self._thread = threading.Thread(target=self._serve, name="autosave", daemon=True)
            self._thread.start()
        self._mailbox.put((str(path), data, meta))

    def flush(self, timeout: float = 60.0) -> bool:
        """Wait until every offer so far is written (or found unchanged); False on timeout."""
        end = time.monotonic() + timeout
        while self._mailbox.busy and time.monotonic() < end:
            time.sleep(0.01)
        return not self._mailbox.busy

    def stop(self, timeout: float = 60.0) -> None:
        """Write what is pending, then end the thread."""
        self.flush(timeout)
        self._stopping = True
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _serve(self) -> None:
        while not self._stopping:
            item = self._mailbox.take(0.1)
            if item is None:
                continue
            path, data, meta = item
            try:
                key = (path, fingerprint(data, meta))
                if key != self._written:
                    self._write(path, data, meta)
                    self._written = key
                    self.saves += 1
                    self._notify(("saved", path))
            except NothingToWrite:
                # A DICOM SEG of no segment: not a failure, only nothing to keep yet. The
                # file keeps what it held; the first mask is written.
                self._notify(("empty", path))
            except Exception as exc:  # noqa: BLE001 - reported; the next offer tries again
                self._notify(("error", f"auto-save to {Path(path).name} failed: {exc}"))
            finally:
                self._mailbox.done()


def _stop_at_exit(ref) -> None:
    saver = ref()
    if saver is not None:
        saver.stop()
