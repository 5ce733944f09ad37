"""Keep freed activation memory in the process for reuse (glibc only).

With glibc's defaults, every tensor above a few MB is an mmap of its own, and freed memory at
the top of the heap goes back to the OS. The next forward pass then faults every page in
again: LiteMedSAM's 256 x 256 x 256 activations cost ~400,000 page faults per slice, close
to half its CPU encoder time, and the mask decoder a fifth of its time. Raising both
thresholds lets malloc hand the same pages back on the next call, as jemalloc or tcmalloc
would. The price: up to `KEEP_BYTES` of freed memory stays with the process.

The command line and batch workers apply it once, before their first model: they own their
process. A host application (napari, 3D Slicer) shares its process with everything else, so
the plugins leave malloc alone unless the user sets `SAMMED2D_TUNE_MALLOC=1`.
`SAMMED2D_TUNE_MALLOC=0` leaves malloc alone everywhere.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

KEEP_BYTES = 1 << 30
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_applied: bool | None = None


def tuning_wanted_in_host() -> bool:
    """Whether a plugin inside a host application should apply the tuning (opt-in)."""
    return os.environ.get("SAMMED2D_TUNE_MALLOC") == "1"


def reuse_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds once per process; True if they are raised."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if not sys.platform.startswith("linux") or os.environ.get("SAMMED2D_TUNE_MALLOC") == "0":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other C libraries have no mallopt
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    _applied = bool(mallopt(_M_MMAP_THRESHOLD, KEEP_BYTES)) and bool(
        mallopt(_M_TRIM_THRESHOLD, KEEP_BYTES)
    )
    return _applied
