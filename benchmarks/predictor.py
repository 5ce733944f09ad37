"""Prompt -> full-size mask latency with the image embedding already computed.

A 512 x 512 CT-like slice; one box prompt; best of N runs after a warm-up. SAM-Med2D uses
random weights at full size (same cost as the real ones). Each model runs eagerly (the CLI)
and as traced graphs (napari, Slicer and the server: `sammed2d.graphs`). With --busy-thread
a Python thread spins beside the predictor the whole time, as a GUI thread between its events
can: eager operators each wait for Python's lock, graphs do not.

    python benchmarks/predictor.py [--repeats 30] [--busy-thread]
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

import numpy as np
import torch
from encoder import matmul_gflops

from sammed2d import Predictor, build_model, graphs, load_model
from sammed2d.memory import reuse_freed_memory
from sammed2d.phantom import ct_phantom

reuse_freed_memory()  # a benchmark owns its process, as the CLI does


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument(
        "--busy-thread", action="store_true", help="a spinning Python thread beside"
    )
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    ct, labels, _, _ = ct_phantom(shape=(512, 512, 3))
    image = ct[:, :, 1]
    rows, cols = np.nonzero(labels[:, :, 1] == 1)
    box = [cols.min(), rows.min(), cols.max(), rows.max()]
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, 512 x 512 slice; "
        f"fp32 matmul 4096x4096: {matmul_gflops(3):.1f} GFLOP/s (this CPU's clock drifts)"
    )
    for name, model in [
        ("sam-med2d", build_model("sam-med2d")),
        ("litemedsam", load_model("litemedsam", device="cpu")),
    ]:
        predictor = Predictor(model)
        predictor.set_image(image, preset="abdomen")
        for mode in ("eager", "graphs"):
            graphs.enable(model, mode == "graphs")
            for multimask in (False, True):
                predictor.predict(box=box, multimask_output=multimask)
                times = _timed(predictor, box, multimask, args.repeats, args.busy_thread)
                busy = ", busy thread" if args.busy_thread else ""
                print(
                    f"{name:11s} {mode:6s} multimask={multimask!s:5s}{busy}: best "
                    f"{min(times) * 1000:6.1f} ms, median {statistics.median(times) * 1000:6.1f} "
                    "ms per prompt -> 512x512 mask"
                )
    return 0


def _timed(predictor, box, multimask, repeats, busy) -> list[float]:
    stop = threading.Event()

    def spin():
        while not stop.is_set():
            pass

    spinner = threading.Thread(target=spin, daemon=True)
    if busy:
        spinner.start()
        repeats = min(repeats, 5)  # eager calls take seconds each beside the spinner
    times = []
    try:
        for _ in range(repeats):
            start = time.perf_counter()
            masks, _, _ = predictor.predict(box=box, multimask_output=multimask)
            times.append(time.perf_counter() - start)
    finally:
        stop.set()
    assert masks.shape[-2:] == (512, 512)
    return times


if __name__ == "__main__":
    raise SystemExit(main())
