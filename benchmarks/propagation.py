"""3D propagation accuracy on the TotalSegmentator example CT (../shared/data/abdomen_ct),
all fourteen structures of `structures.nii.gz`, ours beside the public LiteMedSAM recipe.

Protocols, with boxes taken from the reference labels:
  A: one box on the structure's middle slice, plus its slice range;
  B: one box on the middle slice, no range (propagation must stop by itself);
  C: boxes on three slices (a quarter, half and three quarters through), plus the range.
Baseline ("official"): the public LiteMedSAM chaining, run in the same process on the same
embeddings: middle-slice box, then the previous mask's box + 3 px at 256 scale, range given.
Prints per-structure 3D Dice, the mean, the slices each object visited (B) and the time.

    python benchmarks/propagation.py [--data DIR] [--labels structures.nii.gz] [--cache DIR]
                                     [--drift HU_PER_SLICE] [--loose MM] [--window-inset MM]
                                     [--<setting> VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import fields
from pathlib import Path

import numpy as np

import sammed2d.intensity
from sammed2d import EmbeddingCache, load_model
from sammed2d.evaluation import dice, official_chaining, protocol_objects
from sammed2d.intensity import resolve_preset
from sammed2d.io import read_volume
from sammed2d.memory import reuse_freed_memory
from sammed2d.propagate import PropagationSettings, propagate, with_object_windows

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parent.parent / "shared" / "data" / "abdomen_ct"


OFF = "off"


def _or_off(kind):
    """A parser for an optional setting: a value of `kind`, or "off" (None)."""
    return lambda value: OFF if value == OFF else kind(value)


def _settings(args) -> PropagationSettings:
    overrides = {
        f.name: None if getattr(args, f.name) == OFF else getattr(args, f.name)
        for f in fields(PropagationSettings)
        if getattr(args, f.name) is not None
    }
    return PropagationSettings(**overrides)


reuse_freed_memory()  # a benchmark owns its process, as the CLI does


def thinner(volume: np.ndarray, affine: np.ndarray, labels: np.ndarray, factor: int):
    """Volume, affine and labels with `factor` times as many slices along axis 2.

    Grey levels are blended linearly between neighbouring slices, and Gaussian noise is
    added to each blend to give it the scan's own noise level again (a blend of two slices
    is smoother than either, and a grey-level rule would see the noise change from slice to
    slice); each label takes the voxels where its own blended mask reaches one half, so a
    structure's outline moves between slices instead of jumping."""
    n = volume.shape[2]
    # From the first blend on: the scan's own slices then lie at indices that are not
    # multiples of `factor`, so a walk stepping by `factor` meets none of them.
    k = np.arange(1, factor * (n - 1) + 1)
    lo = np.minimum(k // factor, n - 2)
    t = ((k - lo * factor) / factor).astype(np.float32)
    a, b = volume[:, :, lo].astype(np.float32), volume[:, :, lo + 1].astype(np.float32)
    # The noise level from neighbouring voxels' differences inside the body: their lower
    # quartile, which edges and texture barely reach (for Gaussian noise of deviation s a
    # difference's magnitude has its quartile at 0.3186 * sqrt(2) * s).
    body = (volume[1:, :, :] > -500) & (volume[:-1, :, :] > -500)
    steps = np.abs(np.diff(volume.astype(np.float32), axis=0)[body])
    sigma = np.percentile(steps, 25) / (0.3186 * np.sqrt(2))
    missing = np.sqrt(np.clip(1 - (1 - t) ** 2 - t**2, 0, None)) * sigma
    noise = np.random.default_rng(0).standard_normal(a.shape, np.float32) * missing
    thin = np.rint(a * (1 - t) + b * t + noise).astype(volume.dtype)
    out = np.zeros((*labels.shape[:2], len(k)), labels.dtype)
    for oid in np.unique(labels[labels > 0]):
        m = (labels == oid).astype(np.float32)
        out[(m[:, :, lo] * (1 - t) + m[:, :, lo + 1] * t) >= 0.5] = oid
    affine = np.array(affine, np.float64)
    affine[:3, 3] += affine[:3, 2] / factor
    affine[:3, 2] /= factor
    return thin, affine, out


def enlarged(volume: np.ndarray, affine: np.ndarray, labels: np.ndarray, factor: int):
    """Volume, affine and labels with `factor` times as many pixels along axes 0 and 1."""
    from scipy import ndimage

    zoom = (factor, factor, 1)
    # mode "nearest": the edge voxels' own values beyond the edge, not a frame of 0 HU
    big = ndimage.zoom(volume.astype(np.float32), zoom, order=1, grid_mode=True, mode="nearest")
    big = np.rint(big)
    affine = np.array(affine, np.float64)
    # Voxel centres of the finer grid: the first lies (1 - 1/f)/2 of an old voxel back.
    shift = (1 - 1 / factor) / 2
    affine[:3, 3] -= shift * (affine[:3, 0] + affine[:3, 1])
    affine[:3, :2] /= factor
    return (
        big.astype(volume.dtype),
        affine,
        ndimage.zoom(labels, zoom, order=0, grid_mode=True, mode="nearest"),
    )


def loosened(objects, pixels: int, labels: np.ndarray):
    """The objects with each box `pixels` wider on each side, within the slice."""
    if pixels == 0:
        return objects
    h, w = labels.shape[:2]
    for obj in objects:
        for prompt in obj.slices.values():
            box = prompt.box + np.array([-pixels, -pixels, pixels, pixels], np.float32)
            prompt.box = np.clip(box, 0, [w - 1, h - 1, w - 1, h - 1]).astype(np.float32)
    return objects


# HU -> signal of a T1-weighted MR, roughly: air and cortical bone dark, fat brightest,
# fluid darker than the organs, enhanced vessels bright. Points between are linear.
MR_LIKE = (
    (-1000.0, 10.0),
    (-300.0, 30.0),
    (-150.0, 700.0),
    (-60.0, 800.0),
    (0.0, 250.0),
    (40.0, 380.0),
    (100.0, 450.0),
    (200.0, 520.0),
    (400.0, 200.0),
    (1000.0, 60.0),
)


def mr_like(volume: np.ndarray, seed: int = 0) -> np.ndarray:
    """A stand-in for an MR of the same anatomy: grey levels remapped from HU through
    `MR_LIKE` (not monotonic: the order of tissues' grey levels changes, and fat, not
    contrast, is brightest), times a smooth bias field (x0.7-1.3 across the volume), plus
    Rician noise at 2 % of the fat signal. Floating point and never below 0, so `auto`
    gives it the percentile window as it gives an MR; rules that only hold for HU or for
    the CT's ordering of tissues do not carry over to it."""
    hu, signal = (np.array(v) for v in zip(*MR_LIKE))
    out = np.interp(volume.astype(np.float32), hu, signal).astype(np.float32)
    axes = [np.linspace(-1, 1, n, dtype=np.float32) for n in volume.shape]
    x, y, z = np.meshgrid(*axes, indexing="ij")
    out *= 1.0 + 0.2 * x - 0.15 * y + 0.1 * z * x
    rng = np.random.default_rng(seed)
    sigma = 0.02 * 800.0
    real = out + rng.standard_normal(out.shape, np.float32) * sigma
    imag = rng.standard_normal(out.shape, np.float32) * sigma
    return np.sqrt(real**2 + imag**2)


def stand_in(ct, gt: np.ndarray, args) -> np.ndarray:
    """The view of the CT that `args.mr_like`, `args.enlarge` and `args.thin` ask for: `ct`
    (a Volume) is changed in place, and the labels on its new grid are returned."""
    if args.mr_like:
        ct.array = mr_like(ct.array)
    if args.enlarge > 1:
        ct.array, ct.affine, gt = enlarged(ct.array, ct.affine, gt, args.enlarge)
    if args.thin > 1:
        ct.array, ct.affine, gt = thinner(ct.array, ct.affine, gt, args.thin)
    return gt


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--labels", default="structures.nii.gz", help="labels file in --data")
    parser.add_argument("--model", default="litemedsam")
    parser.add_argument("--cache", type=Path, default=None, help="on-disk embedding cache")
    parser.add_argument("--protocols", default="ABC", help="letters, e.g. AB or A,B")
    parser.add_argument("--orientation", default="radiological", choices=["radiological", "array"])
    parser.add_argument(
        "--window",
        default="auto",
        help="ours; auto gives each CT object the window its box asks for. The official "
        "chaining always sees one window for the volume (auto: the CT soft-tissue window)",
    )
    parser.add_argument(
        "--box-windows",
        action="store_true",
        help="with --window percentile: each object in the window from its first box, as "
        "`auto` shows an MR's objects (the CT in the percentile window then stands in for "
        "an MR whose structures differ by a few percent of its range); the official "
        "chaining keeps the volume's window",
    )
    parser.add_argument("--no-baseline", action="store_true", help="skip the official chaining")
    parser.add_argument(
        "--alone",
        action="store_true",
        help="also propagate each structure on its own and print its Dice beside the "
        "composed one: the official chaining is scored that way, while ours shares one "
        "label volume, where overlapping masks are resolved by compose_by",
    )
    parser.add_argument(
        "--drift",
        type=float,
        default=0.0,
        help="HU per slice added along the slice axis (0 at the middle slice): a stand-in "
        "for an MR bias field or contrast that fades along a vessel, to check that a rule "
        "does not depend on a structure keeping its grey level",
    )
    parser.add_argument(
        "--thin",
        type=int,
        default=1,
        help="resample the slice axis to this many times as many slices (linear, the "
        "original slices kept): a stand-in for thinner slices, where per-slice rules meet "
        "smaller changes between neighbours",
    )
    parser.add_argument(
        "--enlarge",
        type=int,
        default=1,
        help="resample each slice to this many times as many pixels a side (linear grey "
        "levels, nearest labels): a stand-in for a scan of finer in-plane resolution, "
        "where rules in pixels would mean less anatomy",
    )
    parser.add_argument(
        "--mr-like",
        action="store_true",
        help="remap the CT's grey levels to those of a T1-weighted MR, with a bias field "
        "and Rician noise (`mr_like`): a stand-in for another modality; the official "
        "chaining then sees the same percentile window as ours",
    )
    parser.add_argument(
        "--loose",
        type=float,
        default=0.0,
        help="every box (ours and the official chaining's) drawn this many mm wider on each "
        "side, rounded to whole pixels: the labels' own boxes are tight to the pixel, a "
        "person's are not",
    )
    parser.add_argument(
        "--window-inset",
        type=float,
        default=None,
        help="mm taken off each side of a CT object's first box before its window is "
        f"chosen (default {sammed2d.intensity.WINDOW_INSET_MM:g}; 0: the whole box)",
    )
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    for f in fields(PropagationSettings):
        kind = type(f.default)
        if kind is bool:
            parser.add_argument(f"--{f.name.replace('_', '-')}", type=lambda v: v == "on")
        elif "None" in str(f.type):  # optional: a number, or "off"
            kind = int if str(f.type).startswith("int") else float
            parser.add_argument(f"--{f.name.replace('_', '-')}", type=_or_off(kind))
        else:
            parser.add_argument(f"--{f.name.replace('_', '-')}", type=kind)
    args = parser.parse_args(argv)
    if args.box_windows and args.window != "percentile":
        parser.error(
            "--box-windows gives windows as `auto` gives an MR's: use it with --window percentile"
        )
    if not (args.data / "ct.nii.gz").exists():
        print(f"no data at {args.data}", file=sys.stderr)
        return 2
    settings = _settings(args)
    protocols = [p for p in args.protocols.upper() if p != ","]
    if not protocols or set(protocols) - set("ABC"):
        parser.error(f"--protocols {args.protocols!r}: expected letters among A, B and C")
    ct = read_volume(args.data / "ct.nii.gz")
    gt = read_volume(args.data / args.labels).array
    if args.drift:
        n = ct.array.shape[2]
        ramp = args.drift * (np.arange(n, dtype=np.float32) - n // 2)
        drifted = np.rint(ct.array.astype(np.float32) + ramp[None, None, :])
        ct.array = drifted.astype(ct.array.dtype)  # still integers in HU: still a CT
    gt = stand_in(ct, gt, args)
    if args.window_inset is not None:
        sammed2d.intensity.WINDOW_INSET_MM = args.window_inset
    grow = round(args.loose / float(np.linalg.norm(ct.affine[:3, 0])))  # pixels

    def prompts(protocol):
        return loosened(protocol_objects(gt, axis=2, protocol=protocol, names=names), grow, gt)

    names_file = args.data / (args.labels.split(".")[0] + ".json")  # structures.json
    names = {int(k): v for k, v in json.loads(names_file.read_text()).items()}
    model = load_model(args.model, device="cpu", precision=args.precision)
    cache = EmbeddingCache(folder=args.cache) if args.cache else EmbeddingCache(max_bytes=4 << 30)
    print(
        f"model {args.model} ({args.precision}), orientation {args.orientation}, "
        f"window {args.window}{' (box windows)' if args.box_windows else ''}, "
        f"drift {args.drift} HU/slice, boxes {grow} px loose, "
        f"window inset {sammed2d.intensity.WINDOW_INSET_MM:g} mm, "
        f"{'MR-like grey levels, ' if args.mr_like else ''}volume {gt.shape}, {settings}"
    )
    width = max(len(v) for v in names.values())
    base = {}  # the official chaining is protocol A whatever the protocol compared
    if not args.no_baseline:
        single = resolve_preset(ct.array, args.window)
        for obj in prompts("A"):
            found = official_chaining(
                ct.array, obj, model, 2, ct.affine, single, args.orientation, cache
            )
            base[obj.id] = dice(found, gt == obj.id)

    def ours_on(objects):
        return propagate(
            ct.array, objects, model, axis=2, affine=ct.affine, preset=args.window,
            orientation=args.orientation, settings=settings, cache=cache,
        )  # fmt: skip

    for protocol in protocols:
        objects = prompts(protocol)
        if args.box_windows:
            objects = with_object_windows(ct.array, 2, objects, "percentile", ct.affine)
        start = time.perf_counter()
        result = ours_on(objects)
        seconds = time.perf_counter() - start
        ours = {o.id: dice(result.labels == o.id, gt == o.id) for o in objects}
        alone = {}
        for obj in objects if args.alone else []:
            alone[obj.id] = dice(ours_on([obj]).labels == obj.id, gt == obj.id)
        print(f"protocol {protocol} ({seconds:.1f} s)")
        head = "ours   alone  official" if alone else "ours   official"
        print(f"  {'structure':{width}s}  {head}  visited/true slices  window")
        for obj in objects:
            truth = np.flatnonzero((gt == obj.id).any(axis=(0, 1)))
            reached = result.reached[obj.id]
            visited = 0 if reached is None else reached[1] - reached[0] + 1
            b = f"{base[obj.id]:.3f}" if base else "  -  "
            own = f"{alone[obj.id]:.3f}  " if alone else ""
            print(
                f"  {names[obj.id]:{width}s}  {ours[obj.id]:.3f}  {own}{b}     "
                f"{f'{visited}/{len(truth)}':20s} {result.windows.get(obj.id, '')}"
            )
        mean_b = f"{np.mean(list(base.values())):.3f}" if base else "-"
        mean_alone = f"alone {np.mean(list(alone.values())):.3f}  " if alone else ""
        print(
            f"protocol {protocol}: mean {np.mean(list(ours.values())):.3f}  {mean_alone}"
            f"official {mean_b}  ({seconds:.1f} s)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
