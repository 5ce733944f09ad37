"""PROMPTS.json settings: today's defaults for files written by hand, the behaviour of the
release that wrote a file for settings it did not record."""

from __future__ import annotations

import numpy as np
import pytest

from sammed2d.errors import PromptError
from sammed2d.objects import PropagationSettings
from sammed2d.prompt_files import (
    TURNED_ON_LATER,
    PromptFile,
    prompt_file_from_json,
    prompt_file_to_json,
)
from sammed2d.propagate import ObjectPrompts, SlicePrompt

OBJECTS = {"axis": 2, "objects": [{"id": 1, "slices": {"3": {"box": [1, 2, 10, 12]}}}]}


def test_a_file_from_an_earlier_release_replays_as_that_release_behaved():
    written = {**OBJECTS, "settings": {"box_margin": 5.0}, "sammed2d": "0.2.0"}
    settings = prompt_file_from_json(written).settings
    assert settings.intensity_band is None and settings.box_margin_max is None
    assert settings.split_gap is None and settings.box_agreement is None
    assert settings.step_distance is None and settings.slice_step == 1  # slice by slice
    assert settings.compose_by == "score"  # overlaps went to the higher predicted IoU
    # the release that added the band recorded it, but not the later split_gap
    band = {**OBJECTS, "settings": {"intensity_band": 20.0}, "sammed2d": "0.2.0"}
    settings = prompt_file_from_json(band).settings
    assert settings.intensity_band == 20.0 and settings.split_gap is None
    assert set(TURNED_ON_LATER) <= {f for f in PropagationSettings.__dataclass_fields__}


def test_a_hand_written_file_gets_todays_defaults():
    by_hand = {**OBJECTS, "settings": {"box_margin": 4.0}}
    settings = prompt_file_from_json(by_hand).settings
    assert settings.box_margin == 4.0
    assert settings.intensity_band == PropagationSettings().intensity_band == 20.0
    assert prompt_file_from_json(OBJECTS).settings == PropagationSettings()
    assert prompt_file_from_json(OBJECTS).settings.compose_by == "both"


def test_todays_files_round_trip_every_setting():
    record = PromptFile(2, [ObjectPrompts(1, {3: SlicePrompt(box=[1, 2, 10, 12])})])
    record.settings = PropagationSettings(intensity_band=None, box_margin=3.0)
    again = prompt_file_from_json(prompt_file_to_json(record))
    assert again.settings == record.settings
    record.settings = PropagationSettings()
    assert prompt_file_from_json(prompt_file_to_json(record)).settings.intensity_band == 20.0


def test_the_volume_of_a_4d_file_is_recorded_and_checked():
    record = PromptFile(2, [ObjectPrompts(1, {3: SlicePrompt(box=[1, 2, 10, 12])})], channel=1)
    data = prompt_file_to_json(record)
    assert data["channel"] == 1 and prompt_file_from_json(data).channel == 1
    assert "channel" not in prompt_file_to_json(PromptFile(2, record.objects))
    assert prompt_file_from_json(OBJECTS).channel is None
    assert prompt_file_from_json({**OBJECTS, "channel": 2.0}).channel == 2
    for bad in (-1, 1.5, "T2", True):
        with pytest.raises(PromptError, match="is not a whole number from 0"):
            prompt_file_from_json({**OBJECTS, "channel": bad})


def test_unknown_settings_are_refused():
    with pytest.raises(PromptError, match="unknown propagation setting"):
        prompt_file_from_json({**OBJECTS, "settings": {"band": 3}})


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("box_margin", "5", "prompts: box_margin '5': expected a number of px at 256"),
        ("box_margin", float("nan"), "box_margin nan"),
        ("iou_threshold", 1.5, "iou_threshold 1.5: expected a number from 0 to 1"),
        ("mask_prompt", "yes", "mask_prompt 'yes': expected true or false"),
        ("min_area", 2.5, "min_area 2.5: expected a whole number of pixels"),
        ("intensity_band", [20], r"intensity_band \[20\]"),
        ("compose_by", "area", "compose_by 'area': expected score, logit, both"),
    ],
)
def test_settings_of_the_wrong_kind_or_range_are_refused_at_load(setting, value, message):
    # Before, a string margin or a NaN threshold got through to the walk: a TypeError deep
    # in the engine, or a propagation that never stopped.
    with pytest.raises(PromptError, match=message):
        prompt_file_from_json({**OBJECTS, "settings": {setting: value}})


def test_every_setting_has_limits_and_the_defaults_keep_them():
    from dataclasses import fields

    from sammed2d.objects import _LIMITS, check_settings

    assert set(_LIMITS) == {f.name for f in fields(PropagationSettings)}
    check_settings(PropagationSettings())
    check_settings(prompt_file_from_json({**OBJECTS, "sammed2d": "0.2.0"}).settings)


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ({"id": 1, "range": [10.5, 20], "slices": {"14": {"box": [1, 2, 9, 9]}}}, "range 10.5"),
        ({"id": 1, "range": [10], "slices": {"14": {"box": [1, 2, 9, 9]}}}, r"range \[10\]"),
        ({"id": True, "slices": {"14": {"box": [1, 2, 9, 9]}}}, "id True is not a whole"),
        ({"id": 1, "slices": {"1.5": {"box": [1, 2, 9, 9]}}}, "slice '1.5' is not a whole"),
        # a misspelt key read as a slice without prompts before
        ({"id": 1, "slices": {"14": {"bbox": [1, 2, 9, 9]}}}, "slice 14: unknown key.*bbox"),
        ({"id": 1, "slices": {"14": {"mask": [[1]]}}}, "unknown key.*mask"),
    ],
)
def test_malformed_objects_are_refused_naming_what_is_wrong(item, message):
    with pytest.raises(PromptError, match=message) as err:
        prompt_file_from_json({"axis": 2, "objects": [item]}, "prompts p.json")
    assert str(err.value).startswith("prompts p.json: object 0 is malformed (")


def test_whole_numbers_may_be_written_as_floats():
    item = {"id": 2.0, "range": [3.0, 9], "slices": {"4": {"box": [1, 2, 9, 9]}}}
    obj = prompt_file_from_json({"axis": 2, "objects": [item]}).objects[0]
    assert (obj.id, obj.range, list(obj.slices)) == (2, (3, 9), [4])


def test_names_are_read_as_utf8_whatever_the_locale(tmp_path):
    """JSON is UTF-8. Read with the locale's encoding (cp1252 on Windows, ASCII once a
    library has set the C locale), an object named "Leber é 脾臓" came back garbled or
    raised a UnicodeDecodeError."""
    import json
    import locale

    from sammed2d.prompt_files import read_prompt_file
    from sammed2d.segments import read_sidecar

    name = "Leber é 脾臓"
    prompts = {**OBJECTS, "objects": [{**OBJECTS["objects"][0], "name": name}]}
    (tmp_path / "p.json").write_bytes(json.dumps(prompts, ensure_ascii=False).encode())
    side = {"segments": {"1": {"name": name, "color": [1, 2, 3]}}}
    (tmp_path / "l.json").write_bytes(json.dumps(side, ensure_ascii=False).encode())
    before = locale.setlocale(locale.LC_CTYPE)
    locale.setlocale(locale.LC_CTYPE, "C")
    try:
        assert locale.getencoding() != "UTF-8"
        assert read_prompt_file(tmp_path / "p.json").objects[0].name == name
        assert read_sidecar(tmp_path / "l.nii.gz")[1].name == name
    finally:
        locale.setlocale(locale.LC_CTYPE, before)


def test_objects_from_labels_seed_each_labelled_slice_along_the_axis():
    from sammed2d.objects import objects_from_labels
    from sammed2d.segments import Segment

    labels = np.zeros((5, 6, 7), np.uint16)
    labels[1:3, 1, 2:5] = 2
    labels[0, 3, 0] = 2
    labels[2:4, 3, 4:6] = 300
    found = objects_from_labels(labels, 1, segments=[Segment(300, "cyst", (1, 2, 3))])
    assert [(o.id, sorted(o.slices), o.name, o.color) for o in found] == [
        (2, [1, 3], "", None),
        (300, [3], "cyst", (1, 2, 3)),
    ]
    for obj in found:
        for index, prompt in obj.slices.items():
            assert np.array_equal(prompt.mask, labels[:, index, :] == obj.id)
            assert prompt.box is None and prompt.points is None
    assert [o.id for o in objects_from_labels(labels, 1, ids=[300, 5])] == [300]
    with pytest.raises(PromptError, match="expected a 3D label volume"):
        objects_from_labels(labels[0], 0)
