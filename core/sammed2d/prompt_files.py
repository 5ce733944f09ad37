"""PROMPTS.json as a record of a session: the prompts plus what is needed to replay them.

    {"axis": 2, "objects": [...],                       # as `objects_from_json` reads
     "model": {"name": "litemedsam", "sha256": "..."},  # the weights the labels came from
     "window": "abdomen",                                # intensity preset
     "channel": 1,                                       # the volume of a 4D file
     "settings": {"box_margin": 5.0, ...},               # PropagationSettings
     "sammed2d": "0.2.0"}                                # the version that wrote it

napari, the Slicer module and the CLI write and read this same file, so an interactive
session replays with `sammed2d propagate` or `batch` into the same labels. Everything but
"objects" is optional (files written by hand or by earlier releases keep working).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from .errors import PromptError
from .intensity import WINDOW_WORDS, is_window
from .io import atomic_write
from .objects import (
    ObjectPrompts,
    PropagationSettings,
    check_settings,
    objects_from_json,
    objects_to_json,
)


@dataclass
class PromptFile:
    axis: int
    objects: list[ObjectPrompts]
    model: str | None = None  # registry name or checkpoint file name
    sha256: str | None = None
    window: str | None = None
    settings: PropagationSettings = field(default_factory=PropagationSettings)
    version: str | None = None
    channel: int | None = None  # which volume of a 4D image the prompts were placed on


# Settings that later releases turned on, with the value that reproduces what a release
# before them did: a file one of those wrote records every setting it had but not these.
TURNED_ON_LATER = {
    "box_margin_max": None,
    "intensity_band": None,
    "split_gap": None,
    "box_agreement": None,
    "slice_step": 1,
    "step_distance": None,
    "join_parts": False,
    "compose_by": "score",  # a default changed later: overlaps went to the higher IoU
    "interpolate_drawn": None,
}


def settings_from_json(data, where: str, written_by_release: bool = False) -> PropagationSettings:
    """`written_by_release`: the file names the version that wrote it, so a setting it does
    not record did not exist then and replays as it behaved (`TURNED_ON_LATER`); in files
    written by hand a missing setting takes today's default."""
    if data is None:
        return PropagationSettings()
    if not isinstance(data, dict):
        raise PromptError(f"{where}: settings must be an object")
    known = {f.name: f.type for f in fields(PropagationSettings)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise PromptError(f"{where}: unknown propagation setting(s) {', '.join(unknown)}")
    if written_by_release:
        data = {**TURNED_ON_LATER, **data}
    settings = PropagationSettings(**data)
    try:
        check_settings(settings)
    except PromptError as exc:
        raise PromptError(f"{where}: {exc}") from None
    return settings


def prompt_file_from_json(data, where: str = "prompts") -> PromptFile:
    try:
        axis, objects = objects_from_json(data)
    except PromptError as exc:
        # objects_from_json names the file kind ("prompts: ..."); `where` names the file
        message = str(exc).removeprefix("prompts: ")
        raise PromptError(f"{where}: {message}") from None
    model = data.get("model") or {}
    if isinstance(model, str):
        model = {"name": model}
    window = data.get("window")
    if window is not None and not is_window(window):
        raise PromptError(f"{where}: window {window!r} is not {WINDOW_WORDS}")
    channel = data.get("channel")
    if isinstance(channel, float) and channel.is_integer():  # 1.0 written by hand
        channel = int(channel)
    if channel is not None and (
        isinstance(channel, bool) or not isinstance(channel, int) or channel < 0
    ):
        raise PromptError(f"{where}: channel {channel!r} is not a whole number from 0")
    return PromptFile(
        axis,
        objects,
        model=model.get("name"),
        sha256=model.get("sha256"),
        window=window,
        settings=settings_from_json(data.get("settings"), where, "sammed2d" in data),
        version=data.get("sammed2d"),
        channel=channel,
    )


def prompt_file_to_json(record: PromptFile) -> dict:
    from . import __version__

    data = objects_to_json(record.axis, record.objects)
    if record.model is not None or record.sha256 is not None:
        data["model"] = {"name": record.model, "sha256": record.sha256}
    if record.window is not None:
        data["window"] = record.window
    if record.channel is not None:
        data["channel"] = record.channel
    data["settings"] = asdict(record.settings)
    data["sammed2d"] = __version__
    return data


def read_prompt_file(path: str | os.PathLike) -> PromptFile:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PromptError(f"prompts {path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PromptError(f"prompts {path}: malformed JSON ({exc})") from None
    return prompt_file_from_json(data, f"prompts {path}")


def prompt_file_text(record: PromptFile) -> str:
    """A prompts file's contents, as `write_prompt_file` writes them."""
    return json.dumps(prompt_file_to_json(record), indent=1) + "\n"


def write_prompt_file(path: str | os.PathLike, record: PromptFile) -> Path:
    text = prompt_file_text(record)
    return atomic_write(Path(path), lambda tmp: Path(tmp).write_text(text))


def model_record(model) -> tuple[str, str | None]:
    """(name, sha256) of a loaded model: the registry name, or the checkpoint's file name."""
    name = model.spec.name
    path = getattr(model, "weights_path", None)
    from .models import SPECS, weights_path

    if name not in SPECS or (path and weights_path(name) != Path(path)):
        name = Path(path).name if path else name
    sha = getattr(model, "weights_id", None)
    return name, None if sha in (None, "random") else sha
