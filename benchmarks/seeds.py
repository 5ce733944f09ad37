"""Propagation from labels drawn on some slices (`sammed2d propagate --seeds`, napari's
Propagate on painted labels), on the TotalSegmentator example CT (../shared/data/abdomen_ct).

Every N-th slice of the reference labels (all fourteen structures of `structures.nii.gz`,
from slice 0) is kept as if drawn by hand; the rest is left to the model, all structures
in one run as the command line does it: "ours" also walks past each structure's first and
last drawn slice, "--between" stays between them. Baseline in the same run: shape-based
interpolation between the drawn slices (each slice's signed distance map, linearly
blended; nothing past the first and last drawn slice), what "fill between slices" tools
do. Prints per-structure 3D Dice, the mean and the time, for each N.

    python benchmarks/seeds.py [--data DIR] [--labels structures.nii.gz] [--every 3 5 8]
                               [--cache DIR] [--mr-like] [--interpolate-drawn MM]
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from sammed2d import EmbeddingCache, load_model
from sammed2d.evaluation import dice
from sammed2d.io import read_volume
from sammed2d.memory import reuse_freed_memory
from sammed2d.objects import PropagationSettings, objects_from_labels
from sammed2d.propagate import interpolate, propagate

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parent.parent / "shared" / "data" / "abdomen_ct"

reuse_freed_memory()  # a benchmark owns its process, as the CLI does


def interpolated(drawn: np.ndarray, axis: int) -> np.ndarray:
    """Shape-based interpolation of a binary mask between its labelled slices (the
    engine's own, `propagate.interpolate`, on the drawn masks alone)."""
    moved = np.moveaxis(drawn, axis, 0)
    out = {k: (moved[k], 1.0, None) for k in range(moved.shape[0]) if moved[k].any()}
    given = sorted(out)
    for a, b in zip(given, given[1:]):
        interpolate(out, a, b)
    filled = np.zeros_like(moved)
    for k, (mask, *_) in out.items():
        filled[k] = mask
    return np.moveaxis(filled, 0, axis)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--labels", default="structures.nii.gz", help="labels file in --data")
    parser.add_argument("--model", default="litemedsam")
    parser.add_argument("--every", type=int, nargs="+", default=[3, 5, 8], help="slices apart")
    parser.add_argument("--axis", type=int, default=2)
    parser.add_argument("--cache", type=Path, default=None, help="on-disk embedding cache")
    parser.add_argument(
        "--mr-like",
        action="store_true",
        help="the CT's grey levels remapped to an MR's (benchmarks/propagation.py `mr_like`)",
    )
    parser.add_argument(
        "--interpolate-drawn",
        type=float,
        default=PropagationSettings.interpolate_drawn,
        help="mm (the setting; 0: the model walks every gap)",
    )
    args = parser.parse_args(argv)
    settings = PropagationSettings(interpolate_drawn=args.interpolate_drawn)

    volume = read_volume(args.data / "ct.nii.gz")
    if args.mr_like:
        import sys

        sys.path.insert(0, str(HERE))
        from propagation import mr_like

        volume.array = mr_like(volume.array)
    truth = read_volume(args.data / args.labels).array.astype(np.int32)
    names_file = args.data / (args.labels.split(".")[0] + ".json")
    names = json.loads(names_file.read_text()) if names_file.exists() else {}
    model = load_model(args.model)
    cache = EmbeddingCache(folder=args.cache) if args.cache else EmbeddingCache()
    axis = args.axis
    ids = [int(i) for i in np.unique(truth) if i]
    mm = abs(float(volume.spacing[axis]))
    what = "MR-like grey levels, " if args.mr_like else ""
    print(
        f"{args.model}, {what}{len(ids)} structures of {args.labels}, slices {mm:g} mm apart, "
        f"interpolate_drawn {args.interpolate_drawn:g} mm"
    )
    for every in args.every:
        drawn = np.zeros_like(truth)
        keep = [slice(None)] * 3
        keep[axis] = slice(0, None, every)
        drawn[tuple(keep)] = truth[tuple(keep)]
        objects = objects_from_labels(drawn, axis)
        start = time.perf_counter()
        where = dict(affine=volume.affine, preset="auto", settings=settings, cache=cache)
        result = propagate(volume.array, objects, model, axis, **where)
        seconds = time.perf_counter() - start
        ranged = [replace(o, range=(min(o.slices), max(o.slices))) for o in objects]
        inside = propagate(volume.array, ranged, model, axis, **where)
        ours, between, base = [], [], []
        print(f"drawn every {every} slices ({every * mm:g} mm):")
        for oid in ids:
            o = dice(result.labels == oid, truth == oid)
            w = dice(inside.labels == oid, truth == oid)
            b = dice(interpolated(drawn == oid, axis), truth == oid)
            ours.append(o)
            between.append(w)
            base.append(b)
            print(
                f"  {names.get(str(oid), oid)!s:30} ours {o:.3f}  --between {w:.3f}  "
                f"interpolation {b:.3f}"
            )
        print(
            f"every {every} ({every * mm:g} mm): mean of {len(ids)} ours {np.mean(ours):.3f}  "
            f"--between {np.mean(between):.3f}  interpolation {np.mean(base):.3f}  "
            f"({seconds:.1f} s)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
