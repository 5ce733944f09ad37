"""What napari's memory of a painted object's drawn slices costs on the GUI thread.

Where a run of such an object lands, the widget finds the object's labelled slices (for the
table's span, as for every object) and keeps a CRC of each; where a run or a click of it
starts, it finds them again and compares. Timed on a 300 x 512 x 512 label volume with an
object on 200 slices.

    python benchmarks/drawn_slices.py
"""

from __future__ import annotations

import os
import time
import types

import numpy as np

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # the widget's module imports Qt

from napari_sammed2d._widget import SegmentWidget  # noqa: E402


def main() -> int:
    labels = types.SimpleNamespace(data=np.zeros((300, 512, 512), np.uint16))
    labels.data[50:250, 100:400, 100:400] = 3
    start = time.perf_counter()
    present = SegmentWidget._labelled_slices(labels, 0, 3)
    found = time.perf_counter()
    SegmentWidget._slice_crcs(labels, 0, 3, present)
    done = time.perf_counter()
    print(
        f"300 x 512 x 512 labels, {present.size} labelled slices: labelled slices found in "
        f"{found - start:.3f} s, their CRCs {done - found:.3f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
