"""What auto-save costs the napari viewer: write time and Qt event-loop stalls.

Run under an X server (`xvfb-run -a python benchmarks/autosave.py`). The 512 x 512 x 20
DICOM series from ../shared stacked to 300 slices (a large CT) is shown with the plugin's
widget; a block of labels over 100 slices is painted (as a propagation lands); auto-save
then writes it in each format, while a 10 ms QTimer heartbeat records the longest gap in
the Qt event loop (first the writer alone, beside a Python thread that measures how long
it holds Python's lock). Also timed: the GUI thread's own share (handing the layer over) and a
check that finds nothing changed. Each format is written twice: the first time also
loads its writer's modules. Last, a DICOM SEG of the 20-slice series itself.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from napari_latency import add_stall_option, docked_viewer, pump
from volume import stacked

SERIES = Path(__file__).resolve().parents[2] / "shared" / "data" / "ct_dicom"


def writer_alone(labels, meta, tmp) -> None:
    """The writer outside napari, with a Python thread ticking every 5 ms beside it: how
    long the saving thread holds Python's lock at a stretch (the GUI thread waits as long)."""
    import threading

    from napari_sammed2d._io import write_labels_layer

    gaps, done = [], threading.Event()

    def tick():
        last = time.perf_counter()
        while not done.is_set():
            time.sleep(0.005)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    threading.Thread(target=tick, daemon=True).start()
    for suffix in (".seg.nrrd", ".nii.gz"):
        for _ in range(2):
            gaps.clear()
            start = time.perf_counter()
            write_labels_layer(str(Path(tmp) / f"alone{suffix}"), labels, meta)
            took = time.perf_counter() - start
            print(
                f"writer alone, {suffix}: {took:.2f} s; longest wait for Python's lock "
                f"{max(gaps) * 1000:.0f} ms"
            )
    done.set()


def save_once(w, beat, path) -> tuple[float, float, float]:
    """(seconds until the file is written, GUI thread's ms in the hand-over, longest stall ms)."""
    w.autosave_label.setText("")
    beat.reset(f"auto-save {Path(path).name}")
    start = time.perf_counter()
    if w._autosave_path != str(path):
        w.set_autosave(path)  # hands over at once
    else:
        w._autosave_tick()
    handed = time.perf_counter() - start
    pump(until=lambda: w.autosave_label.text().startswith("auto-saved"), timeout=600)
    return time.perf_counter() - start, handed * 1000, max(beat.gaps) * 1000


def unchanged_check(w, beat) -> tuple[float, float]:
    """(seconds for a hand-over that finds the file up to date, longest stall ms)."""
    beat.reset("unchanged")
    start = time.perf_counter()
    w._autosave_tick()
    pump(until=lambda: not w.autosave._mailbox.busy, timeout=600)
    return time.perf_counter() - start, max(beat.gaps) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=300)
    add_stall_option(parser)
    args = parser.parse_args()
    from napari_sammed2d._io import volume_to_layer_data
    from sammed2d.io import Volume, read_volume

    viewer, w, beat, sampler, collector = docked_viewer(args.sample_stalls)
    series = read_volume(SERIES)
    big = stacked(series.array, args.depth)
    ((data, kwargs, _),) = volume_to_layer_data("stacked", Volume(big, series.affine))
    viewer.add_image(data, **kwargs)
    # The widget loads the model as soon as it has an image; that import's garbage-collector
    # passes would fall into the first measurement.
    pump(until=lambda: w.engine.ready, timeout=300)
    _, _, labels = w.ensure_prompt_layers()
    z = slice(args.depth // 2 - 50, args.depth // 2 + 50)
    block = np.zeros(labels.data.shape, bool)
    block[z, 150:350, 120:380] = True
    with labels.block_history():
        labels.data_setitem(np.nonzero(block), 1)
    pump(0.5)
    shape = " x ".join(map(str, labels.data.shape[::-1]))
    size = labels.data.nbytes / 2**20
    print(f"napari plugin auto-save, labels {shape} ({labels.data.dtype}, {size:.0f} MB)")
    with tempfile.TemporaryDirectory() as tmp:
        meta = {
            "metadata": labels.metadata,
            "features": labels.features,
            "colormap": labels.colormap,
            "scale": tuple(labels.scale),
        }
        writer_alone(labels.data, meta, tmp)
    beat.reset("idle")  # napari's own pauses, for comparison
    pump(3.0)
    print(f"idle viewer, 3 s: longest Qt stall {max(beat.gaps) * 1000:.0f} ms")
    n = 0
    with tempfile.TemporaryDirectory() as tmp:
        for suffix in (".seg.nrrd", ".nii.gz"):
            path = Path(tmp) / f"labels{suffix}"
            for when in ("first", "again"):  # the first loads the format's writer
                labels.data_setitem((np.array([z.start]), np.array([10]), np.array([10 + n])), 2)
                n += 1
                took, handed, gap = save_once(w, beat, path)
                print(
                    f"{suffix} ({when}): written in {took:.2f} s; GUI thread {handed:.1f} ms "
                    f"to hand it over; longest Qt stall {gap:.0f} ms"
                )
            took, gap = unchanged_check(w, beat)
            print(
                f"{suffix}: nothing changed, checked in {took:.2f} s; longest Qt stall {gap:.0f} ms"
            )
        w.set_autosave(None)
        for layer in list(viewer.layers):
            viewer.layers.remove(layer)
        viewer.open(str(SERIES), plugin="napari-sammed2d")
        _, _, labels = w.ensure_prompt_layers()
        block = np.zeros(labels.data.shape, bool)
        block[5:15, 150:350, 120:380] = True
        labels.data_setitem(np.nonzero(block), 1)
        for when in ("first", "again"):
            labels.data_setitem((np.array([5]), np.array([10]), np.array([10 + n])), 2)
            n += 1
            took, handed, gap = save_once(w, beat, Path(tmp) / "labels.dcm")
            print(
                f".dcm (DICOM SEG of the 512 x 512 x 20 series, {when}): written in {took:.2f} "
                f"s; GUI thread {handed:.1f} ms; longest Qt stall {gap:.0f} ms"
            )
    w.shutdown()
    collector.report()
    if sampler is not None:
        sampler.report(8)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
