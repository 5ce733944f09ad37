"""Take the README's screenshots: a real session on the TotalSegmentator example CT.

Runs a real viewer window (use `xvfb-run -a` on a headless machine) and drives the widget
as a user would: open the CT through the plugin's reader, name the object, draw a box on
the liver's middle slice, propagate, correct the worst slice with a second box, save the
labels as a Slicer `.seg.nrrd` and open that file again. Then three more organs get a box
each and "Propagate all" carries the four through the volume in one run. One screenshot per
step:

    docs/session-1-prompt.png  docs/session-2-propagate.png
    docs/session-3-correct.png docs/session-5-all.png  docs/session-4-export.png
    (and docs/screenshot.png = 2)

    xvfb-run -a python scripts/screenshot.py [--out docs]

Needs ../shared/data/abdomen_ct (the reference labels pick the boxes).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import napari
import numpy as np
from qtpy.QtCore import QEventLoop
from qtpy.QtWidgets import QApplication

from napari_sammed2d._io import write_labels_layer
from napari_sammed2d._widget import LABELS_NAME, SegmentWidget
from sammed2d.io import read_volume

ROOT = Path(__file__).resolve().parents[1]
CT = ROOT.parent / "shared" / "data" / "abdomen_ct"


def pump(until=None, seconds=None, timeout=600.0):
    end = time.perf_counter() + (seconds if seconds is not None else timeout)
    while time.perf_counter() < end:
        QApplication.processEvents(QEventLoop.ProcessEventsFlag.AllEvents, 50)
        if until is not None and until():
            return
        time.sleep(0.01)


def box_on(shapes, z, mask2d, grow=1):
    rows, cols = np.nonzero(mask2d)
    r0, r1, c0, c1 = rows.min() - grow, rows.max() + grow, cols.min() - grow, cols.max() + grow
    rect = [[z, r0, c0], [z, r0, c1], [z, r1, c1], [z, r1, c0]]
    shapes.add_rectangles(np.array(rect, float))


def dice(a, b):
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else 2 * (a & b).sum() / total


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    viewer = napari.Viewer(show=True)
    viewer.window.resize(1500, 900)
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget, name="SAM-Med2D")
    (image,) = viewer.open(str(CT / "ct.nii.gz"), plugin="napari-sammed2d")
    truth = np.transpose(read_volume(CT / "labels.nii.gz").array, (2, 1, 0)) == 1  # liver
    pump(seconds=0.5)
    _, shapes, labels = widget.ensure_prompt_layers()
    widget.rename_object(1, "liver")

    def show(z, name):
        viewer.dims.set_point(0, image.data_to_world((z, 0, 0))[0])
        viewer.reset_view()
        pump(seconds=0.5)
        path = args.out / name
        viewer.screenshot(str(path), canvas_only=False)
        print(f"wrote {path}")
        return path

    zs = np.flatnonzero(truth.any(axis=(1, 2)))
    z = int(zs[len(zs) // 2])
    viewer.dims.set_point(0, image.data_to_world((z, 0, 0))[0])
    box_on(shapes, z, truth[z])
    pump(until=lambda: (labels.data[z] == 1).any())
    show(z, "session-1-prompt.png")

    widget.propagate_object()
    pump(until=lambda: widget._busy is None)
    second = show(z - 4, "session-2-propagate.png")
    shutil.copyfile(second, args.out / "screenshot.png")

    found = labels.data == 1
    scores = {int(k): dice(found[k], truth[k]) for k in zs}
    worst = min(scores, key=scores.get)
    viewer.dims.set_point(0, image.data_to_world((worst, 0, 0))[0])
    box_on(shapes, worst, truth[worst])
    pump(until=lambda: widget._busy is not None, seconds=5)
    pump(until=lambda: widget._busy is None and not widget.mailbox.busy)
    after = dice(labels.data[worst] == 1, truth[worst])
    print(f"correction on slice {worst}: Dice {scores[worst]:.3f} -> {after:.3f}")
    show(worst, "session-3-correct.png")

    # Three more organs, a box each on its middle slice, then one run for all four.
    organs = np.transpose(read_volume(CT / "labels.nii.gz").array, (2, 1, 0))
    for oid, name in ((2, "spleen"), (3, "kidney_left"), (4, "aorta")):
        widget.new_object()
        widget.rename_object(oid, name)
        organ_zs = np.flatnonzero((organs == oid).any(axis=(1, 2)))
        mid = int(organ_zs[len(organ_zs) // 2])
        viewer.dims.set_point(0, image.data_to_world((mid, 0, 0))[0])
        box_on(shapes, mid, organs[mid] == oid)
        pump(until=lambda mid=mid, oid=oid: (labels.data[mid] == oid).any())
    widget.propagate_all()
    pump(until=lambda: widget._busy is None)
    for oid in (1, 2, 3, 4):
        print(f"propagate all: {widget.table.objects[oid].name} 3D Dice "
              f"{dice(labels.data == oid, organs == oid):.3f}")  # fmt: skip
    print(f"status: {widget.status.text()}")
    show(z, "session-5-all.png")

    with tempfile.TemporaryDirectory() as tmp:
        saved = Path(tmp) / "liver.seg.nrrd"
        layer = viewer.layers[LABELS_NAME]
        write_labels_layer(str(saved), layer.data, layer._get_state())
        for name in ("SAM labels", "SAM boxes", "SAM points"):
            viewer.layers[name].visible = False
        viewer.open(str(saved), plugin="napari-sammed2d")
        show(z, "session-4-export.png")
    widget.shutdown()
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
