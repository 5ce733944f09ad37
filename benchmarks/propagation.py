"""3D propagation accuracy on the TotalSegmentator example CT (../shared/data/abdomen_ct).

Protocols, with boxes taken from the reference labels:
  A: one box on the organ's middle slice, plus the organ's slice range;
  B: one box on the middle slice, no range (propagation must stop by itself);
  C: boxes on three slices (a quarter, half and three quarters through the organ), plus range.
Prints per-organ 3D Dice and the mean for each protocol.

    python benchmarks/propagation.py [--data DIR] [--model litemedsam] [--cache DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import fields
from pathlib import Path

import numpy as np

from sammed2d import EmbeddingCache, load_model
from sammed2d.evaluation import dice, protocol_objects
from sammed2d.io import read_volume
from sammed2d.propagate import PropagationSettings, propagate

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parent.parent / "shared" / "data" / "abdomen_ct"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--model", default="litemedsam")
    parser.add_argument("--cache", type=Path, default=None, help="on-disk embedding cache")
    parser.add_argument("--protocols", default="ABC")
    parser.add_argument("--orientation", default="radiological", choices=["radiological", "array"])
    parser.add_argument("--window", default="abdomen")
    for f in fields(PropagationSettings):
        kind = type(f.default)
        if kind is bool:
            parser.add_argument(f"--{f.name.replace('_', '-')}", type=lambda v: v == "on")
        else:
            parser.add_argument(f"--{f.name.replace('_', '-')}", type=kind, default=None)
    args = parser.parse_args(argv)
    if not (args.data / "ct.nii.gz").exists():
        print(f"no data at {args.data}", file=sys.stderr)
        return 2
    overrides = {
        f.name: getattr(args, f.name)
        for f in fields(PropagationSettings)
        if getattr(args, f.name) is not None
    }
    settings = PropagationSettings(**overrides)
    ct = read_volume(args.data / "ct.nii.gz")
    gt = read_volume(args.data / "labels.nii.gz").array
    names = {int(k): v for k, v in json.loads((args.data / "labels.json").read_text()).items()}
    model = load_model(args.model, device="cpu")
    cache = EmbeddingCache(folder=args.cache) if args.cache else EmbeddingCache(max_bytes=4 << 30)
    print(f"model {args.model}, orientation {args.orientation}, window {args.window}, {settings}")
    for protocol in args.protocols:
        start = time.perf_counter()
        objects = protocol_objects(gt, axis=2, protocol=protocol, names=names)
        result = propagate(
            ct.array,
            objects,
            model,
            axis=2,
            affine=ct.affine,
            preset=args.window,
            orientation=args.orientation,
            settings=settings,
            cache=cache,
        )
        scores = {oid: dice(result.labels == oid, gt == oid) for oid in names}
        line = "  ".join(f"{names[k]} {v:.3f}" for k, v in scores.items())
        mean = float(np.mean(list(scores.values())))
        print(
            f"protocol {protocol}: {line}  mean {mean:.3f}  ({time.perf_counter() - start:.1f} s)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
