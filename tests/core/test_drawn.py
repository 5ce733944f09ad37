"""Drawn slices told apart from the slices a run wrote (`sammed2d.drawn`)."""

from __future__ import annotations

import numpy as np

from sammed2d.drawn import DrawnSlices, labelled_slices


def _labels():
    labels = np.zeros((6, 10, 12), np.uint8)
    labels[:, 2:5, 1] = 2  # another object on every slice of axis 2 but the last
    labels[3:6, 4:8, 0] = 1
    labels[3:6, 4:8, 4] = 1
    return labels


def test_labelled_slices_along_any_axis():
    labels = _labels()
    assert labelled_slices(labels, 1, 2).tolist() == [0, 4]
    assert labelled_slices(labels, 1, 0).tolist() == [3, 4, 5]
    assert labelled_slices(labels, 7, 1).size == 0


def test_a_slice_a_run_wrote_is_not_a_drawing_until_it_is_changed():
    labels = _labels()
    drawn = DrawnSlices()
    drawn.start("liver", labelled_slices(labels, 1, 2))
    assert drawn.slices("liver") == {0, 4}
    labels[3:6, 4:8, 1:4] = 1  # the run filled the slices between
    drawn.note_landed("liver", labels, 1, 2)
    assert drawn.note_painted("liver", labels, 1, 2) == {0, 4}  # nothing painted since
    labels[0:2, 0:2, 2] = 1  # a stroke on slice 2
    labels[5, 4:8, 8] = 1  # and on a slice no run wrote
    assert drawn.note_painted("liver", labels, 1, 2) == {0, 2, 4, 8}
    # Another object's pixels do not touch this one's record.
    labels[0, 0, 3] = 2
    assert drawn.note_painted("liver", labels, 1, 2) == {0, 2, 4, 8}


def test_an_untracked_object_has_no_drawn_slices():
    labels = _labels()
    drawn = DrawnSlices()
    assert drawn.note_painted("kidney", labels, 1, 2) == set()
    assert "kidney" not in drawn and drawn.seeds("kidney", labels, 1, 2) == {}


def test_a_click_tracks_an_object_and_everything_else_labelled_is_drawn():
    labels = _labels()
    drawn = DrawnSlices()
    clicked = np.zeros((6, 10), bool)
    clicked[1:3, 1:3] = True
    labels[..., 2][clicked] = 1
    drawn.note_slice("liver", 2, clicked)
    assert "liver" in drawn and drawn.slices("liver") == set()
    # Slices 0 and 4 were there before any run: drawings; the clicked slice is the model's.
    assert drawn.note_painted("liver", labels, 1, 2) == {0, 4}
    drawn.note_slice("liver", 4, labels[..., 4] == 1)  # a click replaces a drawn slice
    assert drawn.slices("liver") == {0}


def test_seeds_read_the_drawn_masks_as_they_are_now_and_forget_cleared_slices():
    labels = _labels()
    drawn = DrawnSlices()
    drawn.start(1, [0, 4, 9])  # 9 lies past the end: forgotten
    labels[3, 4, 4] = 0  # painted over after the start
    seeds = drawn.seeds(1, labels, 1, 2, skip={0})
    assert list(seeds) == [4]
    assert seeds[4].box is None and np.array_equal(seeds[4].mask, labels[..., 4] == 1)
    assert drawn.slices(1) == {0, 4}
    labels[..., 0] = 0  # slice 0 erased
    assert list(drawn.seeds(1, labels, 1, 2)) == [4] and drawn.slices(1) == {4}
    drawn.discard(1, 4)
    assert drawn.slices(1) == set()
    drawn.forget(1)
    assert 1 not in drawn
