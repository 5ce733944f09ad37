"""Propagation on synthetic volumes with the embedded LiteMedSAM weights.

Shapes grow, shrink, split and vanish; the expectations are exact where the geometry is
(slice ranges reached, ids, cancellation) and Dice bounds where the model draws.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from scipy import ndimage

from sammed2d.errors import ImageError, PromptError
from sammed2d.evaluation import dice, slice_box
from sammed2d.propagate import ObjectPrompts, PropagationSettings, SlicePrompt, propagate

RADII = [0, 0, 7, 10, 13, 15, 15, 13, 10, 7, 0, 0]  # grows, then shrinks, then vanishes
S = 4  # phantom pixels per unit of RADII


def disc(shape, centre, radius):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


@pytest.fixture(scope="module")
def phantom():
    """256 x 256 x 12 HU volume (axis 2 = slices): a disc that grows and shrinks (id 1), and a
    blob that splits in two (id 2). 256 px is LiteMedSAM's input: no resize in between."""
    rng = np.random.default_rng(0)
    vol = np.full((64 * S, 64 * S, 12), -80.0, np.float32)
    truth = np.zeros(vol.shape, np.uint8)
    shape = vol.shape[:2]
    for z, r in enumerate(RADII):
        if r:
            truth[:, :, z][disc(shape, (20 * S, 22 * S), r * S)] = 1
    for z in range(12):
        if z < 6:
            blob = disc(shape, (46 * S, 44 * S), 7 * S) | disc(shape, (46 * S, 50 * S), 7 * S)
        else:  # splits into two branches that drift apart
            gap = (z - 4) * S
            blob = disc(shape, (46 * S, 44 * S - gap), 6 * S) | disc(
                shape, (46 * S, 50 * S + gap), 6 * S
            )
        truth[:, :, z][blob & (truth[:, :, z] == 0)] = 2
    vol[truth == 1] = 160.0
    vol[truth == 2] = 90.0
    vol += rng.normal(0, 5, vol.shape).astype(np.float32)
    return vol, truth


def run(phantom, litemedsam, shared_cache, objects, **kwargs):
    vol, _ = phantom
    return propagate(
        vol, objects, litemedsam, axis=2, preset="abdomen", cache=shared_cache, **kwargs
    )


def box_prompt(truth, oid, z):
    return SlicePrompt(box=slice_box(truth[:, :, z] == oid))


def test_grows_shrinks_and_stops_where_it_vanishes(phantom, litemedsam, shared_cache):
    _, truth = phantom
    result = run(
        phantom, litemedsam, shared_cache, [ObjectPrompts(1, {5: box_prompt(truth, 1, 5)})]
    )
    assert result.reached[1] == (2, 9)
    for z in range(2, 10):
        # the smallest sections (14 px across) come out a little fat
        expected = 0.75 if RADII[z] <= 7 else 0.9
        assert dice(result.labels[:, :, z] == 1, truth[:, :, z] == 1) > expected, z
    assert not result.labels[:, :, [0, 1, 10, 11]].any()
    assert np.isnan(result.scores[1][[0, 1, 10, 11]]).all()
    assert (result.scores[1][2:10] > 0.7).all()


def test_a_bounded_relative_margin_follows_the_shrinking_disc(phantom, litemedsam, shared_cache):
    """A margin proportional to the box feeds back on itself (the mask takes in background,
    the next box grows with it) and the walk ends early; bounded above, or with the
    background's grey levels dropped from each carried mask (the intensity band), it follows
    the disc to where it vanishes."""
    from sammed2d.propagate import PropagationSettings

    _, truth = phantom
    objects = [ObjectPrompts(1, {5: box_prompt(truth, 1, 5)})]
    relative = dict(box_margin=3.0, box_margin_fraction=0.1)
    loose = PropagationSettings(**relative, box_margin_max=None, intensity_band=None)
    assert run(phantom, litemedsam, shared_cache, objects, settings=loose).reached[1] != (2, 9)
    for settings in (
        PropagationSettings(**relative, box_margin_max=5.0, intensity_band=None),
        PropagationSettings(**relative, box_margin_max=None, intensity_band=20.0),
        PropagationSettings(),  # both, the defaults
    ):
        result = run(phantom, litemedsam, shared_cache, objects, settings=settings)
        assert result.reached[1] == (2, 9), settings
        for z in range(2, 10):
            expected = 0.75 if RADII[z] <= 7 else 0.9
            assert dice(result.labels[:, :, z] == 1, truth[:, :, z] == 1) > expected, z


def test_cycle_check_keeps_ranged_walks_and_leaves_unranged_ones_alone(
    phantom, litemedsam, shared_cache
):
    """The cycle check decodes each step of a ranged walk with a tighter box too; what it
    keeps still follows the disc, a gain no candidate can reach changes nothing, and a walk
    without a range (which has its stopping rules) is left as it was."""
    from sammed2d.propagate import PropagationSettings

    _, truth = phantom
    ranged = [ObjectPrompts(1, {5: box_prompt(truth, 1, 5)}, (2, 9))]
    checked = run(
        phantom, litemedsam, shared_cache, ranged,
        settings=PropagationSettings(cycle_margin=2.0, cycle_gain=0.1),
    )  # fmt: skip
    assert checked.reached[1] == (2, 9)
    for z in range(2, 10):
        expected = 0.75 if RADII[z] <= 7 else 0.9
        assert dice(checked.labels[:, :, z] == 1, truth[:, :, z] == 1) > expected, z
    # A gain every candidate clears (-1) keeps the tighter box's mask wherever it finds one:
    # the walk is then the plain walk with that margin, and differs from the 5 px one's.
    fixed = dict(box_margin_fraction=0.0)
    always = run(
        phantom, litemedsam, shared_cache, ranged,
        settings=PropagationSettings(**fixed, box_margin=5.0, cycle_margin=2.0, cycle_gain=-1.0),
    )  # fmt: skip
    tight = run(
        phantom, litemedsam, shared_cache, ranged,
        settings=PropagationSettings(**fixed, box_margin=2.0),
    )  # fmt: skip
    wide = run(
        phantom, litemedsam, shared_cache, ranged,
        settings=PropagationSettings(**fixed, box_margin=5.0),
    )  # fmt: skip
    assert np.array_equal(always.labels, tight.labels)
    assert not np.array_equal(tight.labels, wide.labels)
    off = PropagationSettings(cycle_margin=None)
    never = PropagationSettings(cycle_margin=2.0, cycle_gain=1.0)
    for objects in (ranged, [ObjectPrompts(1, {5: box_prompt(truth, 1, 5)})]):
        plain = run(phantom, litemedsam, shared_cache, objects, settings=off)
        same = run(phantom, litemedsam, shared_cache, objects, settings=never)
        assert np.array_equal(same.labels, plain.labels)
    unranged = [ObjectPrompts(1, {5: box_prompt(truth, 1, 5)})]
    plain = run(phantom, litemedsam, shared_cache, unranged, settings=off)
    checked = run(
        phantom, litemedsam, shared_cache, unranged,
        settings=PropagationSettings(cycle_margin=2.0, cycle_gain=0.0),
    )  # fmt: skip
    assert np.array_equal(checked.labels, plain.labels)


def test_follows_a_split(phantom, litemedsam, shared_cache):
    _, truth = phantom
    result = run(
        phantom, litemedsam, shared_cache, [ObjectPrompts(2, {2: box_prompt(truth, 2, 2)})]
    )
    assert result.reached[2] == (0, 11)
    assert dice(result.labels == 2, truth == 2) > 0.85
    for z in range(8, 12):  # past the split it keeps one branch whole and leaks little
        branches, count = ndimage.label(truth[:, :, z] == 2)
        assert count == 2
        found = result.labels[:, :, z] == 2
        assert max(found[branches == i].mean() for i in (1, 2)) > 0.9
        assert found[branches == 0].sum() < 0.5 * found.sum()


def test_range_limits_and_several_objects_share_one_pass(phantom, litemedsam, shared_cache):
    _, truth = phantom
    objects = [
        ObjectPrompts(7, {5: box_prompt(truth, 1, 5)}, range=(4, 6), name="disc"),
        ObjectPrompts(3, {5: box_prompt(truth, 2, 5)}),
    ]
    calls = []
    result = run(
        phantom, litemedsam, shared_cache, objects, progress=lambda d, t: calls.append((d, t))
    )
    assert result.reached[7] == (4, 6) and result.reached[3] == (0, 11)
    assert set(np.unique(result.labels)) == {0, 3, 7}
    assert calls[-1][0] == calls[-1][1] and all(a[0] <= b[0] for a, b in zip(calls, calls[1:]))


def test_gap_between_two_annotated_slices_is_filled(phantom, litemedsam, shared_cache):
    _, truth = phantom
    obj = ObjectPrompts(1, {3: box_prompt(truth, 1, 3), 8: box_prompt(truth, 1, 8)})
    result = run(phantom, litemedsam, shared_cache, [obj])
    assert result.reached[1] == (2, 9)
    assert all((result.labels[:, :, z] == 1).any() for z in range(2, 10))


@pytest.mark.parametrize("mm,interpolated", [(3.0, True), (8.0, True), (9.0, False), (None, False)])
def test_two_drawn_slices_close_together_are_interpolated_not_walked(
    tiny_checkpoint, mm, interpolated
):
    """Between two given masks at most `interpolate_drawn` (25 mm) apart the slices take
    the shape between the drawings; farther apart, or with no geometry, the model walks
    (a model of random weights here: its masks are not discs)."""
    from sammed2d import load_model

    rng = np.random.default_rng(0)
    volume = rng.normal(0, 50, (64, 64, 8)).astype(np.float32)
    small, large = disc((64, 64), (30, 32), 8), disc((64, 64), (30, 32), 20)
    obj = ObjectPrompts(1, {2: SlicePrompt(mask=small), 5: SlicePrompt(mask=large)})
    affine = None if mm is None else np.diag([1.0, 1.0, mm, 1.0])
    model = load_model(str(tiny_checkpoint), device="cpu")
    result = propagate(volume, [obj], model, affine=affine, preset="none", orientation="array")
    found = result.labels == 1
    assert np.array_equal(found[..., 2], small) and np.array_equal(found[..., 5], large)
    between = [dice(found[..., z], disc((64, 64), (30, 32), r)) for z, r in ((3, 12), (4, 16))]
    assert (min(between) > 0.95) == interpolated, between
    # An interpolated slice has no prediction of its own: no score for Check next to show.
    assert result.scores[1][2] == 1.0 and (np.isnan(result.scores[1][3]) or not interpolated)
    off = PropagationSettings(interpolate_drawn=None)
    walked = propagate(
        volume, [obj], model, affine=affine, preset="none", orientation="array", settings=off
    )
    assert np.array_equal(walked.labels == 1, found) != interpolated


def test_overlap_goes_to_the_higher_score(phantom, litemedsam, shared_cache):
    _, truth = phantom
    same = box_prompt(truth, 1, 5)
    loose = SlicePrompt(box=np.array([2, 2, 60, 60], np.float32))
    result = run(
        phantom,
        litemedsam,
        shared_cache,
        [ObjectPrompts(1, {5: same}, range=(5, 5)), ObjectPrompts(2, {5: loose}, range=(5, 5))],
    )
    winner = 1 if result.scores[1][5] >= result.scores[2][5] else 2
    disc_voxels = truth[:, :, 5] == 1
    assert (result.labels[:, :, 5][disc_voxels] == winner).mean() > 0.9


def test_objects_on_one_slice_walk_together_in_shared_decoder_calls(
    phantom, litemedsam, shared_cache, monkeypatch
):
    """Two objects boxed on the same slice take their steps together: one decoder call per
    slice for both, and each object's masks are those it gets propagated alone."""
    import sammed2d.propagate as engine

    _, truth = phantom
    objects = [
        ObjectPrompts(1, {5: box_prompt(truth, 1, 5)}),
        ObjectPrompts(2, {5: box_prompt(truth, 2, 5)}),
    ]
    calls = []
    real = engine.decode

    def counted(model, emb, points, labels, boxes, *rest, **options):
        calls.append(0 if boxes is None else len(boxes))
        return real(model, emb, points, labels, boxes, *rest, **options)

    monkeypatch.setattr(engine, "decode", counted)
    alone = []
    for obj in objects:
        alone.append(run(phantom, litemedsam, shared_cache, [obj]))
    separate, separate_boxes = len(calls), sum(calls)
    calls.clear()
    together = run(phantom, litemedsam, shared_cache, objects)
    assert sum(calls) == separate_boxes  # the same boxes decoded...
    assert len(calls) < separate - 8  # ...in fewer calls: both walks' steps on slices 2-9
    assert max(calls) >= 2
    for obj, result in zip(objects, alone):
        assert together.reached[obj.id] == result.reached[obj.id]
        for z in range(12):
            a, b = together.labels[:, :, z] == obj.id, result.labels[:, :, z] == obj.id
            if a.any() or b.any():
                assert dice(a, b) > 0.99, (obj.id, z)


def test_walk_steps_decode_masks_near_their_boxes(phantom, litemedsam, shared_cache, monkeypatch):
    """A walk's steps ask for masks around their boxes only, and get the labels that whole
    masks give; with mask prompts on (the logits feed the next step) they ask for whole
    masks."""
    import sammed2d.propagate as engine

    _, truth = phantom
    objects = [ObjectPrompts(i, {5: box_prompt(truth, i, 5)}) for i in (1, 2)]
    asked = []
    real = engine.decode

    def recorded(*args, near_boxes=False, **options):
        asked.append(near_boxes)
        return real(*args, near_boxes=near_boxes and not whole, **options)

    monkeypatch.setattr(engine, "decode", recorded)
    whole = False
    near = run(phantom, litemedsam, shared_cache, objects)
    assert sum(asked) >= 9  # the steps on slices 0-4 and 6-11, shared by both objects
    whole = True
    assert np.array_equal(run(phantom, litemedsam, shared_cache, objects).labels, near.labels)
    asked.clear()
    run(phantom, litemedsam, shared_cache, objects, settings=PropagationSettings(mask_prompt=True))
    assert asked and not any(asked)


def test_cancel_returns_what_was_finished(phantom, litemedsam, shared_cache):
    _, truth = phantom
    asked = []

    def should_stop():
        asked.append(1)
        return len(asked) > 3

    result = run(
        phantom,
        litemedsam,
        shared_cache,
        [ObjectPrompts(1, {5: box_prompt(truth, 1, 5)})],
        should_stop=should_stop,
    )
    assert result.cancelled
    done = [z for z in range(12) if (result.labels[:, :, z] == 1).any()]
    assert len(done) == 3 and 5 in done  # the seed and two steps, nothing half-written
    assert all(np.isfinite(result.scores[1][z]) for z in done)


@pytest.mark.parametrize(
    ("objects", "kwargs", "error", "message"),
    [
        (
            [ObjectPrompts(1, {12: SlicePrompt(box=[1, 1, 9, 9])})],
            {},
            PromptError,
            "slice 12, outside the volume's 0..11",
        ),
        ([ObjectPrompts(1, {})], {}, PromptError, "no annotated slice"),
        (
            # labels are 16-bit at most: this id overflowed the label volume before
            [ObjectPrompts(70000, {2: SlicePrompt(box=[1, 1, 9, 9])})],
            {},
            PromptError,
            "expected distinct integers from 1 to 65535",
        ),
        (
            [ObjectPrompts(1, {2: SlicePrompt(box=[1, 1, 9, 9])}, range=(5, 1))],
            {},
            PromptError,
            r"range \[5, 1\]: expected \[first, last\]",
        ),
        ([ObjectPrompts(1, {2: SlicePrompt()})], {}, PromptError, "no box, points or mask"),
        (
            [ObjectPrompts(1, {2: SlicePrompt(box=[1, 1, 9, 9])})],
            {"axis": 3},
            ImageError,
            "slice axis 3",
        ),
        ([], {}, PromptError, "no objects"),
        (
            [ObjectPrompts(1, {2: SlicePrompt(box=[1, 1, 64 * S + 30, 9])})],
            {},
            PromptError,
            "reaches outside",
        ),
        (
            [ObjectPrompts(1, {2: SlicePrompt(box=[1, 1, 9, 9])}, range=(3, 5))],
            {},
            PromptError,
            "outside its range",
        ),
        (
            # a second object's point past the slice's edge, named before anything runs
            [
                ObjectPrompts(1, {2: SlicePrompt(box=[1, 1, 9, 9])}),
                ObjectPrompts(2, {4: SlicePrompt(points=[[5, 70 * S]], labels=[1])}),
            ],
            {},
            PromptError,
            r"object 2, slice 4: point \(5, \d+\) lies outside",
        ),
    ],
)
def test_bad_input(phantom, litemedsam, objects, kwargs, error, message):
    vol, _ = phantom
    with pytest.raises(error, match=message):
        propagate(vol, objects, litemedsam, **kwargs)


# Settings outside their kind or range (`check_settings`); the affine, where given, is
# there so that the distance is turned into slices.
@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"slice_step": 0}, "slice_step 0"),
        ({"slice_step": 1.5}, "slice_step 1.5"),
        ({"overlap_of": "area"}, "overlap_of 'area': expected union or smaller"),
        ({"box_jitter": -1.0}, "box_jitter -1.0: expected a positive number"),
        ({"box_jitter": float("nan")}, "box_jitter nan"),
        ({"step_distance": float("nan")}, "step_distance nan: expected a positive number of mm"),
        ({"step_distance": float("inf")}, "step_distance inf"),
        ({"compose_by": "area"}, "compose_by 'area': expected score, logit, both"),
    ],
)
@pytest.mark.parametrize("affine", [None, np.eye(4)])
def test_bad_settings_are_refused(phantom, litemedsam, settings, message, affine):
    vol, _ = phantom
    objects = [ObjectPrompts(1, {2: SlicePrompt(box=[1, 1, 9, 9])})]
    with pytest.raises(PromptError, match=message):
        propagate(vol, objects, litemedsam, affine=affine, settings=PropagationSettings(**settings))


def test_2d_array_is_refused(litemedsam):
    with pytest.raises(ImageError, match="needs a 3D volume"):
        propagate(
            np.zeros((8, 8)), [ObjectPrompts(1, {0: SlicePrompt(box=[1, 1, 5, 5])})], litemedsam
        )


def test_other_axes_give_the_same_answer(phantom, litemedsam, shared_cache):
    vol, truth = phantom
    obj = ObjectPrompts(1, {5: box_prompt(truth, 1, 5)})
    along2 = run(phantom, litemedsam, shared_cache, [obj]).labels
    moved = np.moveaxis(vol, 2, 0)  # same slices, now along axis 0
    along0 = propagate(moved, [obj], litemedsam, axis=0, preset="abdomen", cache=shared_cache)
    assert np.array_equal(np.moveaxis(along0.labels, 0, 2), along2)


def test_a_given_range_is_followed_through_a_slice_where_the_object_vanishes(
    phantom, litemedsam, shared_cache
):
    vol, truth = phantom
    vol = vol.copy()
    vol[:, :, 6][truth[:, :, 6] == 1] = -80.0  # the disc is missing on slice 6 only
    prompt = {4: box_prompt(truth, 1, 4)}
    free = propagate(
        vol, [ObjectPrompts(1, prompt)], litemedsam, axis=2, preset="abdomen", cache=shared_cache
    )
    assert free.reached[1][1] < 7  # no range: the walk stops where the object vanished
    ranged = propagate(
        vol,
        [ObjectPrompts(1, prompt, range=(2, 9))],
        litemedsam,
        axis=2,
        preset="abdomen",
        cache=shared_cache,
    )
    assert ranged.reached[1] == (2, 9)
    for z in (7, 8, 9):  # found again past the gap
        assert dice(ranged.labels[:, :, z] == 1, truth[:, :, z] == 1) > 0.75, z


def test_other_slices_are_retried_with_a_box_never_the_seeds_own_mask_or_points(
    phantom, litemedsam, shared_cache
):
    from sammed2d.prompts import box_from_mask
    from sammed2d.propagate import seed_box, volume_slices

    vol, truth = phantom
    slices = volume_slices(litemedsam, vol, 2, None, "abdomen", None, "radiological", None)
    seed_mask = slices.view.to_view(truth[:, :, 4] == 1)
    box = slice_box(truth[:, :, 4] == 1)
    by_box = seed_box(slices, SlicePrompt(box=box), seed_mask)
    assert np.array_equal(by_box, slices.view.box_to_view(box, slices.raw_shape))
    for prompt in (SlicePrompt(mask=truth[:, :, 4] == 1), SlicePrompt(points=[[88, 80]])):
        assert np.array_equal(seed_box(slices, prompt, seed_mask), box_from_mask(seed_mask))
    # In a walk where every step comes back empty (min_area out of reach), every other slice
    # of the range comes from that box: never the seed's own mask copied over.
    from sammed2d.propagate import PropagationSettings

    seed = truth[:, :, 4] == 1
    result = run(
        phantom,
        litemedsam,
        shared_cache,
        [ObjectPrompts(1, {4: SlicePrompt(mask=seed)}, range=(2, 9))],
        settings=PropagationSettings(min_area=10**9),
    )
    assert result.reached[1] == (2, 9)
    for z in (2, 3, 8, 9):  # the disc there is smaller than on the seed slice
        found, here = result.labels[:, :, z] == 1, truth[:, :, z] == 1
        assert dice(found, here) > dice(seed, here) + 0.1, z


def test_an_object_in_its_own_window_matches_a_run_in_that_window(tiny_checkpoint):
    """A per-object intensity preset (a lung lobe in a lung window beside organs in the
    abdomen window) gives exactly what a run in that window gives for that object."""
    from sammed2d import load_model
    from sammed2d.propagate import (
        ObjectPrompts,
        SlicePrompt,
        objects_from_json,
        objects_to_json,
        propagate,
    )

    rng = np.random.default_rng(0)
    volume = rng.normal(-700, 200, (48, 40, 6)).astype(np.int16)
    volume[10:30, 8:25, 1:5] = -300
    model = load_model(str(tiny_checkpoint), device="cpu")
    prompt = {2: SlicePrompt(box=np.array([7, 9, 26, 31.0]))}
    own = propagate(
        volume, [ObjectPrompts(1, prompt, (1, 4), window="lung")], model, preset="abdomen"
    )
    ref = propagate(volume, [ObjectPrompts(1, prompt, (1, 4))], model, preset="lung")
    other = propagate(volume, [ObjectPrompts(1, prompt, (1, 4))], model, preset="abdomen")
    assert np.array_equal(own.labels, ref.labels)
    assert not np.array_equal(ref.labels, other.labels)  # the window mattered
    axis, objs = objects_from_json(objects_to_json(2, [ObjectPrompts(1, prompt, window="lung")]))
    assert objs[0].window == "lung"
    with pytest.raises(PromptError, match="window"):
        objects_from_json({"objects": [{"id": 1, "window": "sky", "slices": {}}]})


def _walker(shape=(256, 256), **settings):
    from sammed2d.cache import EmbeddingCache
    from sammed2d.orientation import SliceView
    from sammed2d.propagate import PropagationSettings, VolumeSlices, _Walker

    slices = VolumeSlices(
        None, np.zeros((*shape, 3), np.float32), 2, SliceView(), (0.0, 1.0), EmbeddingCache()
    )
    return _Walker(slices, PropagationSettings(**settings))


def test_the_box_margin_follows_the_objects_size():
    walker = _walker(box_margin=2.0, box_margin_fraction=0.1, box_margin_max=None)
    big = np.zeros((256, 256), bool)
    big[50:150, 40:200] = True  # 160 wide, 100 high
    np.testing.assert_allclose(walker._grown_box(big), [24, 40, 216, 160])
    small = np.zeros((256, 256), bool)
    small[100:105, 100:106] = True  # the floor of 2 px applies
    np.testing.assert_allclose(walker._grown_box(small), [98, 98, 108, 107])
    edge = np.zeros((256, 256), bool)
    edge[0:100, 0:100] = True  # clipped to the image
    assert walker._grown_box(edge)[:2].tolist() == [0.0, 0.0]
    # the old absolute margin, scaled to the slice (5 px at 256 -> 10 px at 512)
    wide = _walker((512, 512), box_margin=5.0, box_margin_fraction=0.0)
    mask = np.zeros((512, 512), bool)
    mask[200:300, 200:300] = True
    np.testing.assert_allclose(wide._grown_box(mask), [190, 190, 310, 310])
    # bounded above: 16 and 10 px become 5; the floor still applies to small parts
    capped = _walker(box_margin=2.0, box_margin_fraction=0.1, box_margin_max=5.0)
    np.testing.assert_allclose(capped._grown_box(big), [35, 45, 205, 155])
    np.testing.assert_allclose(capped._grown_box(small), [98, 98, 108, 107])
    # the bound scales with the slice as the floor does (5 px at 256 -> 10 px at 512)
    capped_wide = _walker((512, 512), box_margin=2.0, box_margin_fraction=0.2, box_margin_max=5.0)
    np.testing.assert_allclose(capped_wide._grown_box(mask), [190, 190, 310, 310])


def test_zoom_squares_small_boxes_only():
    walker = _walker(zoom_below=0.25, zoom_context=3.0)
    region = walker._zoom_region(np.array([[100.0, 100, 120, 110]]))
    top, bottom, left, right = region
    assert bottom - top == right - left == 60  # 3 x the longest side, square
    assert (left + right) / 2 == 110 and (top + bottom) / 2 == 105
    assert walker._zoom_region(np.array([[10.0, 10, 200, 200]])) is None  # large: whole slice
    corner = walker._zoom_region(np.array([[0.0, 0, 20, 20]]))
    assert corner == (0, 60, 0, 60)  # slid inside the image, not cut
    assert _walker()._zoom_region(np.array([[100.0, 100, 120, 110]])) is None  # off by default


def test_object_window_follows_the_hu_inside_the_box():
    from sammed2d.intensity import object_window

    rng = np.random.default_rng(1)
    soft = rng.normal(40, 20, 500)
    assert object_window(soft) == "abdomen"
    # A lung base: mostly air-filled parenchyma with some liver dome in the box.
    assert object_window(np.r_[rng.normal(-820, 60, 400), rng.normal(50, 15, 100)]) == "lung"
    # A vertebra: soft tissue around trabecular and cortical bone.
    assert object_window(np.r_[rng.normal(30, 20, 250), rng.normal(450, 150, 250)]) == "bone"
    assert object_window(np.array([np.nan])) == "abdomen"
    # None of the three holds the middle 80 %: the one that holds most of it.
    assert object_window(np.r_[np.full(40, -1000.0), np.full(60, 1200.0)]) == "bone"


def ct_with_lung_and_bone():
    """A 64 x 64 x 6 CT in HU: soft tissue (40), a lung in air (-850 with -700 vessels),
    and a bright bone (700 cortex around 250 marrow)."""
    rng = np.random.default_rng(2)
    vol = np.full((64, 64, 6), 40, np.int16)
    vol[:2] = vol[-2:] = -1000  # air outside the body
    vol[6:28, 6:30, :] = -850
    vol[14:18, 10:26, :] = -700
    vol[36:58, 34:58, :] = 700
    vol[40:54, 38:54, :] = 250
    return (vol + rng.normal(0, 5, vol.shape)).astype(np.int16)


def test_auto_gives_each_ct_object_the_window_its_box_asks_for(tiny_checkpoint):
    """`auto` on a CT: the lung gets the lung window, the bone the bone window, soft tissue
    keeps the volume's; each scores as a run in that window does, and a slice agrees with
    its propagation."""
    from sammed2d import load_model
    from sammed2d.propagate import segment_slice

    vol = ct_with_lung_and_bone()
    model = load_model(str(tiny_checkpoint), device="cpu")
    lung = SlicePrompt(box=np.array([5, 5, 30, 28.0]))  # x along columns, y along rows
    bone = SlicePrompt(box=np.array([33, 35, 58, 58.0]))
    soft = SlicePrompt(box=np.array([30, 4, 50, 24.0]))
    objects = [ObjectPrompts(i + 1, {2: p}, (1, 4)) for i, p in enumerate((lung, bone, soft))]
    result = propagate(vol, objects, model, preset="auto")
    assert result.windows == {1: "lung", 2: "bone", 3: "abdomen"}
    for oid, prompt, window in ((1, lung, "lung"), (2, bone, "bone"), (3, soft, "abdomen")):
        alone = propagate(vol, [ObjectPrompts(oid, {2: prompt}, (1, 4))], model, preset=window)
        # Scores come before overlaps are settled: the same window gives the same ones.
        assert np.array_equal(result.scores[oid], alone.scores[oid], equal_nan=True), window
        mask, _ = segment_slice(vol, 2, prompt, model, preset="auto")
        shown, _ = segment_slice(vol, 2, prompt, model, preset=window)
        assert np.array_equal(mask, shown), window
    other = propagate(vol, objects[:1], model, preset="abdomen")
    assert not np.array_equal(other.scores[1], result.scores[1], equal_nan=True)  # it mattered
    # A window the user chose is kept; an explicit preset turns the choice off.
    chosen = propagate(vol, [ObjectPrompts(1, {2: lung}, window="bone")], model, preset="auto")
    assert chosen.windows == {1: "bone"}
    assert other.windows == {1: "abdomen"}


def test_auto_windows_per_modality():
    """`auto` gives a CT object one of the standard windows its box asks for, an MR object a
    window from its box's own grey levels (`box_window`), and 8-bit data none."""
    from sammed2d.intensity import BOX_PERCENTILES, BOX_WIDEN, parse_window, prompt_window

    mr = np.random.default_rng(3).normal(300, 50, (32, 32, 3)).astype(np.float32)
    window = prompt_window(mr, 2, 1, SlicePrompt(box=np.array([2, 2, 20, 20.0])))
    lo, hi = np.percentile(mr[2:21, 2:21, 1], BOX_PERCENTILES)
    spread = hi - lo
    expected = (lo - BOX_WIDEN * spread, hi + BOX_WIDEN * spread)
    # the name keeps four significant digits
    assert np.allclose(parse_window(window), expected, atol=1e-3 * (expected[1] - expected[0]))
    flat = np.full((32, 32, 3), 300.0, np.float32)
    assert prompt_window(flat, 2, 1, SlicePrompt(box=np.array([2, 2, 20, 20.0]))) is None
    eight_bit = mr.clip(0, 255).astype(np.uint8)
    assert prompt_window(eight_bit, 2, 1, SlicePrompt(box=np.array([2, 2, 20, 20.0]))) is None
    ct = ct_with_lung_and_bone()
    assert prompt_window(ct, 2, 1, SlicePrompt(points=np.array([[10, 10.0]]), labels=[1])) is None
    mask = np.zeros(ct.shape[:2], bool)
    mask[8:26, 8:28] = True
    assert prompt_window(ct, 2, 1, SlicePrompt(mask=mask)) == "lung"


def faint_mr_phantom():
    """An MR-like volume whose percentile window is stretched by bright fat under the skin:
    a structure 20 grey levels above its surroundings (noise 6) on slices 1-8 differs from
    them by about 5 of the 256 levels the model sees in that window."""
    rng = np.random.default_rng(0)
    shape = (96, 96)
    vol = np.full((*shape, 10), 300.0, np.float32)
    body = disc(shape, (48, 48), 44)
    vol[~body] = 5.0
    vol[body & ~disc(shape, (48, 48), 38)] = 1200.0
    truth = np.zeros(vol.shape, np.uint8)
    for z in range(1, 9):
        truth[..., z][disc(shape, (44 + z, 50), 11 - abs(z - 4.5))] = 1
    vol[truth == 1] = 320.0
    return np.abs(vol + rng.normal(0, 6, vol.shape).astype(np.float32)), truth


def test_auto_gives_a_faint_mr_structure_its_box_window(litemedsam, shared_cache):
    """In the volume's percentile window LiteMedSAM follows the faint structure poorly
    (Dice 0.74 when written); in the window from its box it follows it (0.99)."""
    vol, truth = faint_mr_phantom()
    box = slice_box(truth[..., 5] == 1)
    obj = ObjectPrompts(1, {5: SlicePrompt(box=box)}, (1, 8))
    run = dict(cache=shared_cache)
    own = propagate(vol, [obj], litemedsam, 2, preset="auto", **run)
    assert own.windows[1].startswith("W")
    whole = propagate(vol, [obj], litemedsam, 2, preset="percentile", **run)
    found, wide = dice(own.labels == 1, truth == 1), dice(whole.labels == 1, truth == 1)
    assert found > 0.95 and found > wide + 0.15, (found, wide)


def ring_phantom():
    """A disc (40 HU) inside a bone ring (700 HU) with a gap of background (-80 HU) between
    them, the same on 12 slices: the spinal cord in its canal, drawn simply."""
    rng = np.random.default_rng(1)
    shape = (64 * S, 64 * S)
    vol = np.full((*shape, 12), -80.0, np.float32)
    truth = np.zeros(vol.shape, np.uint8)
    centre = (32 * S, 32 * S)
    ring = disc(shape, centre, 9 * S) & ~disc(shape, centre, 6 * S)
    truth[disc(shape, centre, 5 * S)] = 1
    vol[truth == 1] = 40.0
    vol[ring] = 700.0
    return vol + rng.normal(0, 5, vol.shape).astype(np.float32), truth, ring


def test_the_intensity_band_keeps_the_walk_off_the_gap_around_a_disc(litemedsam, shared_cache):
    """Grown by its margin, the box takes in the gap around the disc and the model fills
    it (Dice 0.84 without the band); the band drops the gap's grey levels from each carried
    mask, and nothing of the ring is labelled."""
    from sammed2d.propagate import PropagationSettings

    vol, truth, ring = ring_phantom()
    objects = [ObjectPrompts(1, {6: box_prompt(truth, 1, 6)})]
    found = {}
    for band in (None, 20.0):
        result = propagate(
            vol, objects, litemedsam, axis=2, preset="abdomen", cache=shared_cache,
            settings=PropagationSettings(intensity_band=band),
        )  # fmt: skip
        assert result.reached[1] == (0, 11)
        found[band] = result.labels == 1
    assert dice(found[None], truth == 1) < 0.9
    assert dice(found[20.0], truth == 1) > 0.95
    assert not (found[20.0] & ring[:, :, None]).any()


def gassy_loop():
    """A bowel loop (a 40 HU disc moving a pixel a slice) that holds gas (-900 HU) from
    slice 7 on, after the prompted slice 6: the band taken from the gasless mask before it
    does not reach the gas."""
    rng = np.random.default_rng(3)
    shape = (64 * S, 64 * S)
    vol = np.full((*shape, 12), -80.0, np.float32)
    truth = np.zeros(vol.shape, np.uint8)
    for z in range(12):
        centre = (32 * S, (26 + z) * S)
        truth[:, :, z][disc(shape, centre, 9 * S)] = 1
        vol[:, :, z][truth[:, :, z] == 1] = 40.0
        if z > 6:
            vol[:, :, z][disc(shape, centre, 5 * S)] = -900.0
    return vol + rng.normal(0, 5, vol.shape).astype(np.float32), truth


def test_the_intensity_band_keeps_gas_the_loop_encloses(litemedsam, shared_cache):
    """The model's mask holds the loop's gas; the band trims a mask's rim, not what its
    outline encloses, so every slice keeps its lumen (Dice 0.81-0.82 on slices 7-11 when
    the band cut it)."""
    vol, truth = gassy_loop()
    objects = [ObjectPrompts(1, {6: box_prompt(truth, 1, 6)})]
    result = propagate(vol, objects, litemedsam, axis=2, preset="abdomen", cache=shared_cache)
    assert result.reached[1] == (0, 11)
    for z in range(7, 12):
        assert dice(result.labels[:, :, z] == 1, truth[:, :, z] == 1) > 0.88, z


def brightening_disc():
    """A disc that brightens by 30 HU a slice (330 HU over 12 slices)."""
    rng = np.random.default_rng(2)
    shape = (64 * S, 64 * S)
    vol = np.full((*shape, 12), -80.0, np.float32)
    truth = np.zeros(vol.shape, np.uint8)
    truth[disc(shape, (30 * S, 34 * S), 10 * S)] = 1
    for z in range(12):
        vol[:, :, z][truth[:, :, z] == 1] = -20.0 + 30.0 * z
    vol += rng.normal(0, 5, vol.shape).astype(np.float32)
    return vol, truth


def test_the_intensity_band_follows_an_object_whose_grey_level_drifts(litemedsam, shared_cache):
    """The band is taken from the previous slice's mask, not the prompted slice's: the
    brightening disc (far past the band over the volume) is followed to both ends."""
    vol, truth = brightening_disc()
    objects = [ObjectPrompts(1, {5: box_prompt(truth, 1, 5)})]
    result = propagate(vol, objects, litemedsam, axis=2, preset="abdomen", cache=shared_cache)
    assert result.reached[1] == (0, 11)
    for z in range(12):
        assert dice(result.labels[:, :, z] == 1, truth[:, :, z] == 1) > 0.9, z


def test_the_stopping_rules_measure_change_per_mm_not_per_slice(litemedsam, shared_cache):
    """The brightening disc changes 19 grey levels (of the abdomen window's 255) a slice.
    Between 3 mm slices that is under the 40 levels a walk may change by before it stops,
    and it is followed to both ends; between 1 mm slices it is 57 levels per 3 mm, and the
    walk stops at the first slice 3 mm from a mask it found at more than 40 levels apart.
    Compared slice by slice it would walk on; a given range is always followed. (Every
    slice is walked here; by default a walk between 1 mm slices steps 3 mm.)"""
    vol, truth = brightening_disc()
    objects = [ObjectPrompts(1, {5: box_prompt(truth, 1, 5)})]

    def reached(spacing, objects=objects, **settings):
        affine = np.diag([1.0, 1.0, spacing, 1.0])
        return propagate(
            vol, objects, litemedsam, axis=2, affine=affine, preset="abdomen",
            cache=shared_cache, settings=PropagationSettings(**{"slice_step": 1, **settings}),
        ).reached[1]  # fmt: skip

    assert reached(3.0) == (0, 11)
    assert reached(1.0) == (3, 7)  # slices 2 and 8 are 3 slices from the seed, 57 levels
    assert reached(1.0, step_distance=None) == (0, 11)
    assert reached(0.5, step_distance=1.5) == (3, 7)  # the same distance in slices
    ranged = [ObjectPrompts(1, {5: box_prompt(truth, 1, 5)}, (0, 11))]
    assert reached(1.0, ranged) == (0, 11)


def test_parts_close_together_share_one_box_and_far_apart_keep_their_own():
    """`split_gap`: pieces of one organ with a narrow gap (the model missed its middle) stay
    together; branches whose gap is wide next to their size are followed apart."""
    from sammed2d.propagate import _parts

    shape = (120, 120)
    near = disc(shape, (60, 30), 12) | disc(shape, (60, 58), 12)  # 2 px gap, 25 px wide
    far = disc(shape, (60, 20), 6) | disc(shape, (60, 60), 6)  # 27 px gap, 13 px wide
    sliver = near | disc(shape, (100, 100), 2)  # under 10 % of the largest part: not followed
    assert len(_parts(near, 0.1)) == 2  # without the rule every part is its own
    assert len(_parts(near, 0.1, 0.5)) == 1
    assert _parts(near, 0.1, 0.5)[0].sum() == near.sum()
    assert len(_parts(far, 0.1, 0.5)) == 2
    assert len(_parts(far, 0.1, 3.0)) == 1
    merged = _parts(sliver, 0.1, 0.5)
    assert len(merged) == 1 and merged[0].sum() == near.sum()


def test_pieces_of_one_organ_are_joined_again_under_one_box(litemedsam, shared_cache):
    """The seed slice's mask comes in two pieces of a disc with its middle missing, as
    LiteMedSAM gave the example CT's liver on its middle slice. Followed apart, each piece
    keeps a box of its own and the middle is never recovered; under one box (the default
    `split_gap`) the next slices take the whole disc."""
    from sammed2d.propagate import PropagationSettings

    rng = np.random.default_rng(3)
    shape = (64 * S, 64 * S)
    vol = np.full((*shape, 8), -80.0, np.float32)
    truth = np.zeros(vol.shape, np.uint8)
    truth[disc(shape, (32 * S, 32 * S), 14 * S)] = 1
    vol[truth == 1] = 120.0
    vol += rng.normal(0, 5, vol.shape).astype(np.float32)
    cols = np.arange(shape[1])[None, :]
    seed = (truth[:, :, 0] == 1) & (np.abs(cols - 32 * S) > 2 * S)  # two halves, 4 units apart
    objects = [ObjectPrompts(1, {0: SlicePrompt(mask=seed)}, range=(0, 7))]
    found = {}
    # (the join of parts would recover the middle too: it is off here)
    apart = PropagationSettings(split_gap=None, join_parts=False)
    for name, settings in (("apart", apart), ("default", None)):
        result = run((vol, truth), litemedsam, shared_cache, objects, settings=settings)
        found[name] = [dice(result.labels[:, :, z] == 1, truth[:, :, z] == 1) for z in (4, 7)]
    assert min(found["default"]) > 0.95
    assert min(found["apart"]) < 0.9


def test_shape_interpolation_between_two_discs_gives_the_disc_between():
    from sammed2d.propagate import fill_between

    shape = (80, 90)
    small, large = disc(shape, (40, 40), 10), disc(shape, (40, 40), 18)
    out = {
        2: (small, 0.9, np.full(small.sum(), 4.0, np.float16)),
        6: (large, 0.7, np.linspace(1, 3, large.sum()).astype(np.float16)),
    }
    fill_between(out, 4)
    assert sorted(out) == [2, 3, 4, 5, 6]
    assert out[4][1] == 0.7  # the lower of the two scores
    # its pixels' logits: the lower of the two masks' medians, one per pixel
    assert len(out[4][2]) == out[4][0].sum() and np.all(out[4][2] == np.float16(2.0))
    for z, radius in ((3, 12), (4, 14), (5, 16)):  # radii in proportion to the distance
        assert dice(out[z][0], disc(shape, (40, 40), radius)) > 0.95, z
    moved = {0: (disc(shape, (40, 30), 10), 0.9, None), 2: (disc(shape, (40, 50), 10), 0.9, None)}
    fill_between(moved, 2)
    between, _, kept = moved[1]
    assert kept is None  # a mask the user drew has no logits to carry
    rows, cols = np.nonzero(between)
    assert between[40, 40] and abs(cols.mean() - 40) < 0.5 and abs(rows.mean() - 40) < 0.5
    wide = {0: (disc(shape, (40, 30), 10), 0.9, None), 5: (disc(shape, (40, 30), 10), 0.9, None)}
    fill_between(wide, 4)  # 5 apart with a step of 4: a slice where nothing was found
    assert sorted(wide) == [0, 5]


def test_every_other_slice_is_walked_and_the_rest_interpolated(phantom, litemedsam, shared_cache):
    _, truth = phantom
    result = run(
        phantom,
        litemedsam,
        shared_cache,
        [ObjectPrompts(1, {5: box_prompt(truth, 1, 5)}, range=(1, 10))],
        settings=PropagationSettings(slice_step=2),
    )
    # walked 5 (the seed), 4, 2, 1 (the range's end) and 6, 8, 10; nothing on 10, so 9 is
    # walked after it; 3 and 7 interpolated
    assert result.reached[1] == (2, 9)
    assert np.isfinite(result.scores[1][2:10]).all()
    for z in range(2, 10):
        expected = 0.7 if RADII[z] <= 7 else 0.85
        assert dice(result.labels[:, :, z] == 1, truth[:, :, z] == 1) > expected, z


def test_a_stepped_walk_embeds_only_the_slices_it_visits(phantom, litemedsam):
    from sammed2d import EmbeddingCache

    vol, truth = phantom

    def embedded(spacing=None, **settings):
        cache = EmbeddingCache()
        result = propagate(
            vol,
            [ObjectPrompts(1, {5: box_prompt(truth, 1, 5)}, range=(0, 11))],
            litemedsam,
            axis=2,
            affine=None if spacing is None else np.diag([1.0, 1.0, spacing, 1.0]),
            preset="abdomen",
            cache=cache,
            settings=PropagationSettings(**settings),
            orientation="array",
        )
        return cache.misses, result.labels

    # step 3 from slice 5 over 0..11: 5, 3, 0 (nothing: then 2, and from 2 on 0 again
    # nothing, then 1) and 6, 9, 11 (the range's end; nothing: then 10)
    assert embedded(slice_step=1)[0] == 12 and embedded(slice_step=3)[0] == 9
    # By default the step is the whole slices within 3 mm: 1 mm slices walk as step 3,
    # 1.5 mm slices as step 2, 2 mm and thicker (or no geometry) every slice.
    _, stepped = embedded(slice_step=3)
    misses, auto = embedded(1.0)
    assert misses == 9 and np.array_equal(auto, stepped)
    assert embedded(1.5)[0] == embedded(slice_step=2)[0]
    assert embedded(2.0)[0] == embedded(3.0)[0] == embedded()[0] == 12
    assert embedded(1.0, step_distance=None)[0] == 12


def test_a_box_prompt_keeps_the_candidate_whose_own_box_agrees_with_it(litemedsam):
    """Two touching discs of different grey levels in one box: the single mask leaves part
    of the box uncovered. Checked against a strict agreement, a candidate that fills the
    box better is kept; below the single mask's own agreement nothing changes."""
    from sammed2d.cache import EmbeddingCache
    from sammed2d.prompts import box_from_mask
    from sammed2d.propagate import _Walker, box_iou, volume_slices

    rng = np.random.default_rng(0)
    vol = rng.normal(-80, 5, (128, 128, 3)).astype(np.float32)
    a, b = disc((128, 128), (64, 50), 15), disc((128, 128), (64, 78), 15)
    vol[:, :, 1][a] = 200
    vol[:, :, 1][b & ~a] = 60
    box = box_from_mask(a | b)
    slices = volume_slices(litemedsam, vol, 2, None, "abdomen", None, "array", EmbeddingCache())

    def segment(agreement):
        walker = _Walker(slices, PropagationSettings(box_agreement=agreement))
        mask, score, *_ = walker.from_prompt(1, SlicePrompt(box=box))
        return mask, box_iou(box_from_mask(mask), box)

    single, single_agrees = segment(None)
    assert 0.85 < single_agrees < 0.95
    assert np.array_equal(segment(0.85)[0], single)  # agrees enough: kept
    checked, checked_agrees = segment(0.95)
    assert checked_agrees > single_agrees and not np.array_equal(checked, single)
    np.testing.assert_allclose(box_iou(np.array([0, 0, 4, 4.0]), np.array([2, 0, 6, 4.0])), 1 / 3)
    assert box_iou(None, box) == 0.0


def capsule(shape, a, b, radius):
    """The pixels within `radius` of the segment from `a` to `b` ((row, col) each)."""
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(np.float32)
    a, d = np.asarray(a, np.float32), np.subtract(b, a).astype(np.float32)
    t = np.clip(((yy - a[0]) * d[0] + (xx - a[1]) * d[1]) / float(d @ d), 0, 1)
    return (yy - a[0] - t * d[0]) ** 2 + (xx - a[1] - t * d[1]) ** 2 <= radius**2


def test_branches_that_meet_are_joined_under_one_box(litemedsam, shared_cache):
    """Two limbs, apart on the prompted slice, meet in an arch further up (the aorta seen
    from below its arch; 0.8 mm pixels, 3 mm slices, the percentile window). Followed with a
    box each, each limb's box grows only by its margin, and the model stops each mask
    short of its box, so the arch between them is never taken in; one box around both
    finds the whole arch, and below it the limbs stay apart."""
    rng = np.random.default_rng(5)
    shape = (256, 256)
    truth = np.zeros((*shape, 10), np.uint8)
    for z in range(10):
        if z < 5:
            truth[:, :, z] = disc(shape, (150, 90), 18) | disc(shape, (110, 170), 16)
        else:
            truth[:, :, z] = capsule(shape, (150, 90), (110, 170), 17)
    vol = np.where(truth == 1, 200.0, -60.0).astype(np.float32)
    vol += rng.normal(0, 8, vol.shape).astype(np.float32)
    affine = np.diag([0.8, 0.8, 3.0, 1.0])
    objects = [ObjectPrompts(1, {2: box_prompt(truth, 1, 2)}, range=(0, 9))]
    found = {}
    for name, settings in (("apart", PropagationSettings(join_parts=False)), ("default", None)):
        result = propagate(
            vol, objects, litemedsam, axis=2, affine=affine, preset="percentile",
            settings=settings, cache=shared_cache,
        )  # fmt: skip
        found[name] = [dice(result.labels[:, :, z] == 1, truth[:, :, z] == 1) for z in range(10)]
    assert min(found["default"]) > 0.9  # below the arch too: the gap is not filled
    assert min(found["default"][5:]) > 0.95
    assert max(found["apart"][5:]) < 0.7


def test_a_tube_that_turns_is_followed_and_stops_where_it_ends(litemedsam, shared_cache):
    """A vessel crossing the slices obliquely: a disc (radius 11 px) whose centre turns a
    quarter circle, about 4.3 px (a fifth of its diameter) per slice, and ends. Without a
    range the walk follows it to both ends and stops there. (Turning at a third of its
    diameter per slice it is lost: docs/measurements.md, "A tube that turns".)"""
    rng = np.random.default_rng(2)
    shape = (256, 256)
    truth = np.zeros((*shape, 16), np.uint8)
    for z in range(14):
        a = np.pi / 2 * z / 13
        truth[:, :, z] = disc(shape, (128 + 36 * np.sin(a), 68 + 36 * (1 - np.cos(a))), 11)
    vol = np.where(truth == 1, 170.0, -70.0).astype(np.float32)
    vol += rng.normal(0, 6, vol.shape).astype(np.float32)
    objects = [ObjectPrompts(1, {6: box_prompt(truth, 1, 6)})]
    result = run((vol, truth), litemedsam, shared_cache, objects)
    assert result.reached[1] == (0, 13)
    for z in range(14):
        assert dice(result.labels[:, :, z] == 1, truth[:, :, z] == 1) > 0.9


def test_a_carried_box_is_decoded_as_the_mean_of_it_shrunk_and_grown(phantom, litemedsam):
    """`box_jitter`: each part's mask is the zero level of the mean of three decodes (the
    box, and the box shrunk and grown by the jitter), taken in one decoder call, one box
    triple per part; the score is the given box's own."""
    from sammed2d.cache import EmbeddingCache
    from sammed2d.orientation import SliceView
    from sammed2d.predictor import decode
    from sammed2d.propagate import VolumeSlices, _Walker

    vol, truth = phantom
    slices = VolumeSlices(
        litemedsam, vol, 2, SliceView(), (-160.0, 240.0), EmbeddingCache(max_bytes=1 << 28)
    )
    settings = PropagationSettings(
        box_jitter=3.0, intensity_band=None, join_parts=False, slice_step=1
    )
    walker = _Walker(slices, settings)
    z = 8  # the disc and object 2 (one or two parts): several parts, three boxes each
    parts = [truth[:, :, z] == 1, *walker._parts(truth[:, :, z] == 2)]
    assert len(parts) >= 2
    mask, score, *_ = walker._from_parts(z, parts, 1, None)

    emb = slices.embedding(z)
    expected, scores, areas = np.zeros(mask.shape, bool), [], []
    for part in parts:
        box = walker._grown_box(part)
        j = 3.0 * walker.pixels_per_unit  # 256 px slices: 3 px
        trio = np.stack([box, box + [j, j, -j, -j], np.clip(box + [-j, -j, j, j], 0, 256)])
        low, iou = decode(litemedsam, emb, None, None, trio, None, False)
        logits = emb.geometry.logits_to_original(low.mean(dim=0, keepdim=True))[0, 0]
        found = (logits > 0).numpy()
        expected |= found
        scores.append(float(iou[0, 0]))
        areas.append(found.sum())
    assert np.logical_xor(mask, expected).sum() <= 2  # one batched call against three
    assert score == pytest.approx(np.average(scores, weights=areas), abs=1e-4)
    # and it is not the single box's mask: the jitter is applied
    single, *_ = _Walker(slices, replace(settings, box_jitter=None))._from_parts(z, parts, 1, None)
    assert np.logical_xor(single, mask).sum() > 0


def test_overlapping_objects_are_composed_by_score_logit_or_both():
    """Two objects claim the same pixels: the higher predicted IoU takes them ("score"), or
    the higher decoder logit at each pixel ("logit"), or the higher log sigmoid(logit) +
    log IoU ("both"); a mask the user drew keeps its pixels under every rule."""
    from sammed2d.objects import ObjectPrompts
    from sammed2d.orientation import SliceView
    from sammed2d.propagate import _compose

    view = SliceView(transpose=True, flip_rows=True)  # composed through the view's inverse
    first = np.zeros((6, 8), bool)
    first[1:4, 1:6] = True
    second = np.zeros((6, 8), bool)
    second[2:5, 3:7] = True
    both = first & second
    # first: IoU 0.9, logit 1 everywhere; second: IoU 0.6, logit 5 on the shared pixels
    logits_second = np.where(both, 5.0, 2.0)[second].astype(np.float16)
    results = {
        1: {0: (first, 0.9, np.ones(first.sum(), np.float16))},
        2: {0: (second, 0.6, logits_second)},
    }
    objects = [ObjectPrompts(1, {0: SlicePrompt(box=np.zeros(4))}), ObjectPrompts(2, {})]
    shape = (8, 6, 1)  # raw slice = the view transposed and flipped back

    def owner(rule, res=results):
        labels = _compose(shape, 2, view, objects, res, {}, False, rule).labels[:, :, 0]
        return view.to_view(labels)

    assert np.all(owner("score")[both] == 1)
    assert np.all(owner("logit")[both] == 2)
    # log sigmoid(1) + log 0.9 = -0.42 beats log sigmoid(5) + log 0.6 = -0.52
    assert np.all(owner("both")[both] == 1)
    for rule in ("score", "logit", "both"):
        labels = owner(rule)
        assert np.all(labels[first & ~second] == 1) and np.all(labels[second & ~first] == 2)
    drawn = {1: results[1], 2: {0: (second, 1.0, None)}}
    assert np.all(owner("logit", drawn)[both] == 2) and np.all(owner("both", drawn)[both] == 2)


def test_propagate_composes_overlapping_objects_by_the_chosen_rule(
    phantom, litemedsam, shared_cache
):
    """Two objects on one blob: its whole box, and the box of its left lobe. "score" gives
    each slice's overlap whole to one object; "logit" and "both" (the default) share it out
    pixel by pixel. Outside the overlap each object keeps what it found alone."""
    vol, truth = phantom
    lobe = disc(truth.shape[:2], (46 * S, 44 * S), 7 * S)
    objects = [
        ObjectPrompts(1, {4: box_prompt(truth, 2, 4)}, (2, 8)),
        ObjectPrompts(2, {4: SlicePrompt(box=slice_box(lobe))}, (2, 8)),
    ]
    alone = {o.id: run(phantom, litemedsam, shared_cache, [o]).labels == o.id for o in objects}
    overlap = alone[1] & alone[2]
    assert overlap[:, :, 2:9].sum(axis=(0, 1)).min() > 500
    labels = {
        rule: run(
            phantom, litemedsam, shared_cache, objects,
            settings=PropagationSettings(compose_by=rule),
        ).labels
        for rule in ("score", "logit", "both")
    }  # fmt: skip
    assert PropagationSettings().compose_by == "both"
    for rule, lab in labels.items():
        assert np.array_equal(lab == 1, alone[1] & ~(overlap & (lab == 2))), rule
        assert np.array_equal(lab[~overlap] == 2, alone[2][~overlap]), rule
    shared = {}
    for rule, lab in labels.items():
        shared[rule] = [len(np.unique(lab[:, :, z][overlap[:, :, z]])) for z in range(2, 9)]
    assert shared["score"] == [1] * 7  # one owner per slice
    assert max(shared["logit"]) == 2 and max(shared["both"]) == 2


def test_an_overlap_tolerance_follows_a_small_structure_that_moves_across_slices(
    litemedsam, shared_cache
):
    """A 21-pixel disc on 3 mm pixels moving 2 px a slice: between its masks on
    neighbouring slices the IoU falls under 0.3 although the walk is on it, and the walk
    without a range stops two slices below its start. Grown by 3 mm (one pixel) before
    the IoU is taken, with the threshold at 0.4, the masks pass and the walk goes on to
    the disc's first slice; it still stops where the disc has gone."""
    rng = np.random.default_rng(0)
    shape = (96, 96)
    truth = np.zeros((*shape, 14), np.uint8)
    for z in range(12):  # slices 12 and 13 hold nothing
        truth[:, :, z] = disc(shape, (30 + 1.8 * z, 30 + 0.9 * z), 2.6)
    vol = np.where(truth == 1, 60.0, -40.0).astype(np.float32)
    vol += rng.normal(0, 6, truth.shape).astype(np.float32)
    objects = [ObjectPrompts(1, {6: box_prompt(truth, 1, 6)})]

    def walk(**settings):
        return propagate(
            vol, objects, litemedsam, axis=2, affine=np.diag([3.0, 3.0, 3.0, 1.0]),
            preset="abdomen", cache=shared_cache, settings=PropagationSettings(**settings),
        )  # fmt: skip

    strict = walk()
    tolerant = walk(overlap_tolerance=3.0, overlap_threshold=0.4)
    assert strict.reached[1][0] >= 3 and tolerant.reached[1][0] == 0
    assert tolerant.reached[1][1] <= 11
    assert dice(tolerant.labels == 1, truth == 1) > dice(strict.labels == 1, truth == 1) + 0.2


def test_pixels_within_a_distance_across_the_slice():
    from sammed2d.propagate import pixels_within

    assert pixels_within(None, np.eye(4), 2) == 0
    assert pixels_within(3.0, None, 2) == 1
    assert pixels_within(3.0, np.diag([0.75, 0.75, 3.0, 1.0]), 2) == 4
    assert pixels_within(6.0, np.diag([3.0, 3.0, 1.0, 1.0]), 2) == 2
    assert pixels_within(3.0, np.diag([0.5, 3.0, 1.0, 1.0]), 1) == 4  # mean of 0.5 and 1 mm
    # In pixels of the view the walk measures in: stretched 2x, that slice's are 0.5 mm.
    from sammed2d.orientation import slice_view

    coronal = np.diag([0.5, 3.0, 1.0, 1.0])
    assert pixels_within(3.0, coronal, 1, slice_view(coronal, 1, "array")) == 6
    # 0.75 x 3 mm pixels stretched 4x: 6 mm is 8 pixels of 0.75 mm, not 3 of 1.875 mm.
    thick = np.diag([0.75, 0.75, 3.0, 1.0])
    assert pixels_within(6.0, thick, 1, slice_view(thick, 1)) == 8


def test_a_slice_with_oblong_pixels_is_segmented_at_its_proportions(litemedsam, shared_cache):
    """Coronal slices of a scan with 4 mm slices and 1 mm pixels: the model sees each one
    stretched 4x along the slice axis (as viewers show it), the box and the mask map through
    the stretch, and the labels land on the raw grid."""
    from sammed2d.propagate import segment_slice, volume_slices

    affine = np.diag([1.0, 1.0, 4.0, 1.0])
    vol = np.full((96, 40, 24), -80.0, np.float32)
    truth = np.zeros(vol.shape, bool)
    ii, kk = np.mgrid[:96, :24]
    section = ((ii - 48) / 30.0) ** 2 + ((kk - 12) * 4 / 40.0) ** 2 <= 1  # round in mm
    truth[:, 10:30, :] = section[:, None, :]
    vol[truth] = 150.0
    vol += np.random.default_rng(3).normal(0, 5, vol.shape).astype(np.float32)
    slices = volume_slices(litemedsam, vol, 1, affine, "abdomen", None, "radiological", None)
    assert slices.gray(20).shape == (96, 96)  # 24 slices x 4 rows, 96 columns
    box = slice_box(truth[:, 20, :])
    mask, score = segment_slice(
        vol, 20, SlicePrompt(box=box), litemedsam, 1, affine, "abdomen", cache=shared_cache
    )
    assert mask.shape == (96, 24) and dice(mask, truth[:, 20, :]) > 0.9
    walked = propagate(
        vol, [ObjectPrompts(1, {20: SlicePrompt(box=box)}, (10, 29))], litemedsam, axis=1,
        affine=affine, preset="abdomen", cache=shared_cache,
    )  # fmt: skip
    assert walked.reached[1] == (10, 29) and dice(walked.labels == 1, truth) > 0.9


def test_slices_grey_levels_are_kept_within_a_bound(monkeypatch):
    """Each object's walk reads a slice's 8-bit image several times: it is computed once
    and kept, read-only, up to a byte bound that drops the least recently read."""
    from sammed2d import propagate as prop
    from sammed2d.intensity import to_uint8
    from sammed2d.orientation import SliceView

    vol = np.random.default_rng(0).normal(40, 60, (20, 24, 6)).astype(np.float32)
    slices = prop.VolumeSlices(None, vol, 2, SliceView(), (-160.0, 240.0), None)
    first = slices.gray(3)
    assert np.array_equal(first, to_uint8(vol[:, :, 3], -160.0, 240.0))
    assert slices.gray(3) is first and not first.flags.writeable
    monkeypatch.setattr(prop, "_GRAYS_BYTES", 2 * first.nbytes)
    slices.gray(4)
    slices.gray(3)  # read again: now the most recent
    slices.gray(5)  # over the bound: 4 goes
    assert list(slices._grays) == [3, 5]
    assert np.array_equal(slices.gray(4), to_uint8(vol[:, :, 4], -160.0, 240.0))


def test_slices_grey_levels_are_safe_to_read_from_two_threads(monkeypatch):
    """A server's embed-ahead thread and its requests read one VolumeSlices at once."""
    import threading

    from sammed2d import propagate as prop
    from sammed2d.orientation import SliceView

    vol = np.random.default_rng(1).normal(40, 60, (16, 16, 40)).astype(np.float32)
    slices = prop.VolumeSlices(None, vol, 2, SliceView(), (-160.0, 240.0), None)
    monkeypatch.setattr(prop, "_GRAYS_BYTES", 3 * 16 * 16)  # three slices
    errors = []

    def read(offset):
        try:
            for i in range(2000):
                assert slices.gray((i * 7 + offset) % 40).shape == (16, 16)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=read, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(slices._grays) <= 3


def test_a_window_given_as_its_preset_s_own_range_keeps_its_name(tiny_checkpoint):
    """The server and napari pass the session's value range; the run named every object's
    window "custom" then, and the command line printed that through a server."""
    from sammed2d import load_model
    from sammed2d.intensity import intensity_range

    volume = np.random.default_rng(0).normal(-80, 5, (32, 32, 4)).astype(np.float32)
    volume[0, 0, 0] = -1000  # air: a CT
    model = load_model(str(tiny_checkpoint), device="cpu")
    obj = [ObjectPrompts(1, {1: SlicePrompt(box=np.array([8, 8, 20, 20.0]))}, (1, 2))]
    own = intensity_range(volume, "abdomen")
    for value_range, name in ((None, "abdomen"), (own, "abdomen"), ((0.0, 100.0), "custom")):
        result = propagate(volume, obj, model, preset="auto", value_range=value_range)
        assert result.windows == {1: name}
