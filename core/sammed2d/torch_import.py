"""Import torch from a worker thread without freezing the host's GUI thread.

Mapping torch's shared libraries takes 0.2-0.7 s of dynamic linking, and Python's import
machinery holds Python's lock (the GIL) throughout, so a host's GUI thread (napari's, whose
engine loads in a worker thread) cannot run meanwhile. A foreign call through ctypes
releases the lock, so the C library's own dlopen, called that way, maps the libraries while
the GUI thread goes on; `import torch` then finds them loaded and only runs Python code,
which yields the lock every few milliseconds (`benchmarks/torch_import.py` prints both
stalls).
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import sys

# Dependencies first, so that each call maps one large library.
_LIBRARIES = ("c10", "torch_cpu", "c10_cuda", "torch_cuda", "torch", "torch_python")


def library_dir() -> str | None:
    """torch's `lib` folder, found without importing torch."""
    spec = importlib.util.find_spec("torch")
    if spec is None or spec.origin is None:
        return None
    return os.path.join(os.path.dirname(spec.origin), "lib")


def preload_libraries() -> list[str]:
    """Map torch's shared libraries with Python's lock released; returns the paths mapped.

    Does nothing once torch is imported, off Linux and macOS, or where a library is
    missing or will not load (a CUDA build without its CUDA libraries): the import that
    follows then loads them itself, as it always has."""
    if "torch" in sys.modules or not sys.platform.startswith(("linux", "darwin")):
        return []
    folder = library_dir()
    if folder is None:
        return []
    suffix = ".dylib" if sys.platform == "darwin" else ".so"
    try:
        libc = ctypes.CDLL(None)
        dlopen = libc.dlopen
    except (OSError, AttributeError):
        return []
    dlopen.restype = ctypes.c_void_p
    dlopen.argtypes = [ctypes.c_char_p, ctypes.c_int]
    # RTLD_LOCAL as Python's own import would: torch's __init__ still decides what is
    # global (glibc promotes an already mapped library when a global load needs it).
    flags = os.RTLD_NOW | os.RTLD_LOCAL
    mapped = []
    for name in _LIBRARIES:
        path = os.path.join(folder, f"lib{name}{suffix}")
        # The handle is never closed: the library stays mapped for torch's import.
        if os.path.isfile(path) and dlopen(os.fsencode(path), flags):
            mapped.append(path)
    return mapped


def import_torch():
    """`import torch`, with its libraries mapped first without holding Python's lock."""
    preload_libraries()
    import torch

    return torch
