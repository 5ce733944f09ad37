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


def main() -> int:
    labels = np.zeros((300, 512, 512), np.uint16)
    labels[50:250, 100:400, 100:400] = 3
    drawn = DrawnSlices()
    start = time.perf_counter()
    present = labelled_slices(labels, 3, 0)
    found = time.perf_counter()
    drawn.note_landed("object", labels, 3, 0, present)
    noted = time.perf_counter()
    drawn.note_painted("object", labels, 3, 0)
    compared = time.perf_counter()
    print(
        f"300 x 512 x 512 labels, {present.size} labelled slices: labelled slices found in "
        f"{found - start:.3f} s, their CRCs {noted - found:.3f} s, "
        f"compared at the next run {compared - noted:.3f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
