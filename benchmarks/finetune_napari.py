"""Fine-tuning from napari's widget (Fine-tune on labels…): its time, its figures, and what
it costs the viewer.

Run under an X server (`xvfb-run -a python benchmarks/finetune_napari.py`). The
TotalSegmentator example CT is opened with the plugin's reader and the widget docked;
seven of its fourteen structures (`benchmarks/finetune.py`'s "shown" set) are put in the
SAM labels layer, as a user's corrected masks would be; Fine-tune on labels… then runs
with LiteMedSAM while a 10 ms QTimer heartbeat records the Qt event loop's gaps. Prints
the status line, the stalls over 100 ms and the full garbage-collector passes.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from napari_latency import add_stall_option, docked_viewer, pump

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "abdomen_ct"
SHOWN = [1, 3, 5, 7, 9, 11, 13]  # even positions in structures.json's order


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--screenshot", type=Path, help="a PNG of the viewer when it is done")
    add_stall_option(parser)
    args = parser.parse_args()
    screenshot = args.screenshot.resolve() if args.screenshot else None
    home = os.getcwd()
    viewer, w, beat, sampler, collector = docked_viewer(args.sample_stalls)
    (image,) = viewer.open(str(DATA / "ct.nii.gz"), plugin="napari-sammed2d")
    pump(until=lambda: w.engine.ready, timeout=300)
    (truth,) = viewer.open(str(DATA / "structures.nii.gz"), plugin="napari-sammed2d")
    structures = np.asarray(truth.data)
    viewer.layers.remove(truth)
    viewer.layers.selection.active = image
    _, _, labels = w.ensure_prompt_layers()
    shown = np.isin(structures, SHOWN)
    labels.data[shown] = structures[shown]
    labels.refresh()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)  # a relative path: the Model field (and a screenshot) shows tuned.pth
        out = Path("tuned.pth")
        beat.reset("fine-tune")
        start = time.perf_counter()
        w.finetune_to(out)
        pump(until=lambda: w._busy is None, timeout=3600)
        seconds = time.perf_counter() - start
        pump(0.3)
        stalls = sorted((g for g in beat.gaps if g > 0.1), reverse=True)
        precision = w.precision_combo.currentText()
        print(
            f"litemedsam {precision}, example CT {structures.shape}, {len(SHOWN)} structures "
            f"labelled: Fine-tune on labels… took {seconds:.1f} s"
        )
        print(f"status line: {w.status.text()}")
        loaded = w.engine.model.weights_path == str(out)
        print(f"now using: {Path(w.model_edit.text()).name}, loaded: {loaded}")
        print(
            "Qt stalls over 100 ms: " + (", ".join(f"{g * 1000:.0f} ms" for g in stalls) or "none")
        )
        collector.report()
        if sampler is not None:
            sampler.report()
        if screenshot:
            viewer.screenshot(str(screenshot), canvas_only=False)
        os.chdir(home)
    w.shutdown()
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
