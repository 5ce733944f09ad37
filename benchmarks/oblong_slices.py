"""Slices whose pixels are far from square: shown to the model stretched to square pixels
(today) or as stored, on coronal slices of the TotalSegmentator example CT enlarged 4x
in-plane (0.75 x 0.75 x 3 mm voxels, so a coronal slice has 0.75 x 3 mm pixels).

Two tasks on every 4th coronal slice (3 mm apart), for the four organs of `labels.nii.gz`
and, with --structures, the fourteen of `structures.nii.gz`:
  box: the label's own box on each slice, one mask per slice (`segment_slice`);
  A:   protocol A walked along the coronal axis (the middle slice's box and the range).
"as stored" is the same call with an affine of the same directions and unit spacing, so
only the stretch differs; the official LiteMedSAM chaining (which shows slices as stored)
is beside it.

    python benchmarks/oblong_slices.py [--cache DIR] [--structures] [--enlarge 4]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from sammed2d import EmbeddingCache, load_model
from sammed2d.evaluation import dice, official_chaining, protocol_objects, slice_box
from sammed2d.io import read_volume
from sammed2d.memory import reuse_freed_memory
from sammed2d.orientation import slice_of, slice_view
from sammed2d.propagate import PropagationSettings, SlicePrompt, propagate, segment_slice

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from propagation import enlarged  # noqa: E402

DATA = HERE.parent.parent / "shared" / "data" / "abdomen_ct"
AXIS = 1  # coronal

reuse_freed_memory()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--cache", help="embedding cache folder (reruns are fast)")
    parser.add_argument("--structures", action="store_true", help="the fourteen structures")
    parser.add_argument("--enlarge", type=int, default=4)
    args = parser.parse_args(argv)
    ct = read_volume(args.data / "ct.nii.gz")
    labels_file = "structures.nii.gz" if args.structures else "labels.nii.gz"
    gt = read_volume(args.data / labels_file).array
    names_file = args.data / labels_file.replace(".nii.gz", ".json")
    names = (
        {int(k): v for k, v in json.loads(names_file.read_text()).items()}
        if names_file.exists()
        else {1: "liver", 2: "spleen", 3: "kidney_left", 4: "aorta"}
    )
    volume, affine, gt = enlarged(ct.array, ct.affine, gt, args.enlarge)
    unit = affine.copy()
    unit[:3, :3] /= np.linalg.norm(affine[:3, :3], axis=0)  # same directions, 1 mm voxels
    step = round(3.0 / float(np.linalg.norm(affine[:3, AXIS])))
    settings = PropagationSettings(slice_step=step)
    model = load_model("litemedsam", device="cpu")
    cache = EmbeddingCache(folder=args.cache) if args.cache else EmbeddingCache(max_bytes=4 << 30)
    print(
        f"litemedsam fp32, the example CT enlarged {args.enlarge}x in-plane {volume.shape}, "
        f"coronal slices (axis {AXIS}) every {step}: stretch {slice_view(affine, AXIS).stretch}"
        f" (rows, cols) today, (1, 1) as stored"
    )
    objects = protocol_objects(gt, axis=AXIS, protocol="A", names=names)
    width = max(len(names.get(o.id, "")) for o in objects)
    rows = {}
    start = time.perf_counter()
    for obj in objects:
        truth = gt == obj.id
        row = {}
        lo, hi = obj.range
        walked_slices = np.arange(lo, hi + 1, step)
        for label, geometry in (("square", affine), ("stored", unit)):
            found = np.zeros_like(truth)
            for index in walked_slices:
                where = slice_of(truth, index, AXIS)
                if not where.any():
                    continue
                prompt = SlicePrompt(box=slice_box(where))
                mask, _ = segment_slice(
                    volume, index, prompt, model, AXIS, geometry, cache=cache, settings=settings
                )
                found[(slice(None),) * AXIS + (index,)] = mask
            on = truth.take(walked_slices, AXIS)
            row[f"box {label}"] = dice(found.take(walked_slices, AXIS), on)
            walked = propagate(
                volume, [obj], model, axis=AXIS, affine=geometry, settings=settings, cache=cache
            )
            row[f"A {label}"] = dice(walked.labels == obj.id, truth)
        baseline = official_chaining(volume, obj, model, AXIS, unit, "abdomen", cache=cache)
        row["official"] = dice(baseline, truth)
        rows[obj.id] = row
        print(
            f"  {names.get(obj.id, str(obj.id)):{width}s}  "
            + "  ".join(f"{k} {v:.3f}" for k, v in row.items()),
            flush=True,
        )
    keys = next(iter(rows.values())).keys()
    means = {k: float(np.mean([r[k] for r in rows.values()])) for k in keys}
    print(
        f"mean of {len(rows)}: "
        + "  ".join(f"{k} {v:.3f}" for k, v in means.items())
        + f"  ({time.perf_counter() - start:.0f} s)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
