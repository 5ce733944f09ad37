"""Take the README's screenshot: the widget on the TotalSegmentator example CT.

Runs a real viewer window (use `xvfb-run -a` on a headless machine): opens the CT through
the plugin's reader, draws one box on the liver's middle slice, propagates, and saves
docs/screenshot.png. Needs ../shared/data/abdomen_ct (falls back to the phantom).

    xvfb-run -a python scripts/screenshot.py [--out docs/screenshot.png]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import napari
import numpy as np
from qtpy.QtWidgets import QApplication

from napari_sammed2d._io import volume_to_layer_data
from napari_sammed2d._sample_data import phantom
from napari_sammed2d._widget import SegmentWidget

ROOT = Path(__file__).resolve().parents[1]
CT = ROOT.parent / "shared" / "data" / "abdomen_ct"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshot.png")
    args = parser.parse_args()
    viewer = napari.Viewer(show=True)
    if (CT / "ct.nii.gz").exists():
        ((data, meta, _),) = volume_to_layer_data(CT / "ct.nii.gz")
        truth = volume_to_layer_data(CT / "labels.nii.gz")[0][0]
        layer = viewer.add_image(data, **meta, contrast_limits=(-160, 240))
    else:
        (data, meta, _), (truth, _, _) = phantom()
        layer = viewer.add_image(data, **meta)
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget, name="SAM-Med2D")
    widget.image_combo.setCurrentText(layer.name)
    widget.preset_combo.setCurrentText("abdomen")
    _, shapes, labels = widget.ensure_prompt_layers()
    organ = truth == 1
    zs = np.flatnonzero(organ.any(axis=(1, 2)))
    z = int(zs[len(zs) // 2])
    rows, cols = np.nonzero(organ[z])
    viewer.dims.set_point(0, z * layer.scale[0])
    rect = np.array(
        [
            [z, rows.min(), cols.min()],
            [z, rows.min(), cols.max()],
            [z, rows.max(), cols.max()],
            [z, rows.max(), cols.min()],
        ],
        float,
    )
    shapes.add_rectangles(rect)
    widget.propagate_object()
    while widget._busy is not None:
        QApplication.processEvents()
    viewer.dims.set_point(0, (z - 4) * layer.scale[0])
    viewer.window.resize(1500, 900)
    viewer.reset_view()
    QApplication.processEvents()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(str(args.out), canvas_only=False)
    print(f"wrote {args.out}")
    widget.shutdown()
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
