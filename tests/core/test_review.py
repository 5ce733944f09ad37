"""Slices to check after a propagation (`sammed2d.review`)."""

from __future__ import annotations

import numpy as np
import pytest

from sammed2d.review import check_status, next_to_check, ordinal, slices_to_check


def disc_volume(n=10, slipped=None, gap=None, shrunk=None):
    """(40, 40, n) labels: object 2 a disc of radius 8 on every slice; on `slipped` it sits
    12 px to the side, on `gap` it is missing, on `shrunk` it has radius 3."""
    yy, xx = np.mgrid[:40, :40]
    labels = np.zeros((40, 40, n), np.uint8)
    for z in range(n):
        cy, cx, r = 20, 20, 8
        if z == slipped:
            cx = 32
        if z == shrunk:
            r = 3
        if z != gap:
            labels[:, :, z][(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 2
    return labels


def test_a_slipped_mask_is_checked_first_and_prompted_slices_are_left_out():
    labels = disc_volume(slipped=6)
    first = slices_to_check(labels, 2, axis=2, prompted={4})
    assert [c.index for c in first] == [6, 5, 7]  # the slip, then the slices beside it
    assert first[0].neighbour_dice < 0.5 and first[0].predicted_iou is None
    assert "Dice" in first[0].reason()
    everything = slices_to_check(labels, 2, axis=2, prompted={4}, limit=None)
    assert 4 not in [c.index for c in everything] and len(everything) == 9
    # a slipped mask on the prompted slice itself is what the user drew: not listed
    assert 6 not in [c.index for c in slices_to_check(labels, 2, 2, prompted={6}, limit=None)]


def test_the_models_own_doubt_breaks_ties_and_ranks_alone_where_shapes_agree():
    labels = disc_volume()  # every slice the same disc: only the scores differ
    scores = np.full(10, 0.95, np.float32)
    scores[3], scores[8] = 0.40, np.nan  # 8: no score (a slice painted by hand)
    ranked = slices_to_check(labels, 2, 2, scores, limit=None)
    assert ranked[0].index == 3 and ranked[0].predicted_iou == pytest.approx(0.40)
    assert "predicted IoU 0.40" in ranked[0].reason()
    unscored = next(c for c in ranked if c.index == 8)
    assert unscored.predicted_iou is None and unscored.suspicion == pytest.approx(0.0)
    # a mapping does as well as an array
    assert slices_to_check(labels, 2, 2, {3: 0.4}, limit=1)[0].index == 3


def test_a_gap_and_a_shrunk_mask_are_found():
    gap = slices_to_check(disc_volume(gap=5), 2, 2, limit=1)[0]
    assert gap.index == 5 and gap.empty and gap.suspicion == 2.0
    assert gap.reason() == "no mask, between slices that have one"
    shrunk = slices_to_check(disc_volume(shrunk=2), 2, 2, limit=3)
    assert shrunk[0].index == 2 and shrunk[0].neighbour_dice < 0.4


def test_ends_are_compared_with_their_one_neighbour_and_other_objects_are_ignored():
    labels = disc_volume()
    labels[:20, :20, :] = np.where(labels[:20, :20, :] == 0, 7, labels[:20, :20, :])
    checked = slices_to_check(labels, 2, 2, limit=None)
    # the disc is the same on every slice: nothing suspect, ends included
    assert all(c.suspicion == pytest.approx(0.0) for c in checked)
    assert [c.index for c in checked] == list(range(10))  # ties in slice order


def test_the_slice_axis_is_any_axis():
    labels = disc_volume(slipped=6)
    moved = np.moveaxis(labels, 2, 0)
    assert [c.index for c in slices_to_check(moved, 2, axis=0)] == [6, 5, 7]
    assert [c.index for c in slices_to_check(moved, 2, axis=-3)] == [6, 5, 7]


def test_nothing_to_compare_gives_nothing_and_a_2d_volume_is_refused():
    one = np.zeros((20, 20, 5), np.uint8)
    one[5:10, 5:10, 2] = 1
    assert slices_to_check(one, 1, 2) == []
    assert slices_to_check(one, 9, 2) == []  # an object with no labels
    with pytest.raises(ValueError, match="3D label volume"):
        slices_to_check(np.zeros((20, 20), np.uint8), 1, 0)


def test_check_next_visits_every_slice_most_suspect_first_then_starts_again():
    ranked = slices_to_check(disc_volume(n=5, slipped=2), 2, axis=2, prompted={0}, limit=None)
    seen: set[int] = set()
    visits = [next_to_check(ranked, seen) for _ in range(len(ranked) + 1)]
    assert [rank for rank, _ in visits] == [1, 2, 3, 4, 1]  # wraps after the last
    assert [pick.index for _, pick in visits][:4] == [c.index for c in ranked]
    assert visits[0][1].index == 2  # the slip first
    # a slice already seen is skipped even when a fresh ranking puts it first again
    seen = {2}
    assert next_to_check(ranked, seen)[1].index != 2 and len(seen) == 2
    rank, pick = visits[0]
    line = check_status("liver", rank, len(ranked), pick)
    assert line.startswith("liver: slice 2, 1st of 4 to check: Dice ")
    assert [ordinal(n) for n in (1, 2, 3, 4, 11, 12, 13, 21, 22, 111)] == [
        "1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "111th",
    ]  # fmt: skip
    with pytest.raises(ValueError, match="nothing to check"):
        next_to_check([], set())
