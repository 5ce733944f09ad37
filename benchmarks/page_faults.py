"""Page faults per pass, with and without the malloc tuning, each in a fresh process.

    python benchmarks/page_faults.py [--runs 3]

Each run is a fresh process (the heap's history decides what malloc can reuse), with
`sammed2d.memory.reuse_freed_memory` applied as the command line applies it, or left off
with SAMMED2D_TUNE_MALLOC=0. Two workloads: a convolution whose 256 x 256 x 256 activation
(64 MB, above glibc's largest automatic mmap threshold) is made and freed on every pass,
three passes after two to warm up, faults summed (what `tests/core/test_memory.py` checks);
and the LiteMedSAM encoder on a 256 x 256 slice, three slices after one to warm up, faults
of each.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

CONVOLUTION = """
import resource, torch
from sammed2d.memory import reuse_freed_memory
reuse_freed_memory()
net = torch.nn.Sequential(
    torch.nn.Conv2d(3, 256, 3, padding=1), torch.nn.GELU(), torch.nn.Conv2d(256, 8, 1)
)
x = torch.rand(1, 3, 256, 256)
with torch.no_grad():
    for _ in range(2):
        net(x)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(3):
        net(x)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""

ENCODER = """
import resource
import numpy as np
from sammed2d.memory import reuse_freed_memory
reuse_freed_memory()
from sammed2d import load_model
from sammed2d.predictor import embed_slices
model = load_model("litemedsam", device="cpu")
image = (np.random.default_rng(0).random((256, 256, 3)) * 255).astype(np.uint8)
embed_slices(model, [image], batch_size=1, cache=None)
faults = []
for _ in range(3):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    embed_slices(model, [image], batch_size=1, cache=None)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(*faults)
"""


def faults(script: str, tuned: bool) -> list[int]:
    """The page faults `script` prints, run in a fresh process with or without the tuning."""
    env = {**os.environ, "SAMMED2D_TUNE_MALLOC": "" if tuned else "0"}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(out.stderr.strip().splitlines()[-1] if out.stderr else "failed")
    return [int(v) for v in out.stdout.split()]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    for name, script, what in (
        ("64 MB convolution", CONVOLUTION, "page faults of three passes"),
        ("litemedsam encoder", ENCODER, "page faults per slice"),
    ):
        for label, tuned in (("tuned", True), ("untuned", False)):
            runs = [", ".join(map(str, faults(script, tuned))) for _ in range(args.runs)]
            print(f"{name}, {label}: {what}, one process each: " + " | ".join(runs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
