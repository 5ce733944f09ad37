"""Image-encoder speed per slice, against this machine's fp32 matmul throughput.

Effective GFLOP/s counts the reference implementation's own work per slice (92 GFLOP for
SAM-Med2D ViT-B at 256; for LiteMedSAM the FLOPs that torch's counter finds in its
forward), so work we skip counts as speed. Ratio = effective GFLOP/s / matmul GFLOP/s.

    python benchmarks/encoder.py [--batches 1 8] [--repeats 5] [--threads N]
                                 [--precisions fp32 bf16]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from sammed2d import build_model, load_model
from sammed2d.memory import reuse_freed_memory
from sammed2d.precision import set_precision
from sammed2d.predictor import encode

SAMMED2D_REFERENCE_GFLOP = 92.0


def best_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def matmul_gflops(repeats: int) -> float:
    a, b = torch.randn(4096, 4096), torch.randn(4096, 4096)
    return 2 * 4096**3 / best_time(lambda: a @ b, repeats) / 1e9


def interleaved_best(fn, repeats: int) -> tuple[float, float]:
    """Best time of `fn` and best matmul GFLOP/s, measured alternately.

    This CPU's clock drifts by tens of percent within a minute: alternating the two and
    keeping each one's best compares them at the same (best) clock.
    """
    fn()
    best, mm = float("inf"), 0.0
    for _ in range(repeats):
        mm = max(mm, matmul_gflops(1))
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best, mm


def counted_gflop(encoder, x) -> float:
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        encoder(x)
    return counter.get_total_flops() / 1e9


reuse_freed_memory()  # a benchmark owns its process, as the CLI does


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--precisions", nargs="+", default=["fp32"], choices=["fp32", "bf16"])
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    models = {
        "sam-med2d (ViT-B, random weights)": build_model("sam-med2d"),
        "litemedsam": load_model("litemedsam", device="cpu"),
    }
    mm = matmul_gflops(args.repeats)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"fp32 matmul 4096x4096: {mm:.1f} GFLOP/s"
    )
    for name, model in models.items():
        encoder = model.image_encoder.eval()
        size = model.spec.input_size
        ours = counted_gflop(encoder, torch.randn(1, 3, size, size))
        reference = SAMMED2D_REFERENCE_GFLOP if name.startswith("sam-med2d") else ours
        for batch, precision in [(b, p) for b in args.batches for p in args.precisions]:
            x = torch.randn(batch, 3, size, size)
            set_precision(model, precision)

            def run(model=model, x=x):
                encode(model, x)  # the engine's own call, autocast included

            elapsed, mm = interleaved_best(run, args.repeats)
            per_slice = elapsed / batch
            effective = reference / per_slice
            print(
                f"{name:34s} {precision} batch {batch}: {per_slice * 1000:7.0f} ms/slice, "
                f"{effective:6.1f} effective GFLOP/s, matmul {mm:6.1f}, "
                f"ratio {effective / mm:.2f} (reference {reference:.1f} GFLOP/slice, "
                f"computed {ours:.1f})"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
