"""Which slices of an object a person drew, told apart from those a run of the model wrote.

A viewer that lets a person paint an object's labels and propagate it keeps one
`DrawnSlices`. Drawn slices are taken as given by every later run (`seeds`); a slice a run
wrote is not taken for a drawing unless the person changed it since. What a run left is
remembered per slice as a CRC of the object's mask there, so telling the two apart costs a
pass over the labelled slices, not a copy of the volume.

Objects are keyed by whatever the front end names them by (napari: the label value;
Slicer: the segmentation, segment, volume and slice axis). A key is tracked once a run
landed for it (`note_landed`, `note_slice`) or its drawn slices were set (`start`); for a
tracked key every labelled slice whose mask differs from what the last run left is a
drawing, including slices no run ever wrote.
"""

from __future__ import annotations

import zlib
from collections.abc import Hashable, Iterable

import numpy as np

from .objects import SlicePrompt
from .orientation import slice_of


def labelled_slices(labels: np.ndarray, value, axis: int) -> np.ndarray:
    """Indices along `axis` of the slices where `labels` holds `value`."""
    others = tuple(a for a in range(labels.ndim) if a != axis)
    return np.flatnonzero(np.any(labels == value, axis=others))


def mask_crc(mask: np.ndarray) -> int:
    return zlib.crc32(np.packbits(np.asarray(mask, bool)))


class DrawnSlices:
    def __init__(self) -> None:
        self._drawn: dict[Hashable, set[int]] = {}
        self._landed: dict[Hashable, dict[int, int]] = {}

    def __contains__(self, key) -> bool:
        return key in self._drawn

    def keys(self) -> list:
        return list(self._drawn)

    def slices(self, key) -> set[int]:
        """The drawn slices of `key` (empty if none or untracked)."""
        return set(self._drawn.get(key, ()))

    def start(self, key, indices: Iterable[int]) -> None:
        """Track `key` with `indices` as its drawn slices and nothing landed yet."""
        self._drawn[key] = {int(i) for i in indices}
        self._landed[key] = {}

    def note_painted(self, key, labels: np.ndarray, value, axis: int) -> set[int]:
        """Slices of a tracked `key` whose mask changed since the last run landed join its
        drawn slices (they become the new reference); returns its drawn slices."""
        if key not in self._drawn:
            return set()
        now = self._crcs(labels, value, axis)
        landed = self._landed.get(key, {})
        self._drawn[key] |= {i for i, crc in now.items() if landed.get(i) != crc}
        self._landed[key] = now
        return set(self._drawn[key])

    def note_landed(self, key, labels: np.ndarray, value, axis: int, present=None) -> None:
        """What a run left for `key` (tracked from now on): later changes are drawings.
        `present`: the labelled slices, where the caller has them already."""
        self._drawn.setdefault(key, set())
        self._landed[key] = self._crcs(labels, value, axis, present)

    def note_slice(self, key, index: int, mask: np.ndarray) -> None:
        """A run wrote `mask` on slice `index` alone (a click): that slice is the model's now,
        not a drawing; the key is tracked from now on."""
        self._drawn.setdefault(key, set()).discard(int(index))
        self._landed.setdefault(key, {})[int(index)] = mask_crc(mask)

    def seeds(self, key, labels: np.ndarray, value, axis: int, skip=()) -> dict[int, SlicePrompt]:
        """`key`'s drawn slices (not in `skip`) as given masks, read from `labels` as they
        are now; a drawn slice since cleared of the object is forgotten."""
        seeds = {}
        n = labels.shape[axis]
        for index in sorted(self._drawn.get(key, ())):
            mask = slice_of(labels, index, axis) == value if index < n else None
            if mask is None or not mask.any():
                self._drawn[key].discard(index)
            elif index not in skip:
                seeds[index] = SlicePrompt(mask=np.array(mask))
        return seeds

    def discard(self, key, index: int) -> None:
        self._drawn.get(key, set()).discard(int(index))

    def forget(self, key) -> None:
        self._drawn.pop(key, None)
        self._landed.pop(key, None)

    def clear(self) -> None:
        self._drawn.clear()
        self._landed.clear()

    @staticmethod
    def _crcs(labels, value, axis, present=None) -> dict[int, int]:
        if present is None:
            present = labelled_slices(labels, value, axis)
        return {int(i): mask_crc(slice_of(labels, int(i), axis) == value) for i in present}
