"""Prompt -> full-size mask latency with the image embedding already computed.

A 512 x 512 CT-like slice; one box prompt; best of N runs after a warm-up. SAM-Med2D uses
random weights at full size (same cost as the real ones).

    python benchmarks/predictor.py [--repeats 30]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from encoder import matmul_gflops

from sammed2d import Predictor, build_model, load_model
from sammed2d.memory import reuse_freed_memory
from sammed2d.phantom import ct_phantom

reuse_freed_memory()  # a benchmark owns its process, as the CLI does


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
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
        for multimask in (False, True):
            predictor.predict(box=box, multimask_output=multimask)
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                masks, _, _ = predictor.predict(box=box, multimask_output=multimask)
                times.append(time.perf_counter() - start)
            assert masks.shape[-2:] == (512, 512)
            print(
                f"{name:11s} multimask={multimask!s:5s}: best {min(times) * 1000:5.1f} ms, "
                f"median {statistics.median(times) * 1000:5.1f} ms per prompt -> 512x512 mask"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
