"""bf16 against fp32 on single slices: do the 2D masks agree?

    python benchmarks/bf16_masks.py [--window abdomen]

LiteMedSAM on the TotalSegmentator example CT (../shared/data/abdomen_ct), the fourteen
structures of structures.nii.gz: on every slice a structure is on, its label's own box is
given to the fp32 and to the bf16 model (each with its own embeddings, same window), and
the Dice between the two masks is printed per structure and over all masks, and over all
masks' pixels pooled (a large organ weighs by its size). Goal from the speed issue: the
masks agree at Dice >= 0.99.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from sammed2d import load_model
from sammed2d.evaluation import dice, slice_box
from sammed2d.io import read_volume
from sammed2d.memory import reuse_freed_memory
from sammed2d.precision import cpu_has_bf16
from sammed2d.predictor import Predictor
from sammed2d.propagate import volume_slices

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "abdomen_ct"

reuse_freed_memory()  # a benchmark owns its process, as the CLI does


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--window", default="abdomen")
    parser.add_argument(
        "--fp32-decoder", action="store_true", help="decode bf16 embeddings in fp32"
    )
    args = parser.parse_args(argv)
    if not cpu_has_bf16():
        print("this CPU has no bf16 instructions: nothing to compare")
        return 0
    ct = read_volume(DATA / "ct.nii.gz")
    labels = read_volume(DATA / "structures.nii.gz").array
    names = json.loads((DATA / "structures.json").read_text())
    axis = 2
    models = {p: load_model("litemedsam", device="cpu", precision=p) for p in ("fp32", "bf16")}
    predictors = {}
    for precision, model in models.items():
        slices = volume_slices(model, ct.array, axis, ct.affine, args.window, None, "array", None)
        decoder_model = models["fp32"] if args.fp32_decoder else model
        predictors[precision] = (Predictor(decoder_model), slices)
    start = time.perf_counter()
    scores: dict[str, list[float]] = {}
    overlap, pixels = 0, 0  # over all masks pooled: each pixel counts once, wherever it is
    for index in range(ct.array.shape[axis]):
        label_slice = np.take(labels, index, axis=axis)
        present = [int(v) for v in np.unique(label_slice) if v]
        if not present:
            continue
        for predictor, slices in predictors.values():
            predictor.set_embedding(slices.embedding(index))
        for value in present:
            box = slice_box(label_slice == value)
            masks = [
                p.predict(box=box, multimask_output=False)[0][0] for p, _ in predictors.values()
            ]
            scores.setdefault(names[str(value)], []).append(dice(*masks))
            overlap += 2 * int(np.logical_and(*masks).sum())
            pixels += int(masks[0].sum() + masks[1].sum())
    elapsed = time.perf_counter() - start
    every = np.array([d for values in scores.values() for d in values])
    print(
        f"litemedsam bf16 against fp32 (decoder {'fp32' if args.fp32_decoder else 'bf16'}), "
        f"label box on every slice, window {args.window}: "
        f"{every.size} masks ({elapsed:.0f} s)"
    )
    for name, values in scores.items():
        values = np.array(values)
        print(
            f"  {name:30s} {values.size:3d} masks  mean Dice {values.mean():.4f}  "
            f"min {values.min():.4f}"
        )
    print(
        f"all masks: mean Dice {every.mean():.4f}, median {np.median(every):.4f}, "
        f"min {every.min():.4f}; at or above 0.99: {np.mean(every >= 0.99):.1%}; "
        f"pixels pooled over all masks: Dice {overlap / max(pixels, 1):.4f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
