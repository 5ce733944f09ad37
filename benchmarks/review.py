"""Slices to check after a propagation: do they point at the wrong slices, and does one
correction there pay? The TotalSegmentator example CT (../shared/data/abdomen_ct), all
fourteen structures of `structures.nii.gz`, LiteMedSAM.

1. Flags. Each structure is propagated (protocols A and B, as in propagation.py), and each
   slice with a mask, other than the prompted one, gets its true Dice. Each way of ranking
   the slices is scored per structure: is the slice with the lowest true Dice among the
   first three ranked, what is the mean Dice of those three, and what share of the slices
   under Dice 0.5 they hold (of at most three). "random" ranks by chance (seeded), the
   baseline a person has without flags.
2. One correction. Protocol A, then one more box, the label's own box on one slice (what a
   person would draw there), and the walk run again from both boxes: on the first slice
   `slices_to_check` names, on a slice picked at random among those with a mask, and on the
   slice with the lowest true Dice (the best a person could pick, knowing the truth). Where
   the chosen slice does not hold the structure (a mask past its end), no box is drawn and
   the structure keeps its protocol-A result. Printed beside the public LiteMedSAM chaining
   (one box, range given) run on the same embeddings.

    python benchmarks/review.py [--data DIR] [--cache DIR] [--mr-like] [--enlarge N] [--thin N]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from sammed2d import EmbeddingCache, load_model
from sammed2d.evaluation import dice, official_chaining, protocol_objects, slice_box
from sammed2d.intensity import resolve_preset
from sammed2d.io import read_volume
from sammed2d.memory import reuse_freed_memory
from sammed2d.objects import SlicePrompt
from sammed2d.propagate import propagate
from sammed2d.review import slices_to_check

sys.path.insert(0, str(Path(__file__).resolve().parent))
from propagation import stand_in  # noqa: E402

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parent.parent / "shared" / "data" / "abdomen_ct"
FIRST = 3  # how many flagged slices a person looks at

reuse_freed_memory()  # a benchmark owns its process, as the CLI does


def _slice_dice(pred: np.ndarray, true: np.ndarray) -> dict[int, float]:
    """Dice per slice (axis 2) where the prediction has a mask."""
    out = {}
    for z in np.flatnonzero(pred.any(axis=(0, 1))):
        p, t = pred[:, :, z], true[:, :, z]
        out[int(z)] = 2.0 * np.count_nonzero(p & t) / (p.sum() + t.sum())
    return out


def _rankings(result, obj, rng):
    """Slices ranked most suspect first, by each rule, for one object's propagation."""
    checked = slices_to_check(result.labels, obj.id, 2, result.scores[obj.id], obj.slices, None)
    masked = [c for c in checked if not c.empty]

    def by(key):
        return [c.index for c in sorted(masked, key=lambda c: (key(c), c.index))]

    shuffled = [c.index for c in masked]
    rng.shuffle(shuffled)
    return {
        "slices_to_check (IoU + neighbour)": [c.index for c in masked],
        "predicted IoU alone": by(lambda c: 1.0 if c.predicted_iou is None else c.predicted_iou),
        "neighbour Dice alone": by(lambda c: c.neighbour_dice),
        "random (no flags)": shuffled,
    }


def flags(model, ct, gt, names, cache, protocols) -> None:
    rng = np.random.default_rng(0)
    for protocol in protocols:
        objects = protocol_objects(gt, axis=2, protocol=protocol, names=names)
        result = propagate(ct.array, objects, model, 2, ct.affine, cache=cache)
        scores: dict[str, list] = {}
        every = []  # the true Dice of every slice with a mask but the prompted ones
        for obj in objects:
            truth = _slice_dice(result.labels == obj.id, gt == obj.id)
            for s in obj.slices:
                truth.pop(s, None)
            every.extend(truth.values())
            if len(truth) < 2:
                continue
            worst = min(truth, key=truth.get)
            bad = {z for z, d in truth.items() if d < 0.5}
            for rule, ranked in _rankings(result, obj, rng).items():
                top = ranked[:FIRST]
                row = scores.setdefault(rule, [[], [], []])
                row[0].append(worst in top)
                row[1].extend(truth[z] for z in top)
                if bad:
                    row[2].append(len(bad & set(top)) / min(FIRST, len(bad)))
        print(
            f"protocol {protocol}: {len(scores['random (no flags)'][0])} structures, mean "
            f"slice Dice {np.mean(every):.3f}; {len(scores['random (no flags)'][2])} "
            "structures have slices under Dice 0.5"
        )
        for rule, (hits, flagged, caught) in scores.items():
            print(
                f"  {rule:34s} worst slice among the first {FIRST}: {np.mean(hits):.2f}  "
                f"their Dice {np.mean(flagged):.3f}  slices under 0.5 among them: "
                f"{np.mean(caught):.2f}"
            )


def correction(model, ct, gt, names, cache) -> None:
    objects = protocol_objects(gt, axis=2, protocol="A", names=names)
    start = time.perf_counter()
    first = propagate(ct.array, objects, model, 2, ct.affine, cache=cache)
    seconds = time.perf_counter() - start
    before = {o.id: dice(first.labels == o.id, gt == o.id) for o in objects}
    rng = np.random.default_rng(0)
    picks = {"flagged": {}, "random": {}, "worst (knows the truth)": {}}
    for obj in objects:
        truth = _slice_dice(first.labels == obj.id, gt == obj.id)
        for s in obj.slices:
            truth.pop(s, None)
        checked = slices_to_check(first.labels, obj.id, 2, first.scores[obj.id], obj.slices, 1)
        picks["flagged"][obj.id] = checked[0].index if checked else None
        picks["random"][obj.id] = int(rng.choice(list(truth))) if truth else None
        picks["worst (knows the truth)"][obj.id] = min(truth, key=truth.get) if truth else None
    single = resolve_preset(ct.array, "auto")
    official = {}
    for obj in objects:
        found = official_chaining(ct.array, obj, model, 2, ct.affine, single, cache=cache)
        official[obj.id] = dice(found, gt == obj.id)
    width = max(len(v) for v in names.values())
    after = {}
    for how, chosen in picks.items():
        corrected = []
        for obj in objects:
            z = chosen[obj.id]
            if z is None or not (gt[:, :, z] == obj.id).any():
                continue  # nothing to draw there: the structure keeps its first result
            slices = dict(obj.slices)
            slices[z] = SlicePrompt(box=slice_box(gt[:, :, z] == obj.id))
            corrected.append(replace(obj, slices=slices))
        result = (
            propagate(ct.array, corrected, model, 2, ct.affine, cache=cache) if corrected else None
        )
        drawn = {o.id for o in corrected}
        after[how] = {
            o.id: dice(result.labels == o.id, gt == o.id) if o.id in drawn else before[o.id]
            for o in objects
        }
        after[how]["drawn"] = len(drawn)
    print(f"one correction after protocol A (first propagation {seconds:.1f} s):")
    print(
        f"  {'structure':{width}s}  A      flagged (slice)  random (slice)  worst (slice)  official"
    )
    for obj in objects:
        cells = []
        for how in picks:
            z = picks[how][obj.id]
            cells.append(f"{after[how][obj.id]:.3f} ({'-' if z is None else z:>2})")
        print(
            f"  {names[obj.id]:{width}s}  {before[obj.id]:.3f}  {cells[0]:15s}  {cells[1]:14s}  "
            f"{cells[2]:13s}  {official[obj.id]:.3f}"
        )
    means = "  ".join(
        f"{how} {np.mean([v for k, v in after[how].items() if k != 'drawn']):.3f} "
        f"({after[how]['drawn']} boxes drawn)"
        for how in picks
    )
    print(
        f"mean: A {np.mean(list(before.values())):.3f}  {means}  "
        f"official {np.mean(list(official.values())):.3f}"
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--cache", type=Path, default=None, help="on-disk embedding cache")
    parser.add_argument("--protocols", default="AB", help="for the flags: letters among A, B, C")
    parser.add_argument("--mr-like", action="store_true", help="as in propagation.py")
    parser.add_argument("--enlarge", type=int, default=1, help="as in propagation.py")
    parser.add_argument("--thin", type=int, default=1, help="as in propagation.py")
    args = parser.parse_args(argv)
    if not (args.data / "structures.nii.gz").exists():
        print(f"no structures.nii.gz in {args.data}", file=sys.stderr)
        return 2
    ct = read_volume(args.data / "ct.nii.gz")
    gt = read_volume(args.data / "structures.nii.gz").array
    gt = stand_in(ct, gt, args)
    names = {int(k): v for k, v in json.loads((args.data / "structures.json").read_text()).items()}
    model = load_model("litemedsam", device="cpu")
    cache = EmbeddingCache(folder=args.cache) if args.cache else EmbeddingCache(max_bytes=4 << 30)
    print(f"litemedsam fp32, window auto, volume {gt.shape}{', MR-like' if args.mr_like else ''}")
    flags(model, ct, gt, names, cache, [p for p in args.protocols.upper() if p in "ABC"])
    correction(model, ct, gt, names, cache)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
