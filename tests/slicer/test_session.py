"""The Slicer module's prompt log: what Save prompts writes replays with the CLI."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

MODULE_DIR = Path(__file__).resolve().parents[2] / "slicer_module" / "SAMMed2D"
sys.path.insert(0, str(MODULE_DIR))

from sammed2d import load_model  # noqa: E402
from sammed2d.cli import main  # noqa: E402
from sammed2d.io import Volume, read_volume, write_volume  # noqa: E402
from sammed2d.prompt_files import read_prompt_file, write_prompt_file  # noqa: E402
from sammed2d.propagate import SlicePrompt, propagate  # noqa: E402
from SAMMed2DLib import PromptLog  # noqa: E402


def test_saved_session_prompts_replay_through_the_cli(tmp_path, capsys, tiny_checkpoint):
    rng = np.random.default_rng(0)
    array = rng.normal(-80, 5, (40, 36, 6)).astype(np.int16)
    array[10:25, 8:20, 1:5] = 150
    src = write_volume(tmp_path / "ct.nii.gz", array, Volume(array, np.diag([0.8, 0.8, 2.5, 1])))
    log = PromptLog()
    # As the module records them: object, slice axis, slice, prompt in IJK pixels.
    log.record(1, 2, 2, SlicePrompt(box=np.array([7.0, 9, 21, 26])), "liver")
    log.record(1, 2, 2, SlicePrompt(box=np.array([7.0, 9, 20, 25])), "liver")  # replaces
    log.record(3, 2, 3, SlicePrompt(points=np.array([[14.0, 17]]), labels=np.array([1])))
    log.record(4, 2, 3, None)  # nothing placed: nothing kept
    record = log.prompt_file("tiny.pth", None, "abdomen")
    write_prompt_file(tmp_path / "p.json", record)
    saved = json.loads((tmp_path / "p.json").read_text(encoding="utf-8"))
    assert [o["id"] for o in saved["objects"]] == [1, 3]
    assert saved["objects"][0]["slices"]["2"]["box"] == [7.0, 9.0, 20.0, 25.0]
    assert saved["objects"][0]["name"] == "liver" and saved["window"] == "abdomen"

    out = tmp_path / "cli.nii.gz"
    argv = ["propagate", str(src), "--prompts", str(tmp_path / "p.json"), "--out", str(out)]
    assert main([*argv, "--model", str(tiny_checkpoint), "--device", "cpu"]) == 0
    # What the module's replay does: propagate the file's objects with its settings.
    back = read_prompt_file(tmp_path / "p.json")
    volume = read_volume(src)
    replay = propagate(
        volume.array,
        back.objects,
        load_model(str(tiny_checkpoint), device="cpu"),
        axis=back.axis,
        affine=volume.affine,
        preset=back.window,
        settings=back.settings,
    )
    assert np.array_equal(read_volume(out).array, replay.labels)


def test_a_prompt_in_another_view_axis_starts_the_log_afresh():
    log = PromptLog()
    log.record(1, 2, 5, SlicePrompt(box=np.array([1.0, 1, 5, 5])))
    log.record(2, 0, 7, SlicePrompt(box=np.array([1.0, 1, 5, 5])))
    assert log.axis == 0 and list(log.objects) == [2]


def test_propagate_all_takes_each_objects_auto_window_and_leaves_the_log_as_it_was():
    """Propagate all objects runs the log as a prompts file: each object in the window
    `auto` chose for it on its first click (the others in the scan's preset), the log
    itself unchanged for the next run."""
    log = PromptLog()
    log.record(2, 2, 5, SlicePrompt(box=np.array([1.0, 1, 5, 5])), name="lung_lower_lobe_right")
    log.record(1, 2, 7, SlicePrompt(box=np.array([2.0, 2, 6, 6])), name="liver")
    record = log.prompt_file(window="auto", windows={2: "lung"})
    assert [(o.id, o.name, o.window) for o in record.objects] == [
        (1, "liver", None),
        (2, "lung_lower_lobe_right", "lung"),
    ]
    assert record.window == "auto" and log.objects[2].window is None
