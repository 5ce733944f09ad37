"""What remembering a painted object's drawn slices (`sammed2d.drawn`) costs on the GUI
thread of napari or Slicer.

Where a run of such an object lands, the front end finds the object's labelled slices (for
napari's table span, as for every object) and keeps a CRC of each; where a run or a click
of it starts, it finds them again and compares. Timed on a 300 x 512 x 512 label volume
with an object on 200 slices.

    python benchmarks/drawn_slices.py
"""

from __future__ import annotations

import time

import numpy as np

from sammed2d.drawn import DrawnSlices, labelled_slices


def _median_time(call, repeats=5) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main() -> int:
    labels = np.zeros((300, 512, 512), np.uint16)
    labels[50:250, 100:400, 100:400] = 3
    drawn = DrawnSlices()
    present = labelled_slices(labels, 3, 0)
    found = _median_time(lambda: labelled_slices(labels, 3, 0))
    noted = _median_time(lambda: drawn.note_landed("object", labels, 3, 0, present))
    compared = _median_time(lambda: drawn.note_painted("object", labels, 3, 0))
    print(
        f"300 x 512 x 512 labels, {present.size} labelled slices (median of 5): labelled "
        f"slices found in {found:.3f} s, their CRCs {noted:.3f} s, both at the next run "
        f"{compared:.3f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
