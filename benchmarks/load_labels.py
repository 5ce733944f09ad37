"""What napari's Load labels… holds the viewer for: a label file read onto the image's grid
and written into SAM labels as one undo step, on a 300 x 512 x 512 volume (0.8 x 0.8 x 1 mm).

Run under an X server (`xvfb-run -a python benchmarks/load_labels.py`). Two files: a
drawing (two objects on every 5th slice, 2.1 M voxels) and a dense segmentation (the same
objects on all their slices, 10.6 M voxels), as gzipped NIfTI with their names file. Also
the ways of finding a label volume's values measured when choosing `label_values`, on the
dense labels in the Fortran order a NIfTI gives.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np


def _seconds(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def value_timings(labels: np.ndarray) -> str:
    from sammed2d.labelfiles import label_values

    fortran = np.asfortranarray(labels)
    c_order = _seconds(lambda: np.unique(fortran))
    counted = _seconds(lambda: np.flatnonzero(np.bincount(fortran.ravel(order="K"))))
    ours = _seconds(lambda: label_values(fortran))
    return (
        f"distinct values of 300 x 512 x 512 uint8 labels in Fortran order: np.unique "
        f"{c_order:.2f} s, np.bincount {counted:.2f} s, label_values (memory order) {ours:.2f} s"
    )


def main() -> int:
    import napari

    from napari_sammed2d._widget import SegmentWidget
    from sammed2d.io import Volume, write_volume
    from sammed2d.labelfiles import write_labels
    from sammed2d.segments import Segment

    shape, affine = (512, 512, 300), np.diag([0.8, 0.8, 1.0, 1.0])
    labels = np.zeros(shape, np.uint8)
    labels[100:300, 100:300, 50:250] = 1
    labels[300:400, 300:400, 20:280] = 2
    segments = [Segment(1, "liver", (221, 130, 101)), Segment(2, "spleen", (157, 108, 162))]
    sparse = labels.copy()
    sparse[:, :, [k for k in range(shape[2]) if k % 5]] = 0
    print(value_timings(labels))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        grid = Volume(labels, affine)
        ct = write_volume(folder / "ct.nii.gz", np.zeros(shape, np.int16), grid)
        files = {
            "every 5th slice": write_labels(folder / "sparse.nii.gz", sparse, grid, segments),
            "every slice": write_labels(folder / "dense.nii.gz", labels, grid, segments),
        }
        viewer = napari.Viewer(show=False)
        widget = SegmentWidget(viewer)
        try:
            viewer.open(str(ct), plugin="napari-sammed2d")
            widget.ensure_prompt_layers()
            layer = viewer.layers["SAM labels"]
            for what, path in files.items():
                start = time.perf_counter()
                widget.load_labels(path)
                loaded = time.perf_counter() - start
                voxels = int((layer.data > 0).sum())
                start = time.perf_counter()
                layer.undo()
                undone = time.perf_counter() - start
                print(
                    f"300 x 512 x 512, 2 objects on {what} ({voxels / 1e6:.1f} M voxels): "
                    f"Load labels {loaded:.2f} s, its undo {undone:.2f} s"
                )
        finally:
            widget.shutdown()
            viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
