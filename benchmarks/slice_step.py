"""Stepped walks (`slice_step`): slices embedded and 3D Dice on the TotalSegmentator example
CT (../shared/data/abdomen_ct, 3 mm slices), the fourteen structures of `structures.nii.gz`
in one run and the liver alone, protocols A and C, steps 1-3, beside the public LiteMedSAM
chaining (which walks every slice). "Slices embedded" counts (window, slice) embeddings:
each object's window has its own.

    python benchmarks/slice_step.py [--cache DIR] [--steps 1 2 3]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from sammed2d import EmbeddingCache, load_model
from sammed2d.evaluation import dice, official_chaining, protocol_objects
from sammed2d.intensity import resolve_preset
from sammed2d.io import read_volume
from sammed2d.memory import reuse_freed_memory
from sammed2d.propagate import PropagationSettings, propagate

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "abdomen_ct"

reuse_freed_memory()  # a benchmark owns its process, as the CLI does


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=None, help="on-disk embedding cache")
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 2, 3])
    args = parser.parse_args(argv)
    ct = read_volume(DATA / "ct.nii.gz")
    gt = read_volume(DATA / "structures.nii.gz").array
    names = {int(k): v for k, v in json.loads((DATA / "structures.json").read_text()).items()}
    model = load_model("litemedsam", device="cpu")
    shared = EmbeddingCache(folder=args.cache) if args.cache else EmbeddingCache()
    window = resolve_preset(ct.array, "auto")
    official = {
        obj.id: dice(
            official_chaining(ct.array, obj, model, 2, ct.affine, window, cache=shared),
            gt == obj.id,
        )
        for obj in protocol_objects(gt, axis=2, protocol="A", names=names)
    }
    for protocol in "AC":
        objects = protocol_objects(gt, axis=2, protocol=protocol, names=names)
        for label, chosen in (("14 structures", objects), ("liver alone", objects[:1])):
            row = []
            for step in args.steps:
                # A fresh cache in front of the shared folder: each (window, slice) the run
                # asks for is one lookup (the run keeps what it has looked up).
                cache = EmbeddingCache(folder=args.cache) if args.cache else EmbeddingCache()
                result = propagate(
                    ct.array,
                    chosen,
                    model,
                    2,
                    ct.affine,
                    cache=cache,
                    settings=PropagationSettings(slice_step=step),
                )
                score = np.mean([dice(result.labels == o.id, gt == o.id) for o in chosen])
                embedded = cache.hits + cache.misses
                row.append(f"step {step}: {embedded} slices embedded, Dice {score:.3f}")
            baseline = np.mean([official[o.id] for o in chosen])
            print(f"protocol {protocol}, {label}: " + "; ".join(row) + f"; official {baseline:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
