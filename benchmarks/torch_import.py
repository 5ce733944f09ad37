"""How long a GUI thread waits while a worker thread imports torch.

A heartbeat thread sleeps 5 ms at a time and records how late it wakes; another thread
imports torch, plainly or with `sammed2d.torch_import` (libraries mapped without holding
Python's lock). Each run is a fresh interpreter.

    python benchmarks/torch_import.py [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = """
import json, sys, threading, time
gaps, stop = [], False
def beat():
    last = time.perf_counter()
    while not stop:
        time.sleep(0.005)
        now = time.perf_counter()
        gaps.append(now - last)
        last = now
def work():
    t0 = time.perf_counter()
    if sys.argv[1] == "preloaded":
        from sammed2d.torch_import import import_torch
        import_torch()
    else:
        import torch
    took.append(time.perf_counter() - t0)
took = []
heart = threading.Thread(target=beat)
heart.start()
time.sleep(0.05)
worker = threading.Thread(target=work)
worker.start()
worker.join()
stop = True
heart.join()
print(json.dumps({"import_s": took[0], "longest_ms": 1000 * max(gaps)}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    for mode in ("plain", "preloaded"):
        rows = []
        for _ in range(args.runs):
            out = subprocess.run(
                [sys.executable, "-c", CHILD, mode], capture_output=True, text=True, check=True
            )
            rows.append(json.loads(out.stdout))
        stalls = ", ".join(f"{r['longest_ms']:.0f}" for r in rows)
        imports = ", ".join(f"{r['import_s']:.2f}" for r in rows)
        print(
            f"import torch in a worker thread, {mode:9s}: import {imports} s; "
            f"longest wait of a 5 ms heartbeat {stalls} ms"
        )


if __name__ == "__main__":
    main()
