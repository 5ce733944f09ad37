"""The stand-ins `benchmarks/propagation.py` builds from the example CT (--thin, --enlarge:
geometry kept exact, the scan's own slices and noise level kept; --mr-like: another
modality's grey levels)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("scipy")
BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "propagation.py"
spec = importlib.util.spec_from_file_location("propagation_benchmark", BENCH)
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)

AFFINE = np.array([[-0.8, 0, 0, 10.0], [0, -0.8, 0, 20.0], [0, 0, 3.0, -50.0], [0, 0, 0, 1]])


def body_ct(shape=(40, 36, 6), seed=0):
    rng = np.random.default_rng(seed)
    vol = np.full(shape, -1000, np.int16)
    vol[4:-4, 4:-4] = 40 + np.rint(rng.normal(0, 12, (shape[0] - 8, shape[1] - 8, shape[2])))
    labels = np.zeros(shape, np.uint8)
    for z in range(shape[2]):  # a square that grows by 2 px a slice
        labels[10 : 14 + 2 * z, 10 : 14 + 2 * z, z] = 1
    return vol, labels


def test_thinner_keeps_the_scans_slices_between_blends_with_its_noise():
    vol, labels = body_ct()
    thin, affine, thin_labels = bench.thinner(vol, AFFINE, labels, 3)
    assert thin.shape == (40, 36, 15) and thin.dtype == vol.dtype
    # The volume starts at the first blend: slice m + 1 of the scan is at 3 m + 2.
    for m in range(5):
        assert np.array_equal(thin[:, :, 3 * m + 2], vol[:, :, m + 1])
        assert np.array_equal(thin_labels[:, :, 3 * m + 2], labels[:, :, m + 1])
    # The same world positions: voxel 3 m + 2 of the thin grid is slice m + 1 of the scan.
    for m in range(5):
        assert np.allclose(affine @ [5, 7, 3 * m + 2, 1], AFFINE @ [5, 7, m + 1, 1])
    # Blends have the scan's noise level again, not the lower one of an average.
    inside = np.s_[4:-4, 4:-4]
    scan = vol[inside].astype(float).std(axis=(0, 1)).mean()
    blends = [thin[inside][:, :, k].astype(float).std() for k in range(15) if k % 3 != 2]
    assert abs(np.mean(blends) - scan) < 0.15 * scan
    # A label follows the nearer slice: a third of the way from the 4 px square to the 6 px
    # one it is the 4 px square, two thirds of the way the 6 px one.
    assert thin_labels[:, :, 0].sum() == 16 and thin_labels[:, :, 1].sum() == 36


def test_enlarged_keeps_every_voxel_centre_where_it_was():
    vol, labels = body_ct()
    big, affine, big_labels = bench.enlarged(vol, AFFINE, labels, 4)
    assert big.shape == (160, 144, 6) and big_labels.shape == big.shape
    for i, j in [(0, 0), (10, 20), (39, 35)]:
        centre = [4 * i + 1.5, 4 * j + 1.5, 2, 1]  # the middle of the 4 x 4 block
        assert np.allclose(affine @ centre, AFFINE @ [i, j, 2, 1])
    assert np.array_equal(big_labels[::4, ::4], labels)
    assert abs(big[50:90, 50:90].astype(float).mean() - vol[12:22, 12:22].mean()) < 3


def test_the_mr_like_stand_in_is_an_mr_to_auto_and_reorders_tissues():
    from sammed2d.intensity import resolve_preset

    vol = np.full((40, 36, 6), -1000, np.int16)  # air
    vol[4:-4, 4:-4] = -100  # fat
    vol[10:20, 10:20] = 60  # an organ
    vol[24:30, 10:16] = 700  # bone
    mr = bench.mr_like(vol)
    assert mr.shape == vol.shape and mr.dtype == np.float32 and (mr >= 0).all()
    assert resolve_preset(mr, "auto") == "percentile"  # no air at -1000: not a CT
    air, fat, organ, bone = (
        np.median(mr[s])
        for s in (np.s_[:2], np.s_[5:8, 5:8], np.s_[12:18, 12:18], np.s_[25:29, 11:15])
    )
    # fat brightest, then the organ; bone darker than the organ, air darkest
    assert fat > organ > bone > air
    assert np.array_equal(mr, bench.mr_like(vol))  # the same noise every run
