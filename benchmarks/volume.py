"""Whole volumes: slices per second to embed, and where a propagation's time goes.

    python benchmarks/volume.py [--precisions fp32 bf16]

For the TotalSegmentator example CT (122 x 101 x 30, four organs) and the 512 x 512 x 20
DICOM series from ../shared: embedding every slice (batch 1, abdomen window, radiological
view, as propagation sees them), then a propagation of one box per organ (protocol A on the
CT's labels) twice, once with nothing cached (total) and once with every embedding cached
(everything but embedding); again on the CT enlarged 4x in-plane, a clinical slice size,
where the per-step work on full-size slices shows; with the decoder calls the cached run
made and the boxes they took (walks on the same slice share a call). Goal from the speed
issue: everything else < 15 % of the total. Last, the engine's call per click on an
embedded slice of the DICOM series stacked to 300 slices.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

import sammed2d.propagate as engine
from sammed2d import EmbeddingCache, load_model
from sammed2d.evaluation import protocol_objects
from sammed2d.io import Volume, read_volume
from sammed2d.memory import reuse_freed_memory
from sammed2d.predictor import embed_slices
from sammed2d.propagate import SlicePrompt, propagate, segment_slice, volume_slices

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"

reuse_freed_memory()  # a benchmark owns its process, as the CLI does


def embed_rate(model, volume) -> float:
    slices = volume_slices(
        model, volume.array, 2, volume.affine, "abdomen", None, "radiological", None
    )
    images = [slices.rgb(i) for i in range(volume.array.shape[2])]
    start = time.perf_counter()
    embed_slices(model, images, batch_size=1, cache=None)
    return len(images) / (time.perf_counter() - start)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    args = parser.parse_args(argv)
    ct = read_volume(SHARED / "abdomen_ct" / "ct.nii.gz")
    labels = read_volume(SHARED / "abdomen_ct" / "labels.nii.gz").array
    series = read_volume(SHARED / "ct_dicom")
    for precision in args.precisions:
        model = load_model("litemedsam", device="cpu", precision=precision)
        for name, volume in (("example CT 122x101x30", ct), ("DICOM 512x512x20", series)):
            rate = embed_rate(model, volume)
            print(f"litemedsam {precision}: {name}: {rate:.2f} slices/s embedded")
        for name, volume, truth in (
            ("the example CT", ct, labels),
            (
                "the example CT enlarged 4x in-plane (488x404, as DICOM is held)",
                *enlarged(ct, labels),
            ),
        ):
            report_propagation(model, precision, name, volume, truth)
        report_click(model, precision, series)
    return 0


def report_click(model, precision, series, depth: int = 300, clicks: int = 10) -> None:
    """The engine's call for one box on an embedded slice, as a viewer makes it per click,
    on the DICOM series stacked to `depth` slices: the work per click that grows with the
    volume shows here. Window `auto` (a CT: the box's HU choose the window), and
    `percentile` (an MR's default, computed per call as Slicer's clicks do)."""
    big = stacked(series.array, depth)
    cache = EmbeddingCache(max_bytes=1 << 30)
    index = depth // 2
    prompt = SlicePrompt(box=np.array([180, 200, 300, 320], np.float32))
    for preset in ("auto", "percentile"):
        args = (big, index, prompt, model, 2, series.affine, preset)
        segment_slice(*args, cache=cache)  # embeds the slice
        times = []
        for _ in range(clicks):
            start = time.perf_counter()
            segment_slice(*args, cache=cache)
            times.append(time.perf_counter() - start)
        print(
            f"litemedsam {precision}: click on an embedded slice of the DICOM series stacked "
            f"to 512x512x{depth}, window {preset}: median {1000 * np.median(times):.0f} ms, "
            f"best {1000 * min(times):.0f} ms"
        )


def stacked(array: np.ndarray, depth: int) -> np.ndarray:
    """A volume's slices repeated along its last axis to `depth` slices, held as a DICOM
    series is read (Fortran order: a slice along the last axis is contiguous)."""
    reps = -(-depth // array.shape[2])
    return np.asfortranarray(np.concatenate([array] * reps, axis=2)[:, :, :depth])


def enlarged(ct, labels, factor: int = 4):
    """The example CT and its labels with each voxel repeated `factor` times in-plane: a
    clinical slice size (the DICOM series has no labels to prompt from), held in memory as
    a DICOM series is read (Fortran order: a slice along the last axis is contiguous)."""

    def grow(a):
        return np.asfortranarray(np.repeat(np.repeat(a, factor, axis=0), factor, axis=1))

    affine = ct.affine.copy()
    affine[:3, :2] /= factor
    return Volume(grow(ct.array), affine), grow(labels)


def report_propagation(model, precision, name, volume, labels) -> None:
    """One box per organ (protocol A), first with nothing cached, then with every
    embedding cached."""
    objects = protocol_objects(labels, axis=2, protocol="A")
    cache = EmbeddingCache(max_bytes=4 << 30)
    timings = []
    boxes = []  # per decoder call of the cached run: how many boxes it took
    real = engine.decode

    def counted(model, emb, points, labels, prompts, *rest, **options):
        boxes.append(0 if prompts is None else len(prompts))
        return real(model, emb, points, labels, prompts, *rest, **options)

    for cached in (False, True):  # cold, then every embedding cached
        engine.decode = counted if cached else real
        start = time.perf_counter()
        try:
            propagate(volume.array, objects, model, 2, volume.affine, preset="abdomen", cache=cache)
        finally:
            engine.decode = real
        timings.append(time.perf_counter() - start)
    total, rest = timings
    visited = sum(int(np.any(labels == o.id, axis=(0, 1)).sum()) for o in objects)
    print(
        f"litemedsam {precision}: propagation of {len(objects)} organs ({visited} "
        f"object-slices) on {name}: {total:.1f} s total, {total - rest:.1f} s "
        f"embedding, {rest:.1f} s everything else ({100 * rest / total:.0f} %); "
        f"{len(boxes)} decoder calls for {sum(boxes)} boxes"
    )


if __name__ == "__main__":
    raise SystemExit(main())
