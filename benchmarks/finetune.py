"""Fine-tuning LiteMedSAM's mask decoder on the TotalSegmentator example CT: what it gains on
held-out slices, and what it does to structures it was not shown.

    python benchmarks/finetune.py [--epochs 5] [--cache DIR] [--propagation] [--mr-like]
                                  [--train-window auto]

1. All fourteen structures of `structures.nii.gz`, the CT's last fifth of slices held out
   (`sammed2d finetune`'s split for one volume): validation Dice of each object's own box
   before and after. Neighbouring slices of one patient: an optimistic figure.
2. Seven structures trained (even positions in structures.json's order), the other seven
   never shown: their 2D Dice on every slice, the label's own box, before and after, so a
   decoder that forgets what it knew shows.
3. With --propagation: all fourteen propagated together (benchmarks/propagation.py's
   protocols A and B, its default settings and windows) with the published decoder and the
   one tuned on the seven, each group's mean Dice: what fine-tuning does to the walks.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from sammed2d import EmbeddingCache, load_model
from sammed2d.evaluation import dice, protocol_objects
from sammed2d.finetune import (
    FinetuneSettings,
    collect_samples,
    embedder,
    finetune,
    validation_dice,
)
from sammed2d.intensity import intensity_range
from sammed2d.io import read_volume
from sammed2d.orientation import slice_view
from sammed2d.propagate import VolumeSlices, propagate

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "abdomen_ct"


def dice_on(model, ct, labels, cache) -> float:
    """Mean 2D Dice over every slice of `labels`' objects, each prompted by its own box."""
    slices = VolumeSlices(
        model, ct.array, 2, slice_view(ct.affine, 2), intensity_range(ct.array, "auto"), cache
    )
    samples = collect_samples(slices, labels, 0, 10)
    return validation_dice(model, embedder([slices], cache), samples)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--cache", type=Path, help="embedding cache folder")
    parser.add_argument("--propagation", action="store_true", help="also part 3 (above)")
    parser.add_argument(
        "--mr-like",
        action="store_true",
        help="the CT's grey levels remapped to a T1-weighted MR's (benchmarks/propagation.py)",
    )
    parser.add_argument(
        "--train-window",
        default="auto",
        help="the window training shows (auto: each object the one propagation gives it; "
        "percentile: the volume's, for every object)",
    )
    args = parser.parse_args(argv)
    ct = read_volume(DATA / "ct.nii.gz")
    if args.mr_like:
        from propagation import mr_like

        ct.array = mr_like(ct.array)
    structures = read_volume(DATA / "structures.nii.gz").array
    names = {int(k): v for k, v in json.loads((DATA / "structures.json").read_text()).items()}
    cache = EmbeddingCache(max_bytes=0, folder=args.cache) if args.cache else None
    settings = FinetuneSettings(epochs=args.epochs)
    print(
        f"LiteMedSAM fp32, example CT{' (MR-like grey levels)' if args.mr_like else ''} "
        f"{ct.array.shape}, {args.epochs} epochs, lr {settings.lr}, training window "
        f"{args.train_window}"
    )

    model = load_model("litemedsam", device="cpu")
    start = time.perf_counter()
    window = args.train_window
    report = finetune(model, [(ct.array, ct.affine, structures)], 2, window, settings, cache)
    print(
        f"all 14, last slices held out ({report.train_samples} slices train, "
        f"{report.val_samples} held out): validation Dice {report.before:.3f} -> "
        f"{report.after:.3f} (epoch {report.best_epoch}; {time.perf_counter() - start:.0f} s)"
    )

    ids = sorted(names)
    shown, unseen = ids[0::2], ids[1::2]
    train = np.where(np.isin(structures, shown), structures, 0)
    other = np.where(np.isin(structures, unseen), structures, 0)
    base = load_model("litemedsam", device="cpu")
    before = dice_on(base, ct, other, cache)
    tuned = load_model("litemedsam", device="cpu")
    report = finetune(tuned, [(ct.array, ct.affine, train)], 2, window, settings, cache)
    after = dice_on(tuned, ct, other, cache)
    print(
        f"7 shown ({', '.join(names[i] for i in shown)}): validation Dice "
        f"{report.before:.3f} -> {report.after:.3f} (epoch {report.best_epoch})"
    )
    print(
        f"7 never shown ({', '.join(names[i] for i in unseen)}), every slice, own box: "
        f"{before:.3f} -> {after:.3f}"
    )
    if args.propagation:
        for protocol in "AB":
            objects = protocol_objects(structures, axis=2, protocol=protocol)
            means = []
            for model in (base, tuned):
                found = propagate(ct.array, objects, model, 2, ct.affine, cache=cache).labels
                scores = {o.id: dice(found == o.id, structures == o.id) for o in objects}
                means.append([np.mean([scores[i] for i in group]) for group in (shown, unseen)])
            (a, b), (c, d) = means
            print(
                f"propagation, protocol {protocol}, published -> tuned: 7 shown {a:.3f} -> "
                f"{c:.3f}, 7 never shown {b:.3f} -> {d:.3f}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
