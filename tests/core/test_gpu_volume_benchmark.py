"""`benchmarks/gpu_volume.py`, the GPU figures' script, run on the CPU: its stand-in volume
and one small run through both of its measures."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np

from ..conftest import ABDOMEN_CT, need

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_volume.py"
spec = importlib.util.spec_from_file_location("gpu_volume_benchmark", BENCH)
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def test_stretched_interpolates_the_ct_and_keeps_every_label():
    ct = np.stack([np.full((3, 2), 10.0 * z, np.float32) for z in range(4)], axis=2)
    out = bench.stretched(ct, 7, nearest=False)
    assert out.shape == (3, 2, 7) and out.flags.f_contiguous
    # the ends are the scan's own; between, a straight line (0, 5, 10, ..., 30)
    assert np.allclose(out[0, 0], np.linspace(0, 30, 7))
    labels = np.zeros((3, 2, 4), np.uint8)
    labels[0, 0, 1], labels[1, 1, 3] = 5, 9
    stretched = bench.stretched(labels, 10, nearest=True)
    assert stretched.dtype == np.uint8
    assert set(np.unique(stretched)) == {0, 5, 9}


def test_a_small_run_prints_both_measures(capsys):
    data = need(ABDOMEN_CT)
    argv = ["--device", "cpu", "--precisions", "fp32", "--depth", "6", "--objects", "1"]
    assert bench.main([*argv, "--batches", "2", "--data", str(data)]) == 0
    out = capsys.readouterr().out
    assert "batch 2: encoder" in out and "slices of 488 x 404" in out
    line = next(x for x in out.splitlines() if "propagation of 1 objects" in x)
    # the structure with the most slices is the liver (or another whole-scan organ): a
    # walk through six stretched slices finds it
    ours, official = re.search(
        r"mean Dice ([\d.]+) \(the official chaining ([\d.]+)\)", line
    ).groups()
    assert float(ours) > 0.8 and 0 <= float(official) <= 1
