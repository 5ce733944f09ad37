"""The prompts of a Slicer session, kept so they can be saved as the CLI's PROMPTS.json.

Slicer's markups hold only the prompt being placed; the module records every prompt it
segments with (object, slice axis, slice, prompt in IJK pixels) here. IJK is the voxel
order of the file the volume was loaded from, the order `sammed2d propagate` uses, so the
saved file replays with the CLI, `batch`, or napari's Load prompts.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from sammed2d.errors import PromptError
from sammed2d.objects import ObjectPrompts, SlicePrompt
from sammed2d.prompt_files import PromptFile


@dataclass
class PromptLog:
    axis: int | None = None
    objects: dict[int, ObjectPrompts] = field(default_factory=dict)

    def record(self, object_id: int, axis: int, index: int, prompt: SlicePrompt, name=""):
        """Keep `prompt` as object `object_id`'s prompt on slice `index` (a newer prompt on
        the same slice replaces it). A prompts file has one slice axis: prompts placed in a
        view with another axis start the log afresh for every object."""
        if prompt is None or (prompt.box is None and prompt.points is None):
            return
        if self.axis is not None and axis != self.axis:
            self.objects.clear()
        self.axis = axis
        obj = self.objects.setdefault(object_id, ObjectPrompts(object_id, {}, name=name))
        obj.slices[int(index)] = replace(prompt, mask=None)
        if name:
            obj.name = name

    def forget(self, object_id: int) -> None:
        self.objects.pop(object_id, None)

    def prompt_file(self, model=None, sha256=None, window=None, windows=None) -> PromptFile:
        """The log as a prompts file; `windows` (object id -> preset) gives objects the
        window `auto` chose for them when they were first segmented."""
        if not self.objects or self.axis is None:
            raise PromptError("no prompts yet: segment a slice first")
        windows = windows or {}
        objects = [
            replace(self.objects[k], window=windows.get(k, self.objects[k].window))
            for k in sorted(self.objects)
        ]
        return PromptFile(self.axis, objects, model=model, sha256=sha256, window=window)


def object_segment(object_id: int, name: str = ""):
    """(name, colour as 0..1 floats, Slicer terminology entry) of object `object_id`'s
    segment: anatomy it is named after gets the anatomy's colour and SNOMED CT code (the
    colours of Slicer's generic anatomy list), anything else a distinct palette colour and
    "Tissue", the same as every file the suite writes."""
    from sammed2d.seg_nrrd import terminology
    from sammed2d.segments import default_segment

    from .parameters import object_name

    segment = default_segment(int(object_id), object_name(object_id, name))
    return segment.name, tuple(c / 255 for c in segment.color), terminology(segment)
