"""What travels between `sammed2d serve` and its clients: arrays, prompts, results.

Arrays go as NumPy's .npy format, zlib-compressed, and are read back with
`allow_pickle=False`: a request can carry numbers only, never objects. Prompts and
results are JSON. Nothing here needs torch, so clients stay light.
"""

from __future__ import annotations

import base64
import hashlib
import io
import zlib
from dataclasses import asdict

import numpy as np

from .errors import ImageError, PromptError
from .objects import (
    ObjectPrompts,
    PropagationResult,
    PropagationSettings,
    SlicePrompt,
    objects_from_json,
    objects_to_json,
)

# Kinds of numbers a volume may hold (no objects, strings or structured records).
ARRAY_KINDS = "biuf"


class TooLarge(ImageError):
    """An upload or array beyond the server's limits (HTTP 413)."""


def array_digest(array: np.ndarray) -> str:
    """SHA-256 naming an array by its dtype, shape and values: a volume's identity."""
    array = np.ascontiguousarray(array)
    digest = hashlib.sha256(f"{array.dtype.str}|{array.shape}|".encode())
    digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()


def pack_array(array: np.ndarray, level: int = 1) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return zlib.compress(buffer.getbuffer(), level)


def unpack_array(data: bytes, max_bytes: int, what: str = "array") -> np.ndarray:
    """The array in `data`; TooLarge beyond `max_bytes` once decompressed, ImageError when
    it is not a plain numeric .npy."""
    inflater = zlib.decompressobj()
    try:
        raw = inflater.decompress(data, max_bytes + 1)
    except zlib.error as exc:
        raise ImageError(f"{what}: not zlib-compressed .npy data ({exc})") from None
    if len(raw) > max_bytes or inflater.unconsumed_tail:
        raise TooLarge(f"{what}: more than {max_bytes / 2**20:.0f} MiB once decompressed")
    try:
        array = np.load(io.BytesIO(raw), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ImageError(f"{what}: not a plain .npy array ({exc})") from None
    if array.dtype.kind not in ARRAY_KINDS:
        raise ImageError(f"{what}: dtype {array.dtype} is not numeric")
    return array


def encode_array(array: np.ndarray) -> str:
    """An array as text for a JSON field."""
    return base64.b64encode(pack_array(array)).decode("ascii")


def decode_array(text: str, max_bytes: int, what: str = "array") -> np.ndarray:
    try:
        data = base64.b64decode(text, validate=True)
    except (ValueError, TypeError):
        raise ImageError(f"{what}: not base64 text") from None
    return unpack_array(data, max_bytes, what)


def prompt_to_json(prompt: SlicePrompt) -> dict:
    out = {}
    if prompt.box is not None:
        out["box"] = [float(v) for v in np.asarray(prompt.box, np.float64).ravel()]
    if prompt.points is not None and len(prompt.points):
        out["points"] = np.asarray(prompt.points, np.float64).reshape(-1, 2).tolist()
        labels = np.ones(len(out["points"])) if prompt.labels is None else prompt.labels
        out["labels"] = [int(v) for v in np.asarray(labels).ravel()]
    if prompt.mask is not None:
        out["mask"] = encode_array(np.asarray(prompt.mask, bool))
    return out


def prompt_from_json(data: dict, max_bytes: int) -> SlicePrompt:
    if not isinstance(data, dict):
        raise PromptError("prompt: expected an object with box, points, labels or mask")
    try:
        box = data.get("box")
        points = data.get("points")
        labels = data.get("labels")
        if points is not None and labels is None:
            labels = [1] * len(points)
        mask = data.get("mask")
        return SlicePrompt(
            box=None if box is None else np.asarray(box, np.float64),
            points=None if points is None else np.asarray(points, np.float64),
            labels=None if labels is None else np.asarray(labels, np.int64),
            mask=None if mask is None else decode_array(mask, max_bytes, "mask").astype(bool),
        )
    except (TypeError, ValueError) as exc:
        if isinstance(exc, PromptError | ImageError):
            raise
        raise PromptError(f"prompt: malformed ({exc})") from None


def objects_to_wire(axis: int, objects: list[ObjectPrompts]) -> dict:
    """Objects as in a prompts file, plus the given masks a prompts file leaves out."""
    data = objects_to_json(axis, objects)
    for item, obj in zip(data["objects"], objects):
        for index, sp in obj.slices.items():
            if sp.mask is not None:
                item["slices"][str(int(index))]["mask"] = encode_array(np.asarray(sp.mask, bool))
    return data


def objects_from_wire(data: dict, max_bytes: int) -> tuple[int, list[ObjectPrompts]]:
    axis, objects = objects_from_json(data, frozenset({"box", "points", "labels", "mask"}))
    for item, obj in zip(data["objects"], objects):
        for key, sp in item["slices"].items():
            if isinstance(sp, dict) and sp.get("mask") is not None:
                mask = decode_array(sp["mask"], max_bytes, f"object {obj.id} slice {key} mask")
                obj.slices[int(key)].mask = mask.astype(bool)
    return axis, objects


# Settings added after the server API was first released, with their default: left out of
# a request at that value, so a server from before them still accepts it (it refuses
# settings it does not know) and walks as it did. A server that knows them takes the same
# default for a setting left out.
ADDED_SETTINGS = {"slice_step": None, "step_distance": 3.0, "overlap_tolerance": None}


def settings_to_json(settings: PropagationSettings | None) -> dict | None:
    if settings is None:
        return None
    data = asdict(settings)
    for name, unchanged in ADDED_SETTINGS.items():
        if data.get(name) == unchanged:
            del data[name]
    return data


def result_to_json(result: PropagationResult) -> dict:
    return {
        "labels": encode_array(result.labels),
        "scores": {str(k): encode_array(v) for k, v in result.scores.items()},
        "reached": {str(k): None if v is None else list(v) for k, v in result.reached.items()},
        "cancelled": bool(result.cancelled),
        "seconds": {str(k): float(v) for k, v in result.seconds.items()},
        "windows": {str(k): str(v) for k, v in result.windows.items()},
        "slice_step": int(result.slice_step),
    }


def result_from_json(data: dict, max_bytes: int) -> PropagationResult:
    return PropagationResult(
        labels=decode_array(data["labels"], max_bytes, "labels"),
        scores={int(k): decode_array(v, max_bytes, "scores") for k, v in data["scores"].items()},
        reached={int(k): None if v is None else tuple(v) for k, v in data["reached"].items()},
        cancelled=bool(data["cancelled"]),
        seconds={int(k): float(v) for k, v in data["seconds"].items()},
        windows={int(k): str(v) for k, v in data.get("windows", {}).items()},
        slice_step=int(data.get("slice_step", 1)),
    )
