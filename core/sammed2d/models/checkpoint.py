"""Reading checkpoint files without trusting them.

Checkpoints are untrusted input: a pickle can run any code it names. We load with
`weights_only=True` and allow exactly the extra globals of the official SAM-Med2D layout:
the Adam optimizer it carries next to its weights and the defaultdict holding that
optimizer's state, each mapped to an inert stand-in that keeps nothing.

`weights_only=True` has known bypasses before torch 2.10 (CVE-2025-32434, CVE-2026-24747):
on an older torch only files whose SHA-256 the caller has verified are read.
"""

from __future__ import annotations

import contextlib
import hashlib
import pickle
import re
from pathlib import Path

import torch

from ..errors import CheckpointError


class _DiscardedOptimizer:
    """Stands in for `torch.optim.adam.Adam` while unpickling; its state is dropped unread."""

    def __setstate__(self, state) -> None:
        pass


def _plain_dict(default_factory=None) -> dict:
    """Stands in for `collections.defaultdict`, which holds the optimizer's state."""
    return {}


_OFFICIAL_EXTRA_GLOBALS = [
    (_DiscardedOptimizer, "torch.optim.adam.Adam"),
    (_plain_dict, "collections.defaultdict"),
    dict,  # the defaultdict's factory
]


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


SAFE_TORCH = (2, 10)


def torch_version() -> tuple[int, int]:
    major, minor = re.match(r"(\d+)\.(\d+)", torch.__version__).groups()
    return int(major), int(minor)


def require_file(path: str | Path) -> Path:
    """`path` as a Path; a one-line CheckpointError unless it is an existing file."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path}: file not found")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path}: not a file")
    return path


def read_state_dict(path: str | Path, verified: bool = False) -> dict[str, torch.Tensor]:
    """The weights in `path`, as a flat {name: tensor} dict on the CPU.

    Accepts a bare state dict, or a dict holding it under `model` or `state_dict` (the
    official SAM-Med2D layout). Raises CheckpointError with a one-line reason otherwise.
    `verified`: the caller checked the file's SHA-256 against a known official file, so it
    may be read on a torch older than `SAFE_TORCH`.
    """
    path = require_file(path)
    if not verified and torch_version() < SAFE_TORCH:
        raise CheckpointError(
            f"checkpoint {path}: torch {torch.__version__} cannot load an unverified checkpoint "
            f"safely (weights_only has known bypasses before {SAFE_TORCH[0]}.{SAFE_TORCH[1]}); "
            f"install torch>={SAFE_TORCH[0]}.{SAFE_TORCH[1]}"
        )
    _check_kind(path)
    allow = getattr(torch.serialization, "safe_globals", None)
    try:
        with allow(_OFFICIAL_EXTRA_GLOBALS) if allow else contextlib.nullcontext():
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        if found:
            raise CheckpointError(
                f"checkpoint {path}: refused to unpickle {found.group(1)}; a weights file needs "
                "only tensors and plain containers"
            ) from None
        raise CheckpointError(
            f"checkpoint {path}: unreadable pickle ({_first_line(exc)})"
        ) from None
    except Exception as exc:  # noqa: BLE001 - garbage input breaks the unpickler in many ways
        raise CheckpointError(
            f"checkpoint {path}: not a readable PyTorch file, truncated or corrupt "
            f"({_first_line(exc)})"
        ) from None
    state = _state_dict_of(obj)
    if state is None:
        raise CheckpointError(
            f"checkpoint {path}: expected a state dict (name -> tensor), found {type(obj).__name__}"
        )
    if all(k.startswith("module.") for k in state):
        # Saved from DataParallel: the same weights under a prefix.
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def _state_dict_of(obj, depth: int = 3) -> dict[str, torch.Tensor] | None:
    """The tensors dict, bare or at most `depth` levels down under `model` / `state_dict`."""
    for _ in range(depth + 1):
        if not isinstance(obj, dict):
            return None
        inner = next(
            (obj[k] for k in ("model", "state_dict") if isinstance(obj.get(k), dict)), None
        )
        if inner is None:
            break
        obj = inner
    if obj and all(isinstance(k, str) and torch.is_tensor(v) for k, v in obj.items()):
        return dict(obj)
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    if not text:
        return type(exc).__name__
    # torch's messages go on to advice about its own internals ("This is an internal miniz
    # error. If you are seeing...", "In PyTorch 2.6, we changed..."): their first sentence
    # is the reason.
    first = text[0].split(". ")[0].rstrip(".")
    return first[:160]


def _check_kind(path: Path) -> None:
    """A one-line CheckpointError unless `path` begins as a PyTorch file does (a zip
    archive, or a pickle for the format before torch 1.6). The common wrong file is a web
    page saved in place of a download, whose reason torch gives as "Weights only load
    failed" followed by advice about `weights_only`."""
    with open(path, "rb") as f:
        head = f.read(64)
    if not head:
        raise CheckpointError(f"checkpoint {path}: the file is empty (an interrupted download?)")
    if head.startswith(b"PK") or head[:1] == b"\x80":
        return
    text = head.decode("utf-8", errors="replace")
    readable = sum(c != "\ufffd" and (c.isprintable() or c in "\r\n\t") for c in text)
    if readable >= 0.9 * len(text):
        begins = " ".join(text.split())[:40]
        raise CheckpointError(
            f"checkpoint {path}: a text file, not PyTorch weights (it begins {begins!r}; a web "
            "page saved in place of the download?)"
        )
    raise CheckpointError(
        f"checkpoint {path}: not a PyTorch file (neither a zip archive nor a pickle): corrupt, "
        "or not a checkpoint"
    )
