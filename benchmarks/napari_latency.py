"""How the napari plugin feels: Qt event-loop stalls and click-to-mask time.

Run under an X server (`xvfb-run -a python benchmarks/napari_latency.py`). A 10 ms QTimer
heartbeat records the longest gap in the Qt event loop while (1) a click is served on a
slice not yet embedded, with background embedding starting after it, and (2) a
propagation runs; then click -> mask on screen is timed on slices already embedded.
Uses the TotalSegmentator example CT from ../shared (LiteMedSAM, the default model).
Also printed: the engine's own time per click in the viewer; with --sample-stalls, where
the GUI thread was while the heartbeat was late.
"""

from __future__ import annotations

import argparse
import collections
import statistics
import sys
import threading
import time
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CT = ROOT.parent / "shared" / "data" / "abdomen_ct" / "ct.nii.gz"


class Heartbeat:
    def __init__(self):
        from qtpy.QtCore import QTimer

        self.gaps = []
        self.last = time.perf_counter()
        self.timer = QTimer()
        self.timer.setInterval(10)
        self.timer.timeout.connect(self.beat)
        self.timer.start()

    def beat(self):
        now = time.perf_counter()
        self.gaps.append(now - self.last)
        self.last = now

    def reset(self, phase: str = ""):
        self.phase = phase
        self.gaps.clear()
        self.last = time.perf_counter()
        self.armed = True


class StallSampler:
    """Where the GUI thread is while the heartbeat is late (> 50 ms), sampled every 10 ms
    from a side thread once the heartbeat has been reset: napari's work or ours?"""

    def __init__(self, beat: Heartbeat) -> None:
        self.beat, self.main = beat, threading.get_ident()
        self.counts = collections.defaultdict(collections.Counter)
        threading.Thread(target=self._watch, daemon=True).start()

    def _watch(self) -> None:
        while True:
            time.sleep(0.01)
            if getattr(self.beat, "armed", False) and time.perf_counter() - self.beat.last > 0.05:
                frame = sys._current_frames().get(self.main)
                if frame is not None:
                    stack = traceback.extract_stack(frame)[-4:][::-1]
                    where = " <- ".join(f"{f.name} ({f.filename.split('/')[-1]})" for f in stack)
                    self.counts[self.beat.phase][where] += 1

    def report(self, top: int = 4) -> None:
        for phase, counts in self.counts.items():
            total = sum(counts.values())
            print(f"GUI thread during stalls, {phase} ({total} samples of 10 ms), top {top}:")
            for where, count in counts.most_common(top):
                print(f"  {count:4d}  {where}")


class CollectorLog:
    """Python's cyclic garbage collector pauses every thread while it runs; its full
    (generation 2) passes over napari's heap, per phase."""

    def __init__(self, beat: Heartbeat) -> None:
        import gc

        self.beat, self.passes, self._start = beat, collections.defaultdict(list), 0.0
        gc.callbacks.append(self._note)

    def _note(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        elif info["generation"] == 2:
            self.passes[getattr(self.beat, "phase", "")].append(time.perf_counter() - self._start)

    def report(self) -> None:
        for phase, passes in self.passes.items():
            ms = ", ".join(f"{p * 1000:.0f}" for p in passes)
            print(f"full garbage-collector passes, {phase}: {ms} ms")


def pump(seconds=None, until=None, timeout=300.0):
    """Run the Qt event loop as napari does: blocked (GIL released) until an event comes,
    here at least the heartbeat every 10 ms."""
    from qtpy.QtCore import QEventLoop
    from qtpy.QtWidgets import QApplication

    end = time.perf_counter() + (seconds if seconds is not None else timeout)
    while time.perf_counter() < end:
        QApplication.processEvents(QEventLoop.ProcessEventsFlag.WaitForMoreEvents)
        if until is not None and until():
            return True
    return until is None


def box_prompt(shapes, z, box):
    r0, c0, r1, c1 = box
    shapes.add_rectangles(np.array([[z, r0, c0], [z, r0, c1], [z, r1, c1], [z, r1, c0]], float))


def add_stall_option(parser) -> None:
    parser.add_argument(
        "--sample-stalls", action="store_true", help="print where the GUI thread was in stalls"
    )


def docked_viewer(sample_stalls: bool):
    """A shown viewer with the widget docked, and the heartbeat, stall sampler (or None)
    and garbage-collector log that watch its event loop."""
    import napari

    from napari_sammed2d._widget import SegmentWidget

    viewer = napari.Viewer(show=True)
    w = SegmentWidget(viewer)
    viewer.window.add_dock_widget(w)
    beat = Heartbeat()
    return viewer, w, beat, StallSampler(beat) if sample_stalls else None, CollectorLog(beat)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clicks", type=int, default=10)
    add_stall_option(parser)
    args = parser.parse_args()
    viewer, w, beat, sampler, collector = docked_viewer(args.sample_stalls)
    # The engine's own time per click, in the viewer (the rest is napari's and Qt's).
    engine_ms = []
    segment = w.engine.segment

    def timed_segment(request):
        start = time.perf_counter()
        try:
            return segment(request)
        finally:
            engine_ms.append((time.perf_counter() - start) * 1000)

    w.engine.segment = timed_segment
    # 0. The model loads in the click thread as soon as the widget has an image.
    start = time.perf_counter()
    (image,) = viewer.open(str(CT), plugin="napari-sammed2d")
    opened = time.perf_counter() - start
    beat.reset("model load")
    pump(until=lambda: w.engine.ready, timeout=120)
    loaded = time.perf_counter() - start
    load_gap = max(beat.gaps)
    pump(0.3)
    points, shapes, labels = w.ensure_prompt_layers()
    z = 15
    viewer.dims.set_point(0, image.data_to_world((z, 0, 0))[0])
    pump(0.3)

    # 1. First click on a slice not yet embedded: the embedding happens off the Qt thread.
    beat.reset("first click")
    start = time.perf_counter()
    box_prompt(shapes, z, (40, 20, 85, 70))
    pump(until=lambda: (labels.data[z] > 0).any())
    first = time.perf_counter() - start
    pump(3.0)  # background embedding of the other slices runs meanwhile
    first_gap = max(beat.gaps)

    # 2. Clicks on embedded slices (wait until the neighbours are embedded).
    pump(until=lambda: w._prefetch is None or not w._prefetch.is_alive(), timeout=120)
    # A box inside the liver: under `auto` each object takes the window its first box asks
    # for, and a box that holds bowel gas asks for the lung window, whose slices the
    # background (soft-tissue) embedding has not made; this click measures embedded slices.
    times = []
    engine_ms.clear()
    for n in range(args.clicks):
        zz = 5 + n % 10  # slices without object 1 (on slice 15)
        viewer.dims.set_point(0, image.data_to_world((zz, 0, 0))[0])
        pump(0.05)
        oid = 2 + n
        w.object_spin.setValue(oid)
        beat.reset("embedded clicks")
        start = time.perf_counter()
        box_prompt(shapes, zz, (40, 60, 70, 90))
        pump(until=lambda zz=zz, oid=oid: (labels.data[zz] == oid).any(), timeout=30)
        times.append(time.perf_counter() - start)
    click_gap = max(beat.gaps)
    engine_click = statistics.median(engine_ms)
    windows = sorted({w.table.objects[2 + n].window for n in range(args.clicks)})

    # 3. A propagation of the first object.
    w.object_spin.setValue(1)
    beat.reset("propagation")
    start = time.perf_counter()
    w.propagate_object()
    pump(until=lambda: w._busy is None, timeout=600)
    propagation = time.perf_counter() - start
    prop_gap = max(beat.gaps)
    w.shutdown()

    print("napari plugin, LiteMedSAM, TotalSegmentator example CT (122 x 101 x 30)")
    print(
        f"image opened in {opened:.2f} s; model loaded in the background {loaded:.2f} s after "
        f"the open began; longest Qt stall meanwhile {load_gap * 1000:.0f} ms"
    )
    print(
        f"first click (slice not yet embedded) -> mask: {first:.2f} s; "
        f"longest Qt stall {first_gap * 1000:.0f} ms"
    )
    print(
        f"click -> mask on an embedded slice: median {statistics.median(times) * 1000:.0f} ms, "
        f"max {max(times) * 1000:.0f} ms over {len(times)} clicks; "
        f"longest Qt stall {click_gap * 1000:.0f} ms; objects' windows: {', '.join(windows)}"
    )
    print(f"  of which the engine's call (model and post-processing): median {engine_click:.0f} ms")
    print(f"propagation: {propagation:.1f} s; longest Qt stall {prop_gap * 1000:.0f} ms")
    collector.report()
    if sampler is not None:
        sampler.report()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
