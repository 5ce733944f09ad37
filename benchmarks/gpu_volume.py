"""The speed issue's GPU figures: slices per second embedded in batches, and a ten-object
propagation through a 300-slice CT.

    python benchmarks/gpu_volume.py [--device cuda] [--precisions fp32 bf16]
        [--depth 300] [--objects 10] [--batches 1 8 32] [--data DIR]

The volume: the TotalSegmentator example CT and its fourteen structures (`--data`, default
../shared/data/abdomen_ct), enlarged 4x in-plane (488 x 404, a clinical slice size) and
resampled along the slices to `--depth` slices (linear for the CT, nearest for the labels;
the spacing kept at the CT's 3 mm, so the anatomy is stretched and every slice is walked).

Embedding: every slice, each batch size timed twice: the encoder call alone (inputs prepared
beforehand; the transfers to and from the device included, as `embed_slices` makes them),
and `embed_slices` from 8-bit slices (preparation on the CPU included). Goal: 500 slices/s
or more for LiteMedSAM in bf16.

Propagation: the `--objects` structures with the most slices, one box each on the middle
slice and their slice range (protocol A), in the soft-tissue window, embedding ahead in
batches of the largest `--batches`; timed with nothing cached, then with every embedding
cached. Goal: under 5 s on the GPU. The mean Dice is printed beside the public LiteMedSAM
recipe's (`official_chaining`) on the same embeddings.

It needs only the core's NIfTI reading (nibabel) beside torch, so that it runs on a GPU
machine without network access given three things: the CT's three files in a folder
(`--data`), the LiteMedSAM weights `lite_medsam.pth` in a folder named by
SAMMED2D_WEIGHTS, and nibabel's wheel installed there. It runs on the CPU too (`--device
cpu`, with a small `--depth`), which is how it is checked without a GPU.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from sammed2d import EmbeddingCache, load_model
from sammed2d.evaluation import dice, official_chaining, protocol_objects
from sammed2d.io import read_volume
from sammed2d.memory import reuse_freed_memory
from sammed2d.predictor import embed_slices, encode
from sammed2d.preprocess import model_input
from sammed2d.propagate import PropagationSettings, propagate, volume_slices

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "abdomen_ct"

reuse_freed_memory()  # a benchmark owns its process, as the CLI does


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def stretched(array: np.ndarray, depth: int, nearest: bool) -> np.ndarray:
    """`array` resampled along its last axis to `depth` slices (linear, or nearest for
    labels), held in Fortran order as a DICOM series is read."""
    pos = np.linspace(0, array.shape[2] - 1, depth)
    if nearest:
        out = array[:, :, np.rint(pos).astype(int)]
    else:
        lo = np.floor(pos).astype(int)
        hi = np.minimum(lo + 1, array.shape[2] - 1)
        frac = (pos - lo).astype(np.float32)
        out = array[:, :, lo] * (1 - frac) + array[:, :, hi] * frac
    return np.asfortranarray(out)


def grown(array: np.ndarray, factor: int = 4) -> np.ndarray:
    return np.repeat(np.repeat(array, factor, axis=0), factor, axis=1)


def embedding_rates(model, volume, affine, batches: list[int], device: str) -> None:
    depth = volume.shape[2]
    slices = volume_slices(model, volume, 2, affine, "abdomen", None, "radiological", None)
    images = [slices.rgb(i) for i in range(depth)]
    spec = model.spec
    inputs = torch.cat([model_input(img, spec.preprocessing, spec.input_size)[0] for img in images])
    name = f"litemedsam {model.precision} on {device}"
    for batch in batches:
        encode(model, inputs[:batch])  # warm-up: kernels chosen, memory pooled
        synchronize(device)
        start = time.perf_counter()
        for first in range(0, depth, batch):
            encode(model, inputs[first : first + batch])
        synchronize(device)
        alone = depth / (time.perf_counter() - start)
        start = time.perf_counter()
        embed_slices(model, images, batch_size=batch, cache=None)
        synchronize(device)
        whole = depth / (time.perf_counter() - start)
        print(
            f"{name}, batch {batch}: encoder {alone:.1f} slices/s, from 8-bit slices "
            f"{whole:.1f} slices/s ({depth} slices of {volume.shape[0]} x {volume.shape[1]})"
        )


def stand_in(data: Path, depth: int):
    """The stretched CT, its labels, their affine, and the structures' names."""
    ct = read_volume(data / "ct.nii.gz")
    truth = read_volume(data / "structures.nii.gz").array
    names = json.loads((data / "structures.json").read_text(encoding="utf-8"))
    volume = stretched(grown(ct.array.astype(np.float32)), depth, nearest=False)
    labels = stretched(grown(truth), depth, nearest=True)
    affine = ct.affine.copy()
    affine[:3, :2] /= 4
    return volume, labels, affine, {int(k): v for k, v in names.items()}


def propagation(model, volume, labels, affine, names, count, batch, device) -> None:
    depth = volume.shape[2]
    extent = {i: int(np.any(labels == i, axis=(0, 1)).sum()) for i in names}
    chosen = sorted(names, key=lambda i: (-extent[i], i))[:count]
    objects = protocol_objects(labels, 2, "A", {i: names[i] for i in chosen})
    settings = PropagationSettings(slice_step=1)
    cache = EmbeddingCache(max_bytes=8 << 30)
    timings = []
    for _ in range(2):  # nothing cached, then every embedding cached
        synchronize(device)
        start = time.perf_counter()
        run = propagate(
            volume, objects, model, 2, affine, preset="abdomen", settings=settings,
            cache=cache, batch_size=batch,
        )  # fmt: skip
        synchronize(device)
        timings.append(time.perf_counter() - start)
    total, rest = timings
    walked = sum(extent[i] for i in chosen)
    mean = np.mean([dice(run.labels == i, labels == i) for i in chosen])
    # the public LiteMedSAM recipe on the same embeddings, beside ours (untimed)
    official = np.mean(
        [
            dice(
                official_chaining(volume, o, model, 2, affine, "abdomen", cache=cache),
                labels == o.id,
            )
            for o in objects
        ]
    )
    print(
        f"litemedsam {model.precision} on {device}: propagation of {len(objects)} objects "
        f"({walked} object-slices) through the example CT stretched to "
        f"{volume.shape[0]}x{volume.shape[1]}x{depth}, embedding in batches of {batch}: "
        f"{total:.1f} s total, {total - rest:.1f} s embedding, {rest:.1f} s everything else; "
        f"mean Dice {mean:.3f} (the official chaining {official:.3f})"
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--depth", type=int, default=300)
    parser.add_argument("--objects", type=int, default=10)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--data", type=Path, default=DATA)
    args = parser.parse_args(argv)
    if args.device.startswith("cuda"):
        print(f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}")
    else:
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    volume, labels, affine, names = stand_in(args.data, args.depth)
    for precision in args.precisions:
        model = load_model("litemedsam", device=args.device, precision=precision)
        embedding_rates(model, volume, affine, args.batches, args.device)
        propagation(
            model, volume, labels, affine, names, args.objects, max(args.batches), args.device
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
