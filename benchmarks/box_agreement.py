"""Box agreement on single slices: the label's own box on every slice of each of the
fourteen structures of the TotalSegmentator example CT (../shared/data/abdomen_ct), as
`sammed2d evaluate --prompt box` scores it (3D Dice of the stacked slices), LiteMedSAM.

Columns: the public recipe (the single mask, one soft-tissue window for the CT), ours
without the check (the single mask, each structure in the window its box asks for), and
ours (the default `box_agreement`).

    python benchmarks/box_agreement.py [--cache DIR]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sammed2d import EmbeddingCache, load_model
from sammed2d.batch import evaluate_volume
from sammed2d.io import read_volume
from sammed2d.memory import reuse_freed_memory
from sammed2d.propagate import PropagationSettings

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "abdomen_ct"

reuse_freed_memory()  # a benchmark owns its process, as the CLI does


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=None, help="on-disk embedding cache")
    args = parser.parse_args(argv)
    ct = read_volume(DATA / "ct.nii.gz")
    gt = read_volume(DATA / "structures.nii.gz")
    names = json.loads((DATA / "structures.json").read_text())
    model = load_model("litemedsam", device="cpu")
    cache = EmbeddingCache(folder=args.cache) if args.cache else EmbeddingCache(max_bytes=2 << 30)
    unchecked = PropagationSettings(box_agreement=None)
    runs = {
        "public": evaluate_volume(ct, gt, "box", model=model, cache=cache, window="abdomen",
                                  settings=unchecked),
        "unchecked": evaluate_volume(ct, gt, "box", model=model, cache=cache, settings=unchecked),
        "ours": evaluate_volume(ct, gt, "box", model=model, cache=cache),
    }  # fmt: skip
    default = PropagationSettings().box_agreement
    print(f"label box on every slice, 3D Dice; ours: box_agreement {default}")
    print(f"  {'structure':30s} public  unchecked  ours")
    for oid in sorted(runs["ours"]):
        row = "  ".join(f"{runs[k][oid]:.3f}" for k in runs)
        print(f"  {names[str(oid)]:30s} {row}")
    means = "  ".join(f"{sum(r.values()) / len(r):.3f}" for r in runs.values())
    print(f"  {'mean':30s} {means}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
