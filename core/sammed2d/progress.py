"""Progress of long commands, on a terminal and in logs.

On a terminal a tqdm bar; elsewhere (a job scheduler's log, a pipe) plain lines, one every
`interval` seconds and one at the end, each with the rate and the time left, so a batch or
propagation that runs for minutes is never silent.
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager


def _line(desc: str, done: int, total: int, unit: str, elapsed: float) -> str:
    rate = done / elapsed if elapsed > 0 else 0.0
    text = f"{desc}: {done}/{total} {unit}s, {elapsed:.0f} s"
    # No rate from under a second: a reporter made at its first step (one per epoch in
    # `finetune`) would print thousands of steps per second and 0 s left.
    if 0 < done < total and rate > 0 and elapsed >= 1.0:
        text += f", {rate:.2f} {unit}/s, about {(total - done) / rate:.0f} s left"
    return text


@contextmanager
def progress_reporter(desc: str, unit: str = "slice", stream=None, interval: float = 10.0):
    """Yields a (done, total) callback that reports to `stream` (default stderr)."""
    stream = stream if stream is not None else sys.stderr
    if stream.isatty():
        from tqdm import tqdm

        bar = tqdm(desc=desc, total=0, unit=unit, file=stream, leave=False)

        def update(done: int, total: int) -> None:
            if bar.total != total:
                bar.total = total
            bar.n = done
            bar.refresh()

        try:
            yield update
        finally:
            bar.close()
        return

    start = time.perf_counter()
    state = {"last": -interval, "done": 0, "total": 0, "shown": None}

    def update(done: int, total: int) -> None:
        now = time.perf_counter() - start
        state["done"], state["total"] = done, total
        due = now - state["last"] >= interval or (total and done >= total)
        # Nothing before the first finished step: an error up front stays a single line.
        if due and done > 0 and state["shown"] != (done, total):
            state["last"], state["shown"] = now, (done, total)
            print(_line(desc, done, total, unit, now), file=stream, flush=True)

    try:
        yield update
    finally:
        if state["shown"] is not None and state["done"] < state["total"]:
            elapsed = time.perf_counter() - start
            print(
                _line(desc, state["done"], state["total"], unit, elapsed) + " (stopped)",
                file=stream,
                flush=True,
            )
