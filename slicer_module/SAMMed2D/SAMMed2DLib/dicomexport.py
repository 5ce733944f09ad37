"""DICOM SEG from a Slicer segmentation, without Slicer.

A volume Slicer loaded from DICOM knows its instance UIDs, and Slicer's DICOM database
gives their files. The suite's own writer (highdicom, checked with dciodvfy) makes the SEG
against that series; the module hands over the labels in Slicer's IJK with their
IJK-to-RAS matrix, which are placed on the series' own voxel grid here (Slicer and the
suite may order or flip the axes differently, never resample).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np


def write_dicom_seg(path, labels_ijk: np.ndarray, ijk_to_ras, segments, files):
    """Write `labels_ijk` (label values = `segments`' ids, on a grid with `ijk_to_ras`) as a
    DICOM SEG referencing the series made of `files`. Returns the path written."""
    from sammed2d.errors import VolumeIOError
    from sammed2d.io import onto_grid, read_volume
    from sammed2d.labelfiles import write_labels

    files = [Path(f) for f in files]
    if not files:
        raise VolumeIOError("the volume was not loaded from DICOM: no source images for a SEG")
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise VolumeIOError(f"source DICOM file {missing[0]} is missing")
    # The writer reads one series from a folder: a folder of links to exactly these files.
    with tempfile.TemporaryDirectory(prefix="sammed2d-series-") as folder:
        for n, source in enumerate(files):
            target = Path(folder) / f"{n:05d}.dcm"
            try:
                os.symlink(source.resolve(), target)
            except OSError:  # no symlinks (Windows without the privilege): copy
                shutil.copyfile(source, target)
        reference = read_volume(folder)
        placed = onto_grid(np.asarray(labels_ijk), np.asarray(ijk_to_ras, float), reference,
                           "segmentation")  # fmt: skip
        return write_labels(path, placed, reference, segments, source_series=folder)
