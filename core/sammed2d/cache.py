"""Image embeddings kept in memory (an LRU bounded in bytes) and optionally on disk.

A key is a hash of the model input, the model's name and weights, and this package's
version, so an entry can never be served to another model, image or release. Disk entries
are written to a temporary file and renamed into place; an unreadable or mismatched entry
counts as a miss and is recomputed.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from . import __version__
from .io import publish_mode


def embedding_key(model_input: torch.Tensor, model) -> str:
    """Hex digest naming the embedding of `model_input` (1, 3, S, S) under `model`'s image
    encoder: models that differ only past the encoder (a fine-tuned decoder) share it."""
    digest = hashlib.sha256()
    digest.update(f"{model.spec.name}|{model.encoder_id}|{__version__}|".encode())
    precision = getattr(model, "precision", "fp32")
    if precision != "fp32":  # fp32 keys stay as they were: existing caches remain valid
        digest.update(f"{precision}|".encode())
    data = model_input.detach().to("cpu", torch.float32).contiguous().numpy()
    digest.update(str(data.shape).encode())
    digest.update(data.tobytes())
    return digest.hexdigest()


class EmbeddingCache:
    """Thread-safe LRU of embeddings; `folder` adds a persistent store on disk.

    `fp16=True` stores half-precision copies (half the memory and disk; the decoder still
    runs in fp32). Values come back on the CPU as float32 tensors.
    """

    def __init__(
        self, max_bytes: int = 1 << 30, folder: str | os.PathLike | None = None, fp16: bool = False
    ) -> None:
        self.max_bytes = int(max_bytes)
        self.folder = Path(folder) if folder is not None else None
        self.fp16 = fp16
        self._items: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = 0
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: str) -> bool:
        return key in self._items or (self.folder is not None and self._path(key).exists())

    def get(self, key: str) -> torch.Tensor | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
        if value is None and self.folder is not None:
            value = self._read(key)
            if value is not None:
                self._remember(key, value)
        if value is None:
            self.misses += 1
            return None
        self.hits += 1
        return value.float()

    def put(self, key: str, embedding: torch.Tensor) -> None:
        value = embedding.detach().to("cpu")
        value = value.half() if self.fp16 else value.float()
        self._remember(key, value)
        if self.folder is not None:
            self._write(key, value)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0

    def _remember(self, key: str, value: torch.Tensor) -> None:
        size = value.numel() * value.element_size()
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old.numel() * old.element_size()
            if size > self.max_bytes:
                return
            self._items[key] = value
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, evicted = self._items.popitem(last=False)
                self._bytes -= evicted.numel() * evicted.element_size()

    def _path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.npz"

    def _write(self, key: str, value: torch.Tensor) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        publish_mode(fd)
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, key=np.frombuffer(key.encode(), np.uint8), embedding=value.numpy())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def _read(self, key: str) -> torch.Tensor | None:
        path = self._path(key)
        if not path.exists():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                if data["key"].tobytes().decode() != key:
                    return None
                array = data["embedding"]
        except Exception:  # noqa: BLE001 - any unreadable entry is simply recomputed
            return None
        if array.ndim == 4:
            # Held in memory as the decoder reads it (predictor.token_major; a copy), so later
            # hits on this entry need no conversion.
            return torch.from_numpy(array).contiguous(memory_format=torch.channels_last)
        return torch.from_numpy(array.copy())
