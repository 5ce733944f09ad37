"""Which slices of a propagated object to look at first.

A propagation gives an object a mask on every slice it reached, and a person checks them.
Two signals, each in relative units, point at the slices most likely wrong (measured on
the fourteen structures of the TotalSegmentator example CT, `benchmarks/review.py`): the
model's own predicted IoU for the slice, and how well the slice's mask agrees with the
masks on the slices either side of it (a mask that jumps, shrinks or grows against both
neighbours). The suspicion of a slice is their sum, (1 - predicted IoU) + (1 - the lower
Dice with a neighbour), from 0 (confident and in line with its neighbours) to 2; a slice
without a mask between slices that have one counts as 2.

Numpy only: the napari plugin's remote engine and the Slicer module use it without torch.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SliceToCheck:
    index: int  # along the slice axis
    suspicion: float  # (1 - predicted IoU) + (1 - neighbour Dice), 0 to 2
    predicted_iou: float | None  # None where the slice has no score (painted by hand)
    # the lower Dice with the object's masks on the slices either side that hold it
    neighbour_dice: float
    empty: bool = False  # no mask here, between slices that have one

    def reason(self) -> str:
        """What makes the slice suspect, in words, e.g. "predicted IoU 0.61, Dice 0.42
        with its neighbour"."""
        if self.empty:
            return "no mask, between slices that have one"
        parts = []
        if self.predicted_iou is not None:
            parts.append(f"predicted IoU {self.predicted_iou:.2f}")
        parts.append(f"Dice {self.neighbour_dice:.2f} with its neighbour")
        return ", ".join(parts)


def slices_to_check(
    labels: np.ndarray,
    object_id: int,
    axis: int,
    scores: Mapping[int, float] | np.ndarray | None = None,
    prompted: Iterable[int] = (),
    limit: int | None = 3,
) -> list[SliceToCheck]:
    """The slices of object `object_id` in the label volume `labels` to check first, most
    suspect first, at most `limit` (None: all of them).

    `scores`: the predicted IoU per slice (a `PropagationResult.scores` array, NaN where
    none, or a {slice: IoU} mapping); slices without one are judged by their neighbours
    alone. `prompted`: slices the user drew on, left out (their masks are what was asked
    for). An object on a single slice has nothing to compare with and gives no slices."""
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise ValueError(f"slices_to_check needs a 3D label volume, got shape {labels.shape}")
    mine = np.moveaxis(labels == object_id, axis % 3, 0)  # (slices, rows, columns)
    present = np.flatnonzero(mine.any(axis=(1, 2)))
    if len(present) < 2:
        return []
    lo, hi = int(present[0]), int(present[-1])
    # Only the object's own stretch is compared, cropped to its extent in the slice's
    # plane: quick on a 512 x 512 x 300 volume.
    block = mine[lo : hi + 1]
    rows = np.flatnonzero(block.any(axis=(0, 2)))
    cols = np.flatnonzero(block.any(axis=(0, 1)))
    block = block[:, rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    areas = block.sum(axis=(1, 2))
    skip = set(int(i) for i in prompted)
    ranked = []  # (sort key, slice to check)
    for offset, area in enumerate(areas):
        index = lo + offset
        if index in skip:
            continue
        if area == 0:  # a gap inside the object's stretch: the most suspect of all
            ranked.append(((-2.0, 0.0, index), SliceToCheck(index, 2.0, None, 0.0, empty=True)))
            continue
        # The neighbours that hold the object: at its first and last slice one does, and
        # an island between empty slices is compared with nothing (Dice 0).
        near = [n for n in (offset - 1, offset + 1) if 0 <= n < len(areas) and areas[n]]
        dices = [_dice(block[offset], block[n], area, areas[n]) for n in near] or [0.0]
        iou = _score(scores, index)
        suspicion = round((1.0 - min(dices)) + (0.0 if iou is None else 1.0 - iou), 6)
        # Both sides of a jump have the same lower Dice; of equally suspect slices the one
        # that disagrees with both neighbours comes first (a mask that slipped for a slice).
        key = (-suspicion, sum(dices) / len(dices), index)
        ranked.append((key, SliceToCheck(index, suspicion, iou, min(dices))))
    ranked.sort(key=lambda r: r[0])
    order = [check for _, check in ranked]
    return order if limit is None else order[:limit]


def next_to_check(ranked: list[SliceToCheck], seen: set[int]) -> tuple[int, SliceToCheck]:
    """The first slice of `ranked` (from `slices_to_check(..., limit=None)`) not in `seen`,
    with its rank from 1, noted in `seen`; once every slice was seen, from the top again.
    A viewer's "Check next" keeps `seen` per object and ranks afresh on each press, so a
    slice corrected meanwhile drops down the list."""
    if not ranked:
        raise ValueError("nothing to check: the object has labels on fewer than two slices")
    if all(c.index in seen for c in ranked):
        seen.clear()
    rank, pick = next((r, c) for r, c in enumerate(ranked, 1) if c.index not in seen)
    seen.add(pick.index)
    return rank, pick


def check_status(name: str, rank: int, total: int, pick: SliceToCheck) -> str:
    """The status line of one "Check next", the same in napari and Slicer, e.g.
    "liver: slice 12, 2nd of 28 to check: predicted IoU 0.61, Dice 0.42 with its neighbour"."""
    return f"{name}: slice {pick.index}, {ordinal(rank)} of {total} to check: {pick.reason()}"


def ordinal(n: int) -> str:
    """1st, 2nd, 3rd, 4th, … 11th, 12th, 13th, 21st."""
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _dice(a: np.ndarray, b: np.ndarray, area_a: int, area_b: int) -> float:
    total = int(area_a) + int(area_b)
    return 2.0 * int(np.count_nonzero(a & b)) / total if total else 1.0


def _score(scores, index: int) -> float | None:
    if scores is None:
        return None
    if isinstance(scores, Mapping):
        value = scores.get(index)
    else:
        value = scores[index] if 0 <= index < len(scores) else None
    if value is None or not np.isfinite(value):
        return None
    return float(min(max(value, 0.0), 1.0))
