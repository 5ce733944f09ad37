"""`sammed2d demo`: the main job end to end on the embedded default model, offline.

A CT-like phantom with known organs stands in for a patient (no installed package ships
a labelled medical volume). One box per organ on its middle slice is propagated through
the volume; the Dice against the known organs is printed, and the label volume and a PNG
montage are written.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .evaluation import dice, protocol_objects
from .io import Volume, atomic_write, write_volume
from .models import load_model
from .orientation import radiological_view
from .phantom import ct_phantom
from .progress import progress_reporter
from .propagate import propagate

COLOURS = np.array(
    [[0, 0, 0], [230, 120, 40], [60, 160, 230], [240, 210, 60], [220, 50, 60]], np.uint8
)


def montage(
    ct: np.ndarray,
    labels: np.ndarray,
    affine: np.ndarray,
    names: dict[int, str] | None = None,
    scores: dict[int, float] | None = None,
    count: int = 6,
    zoom: int = 3,
) -> np.ndarray:
    """(H, W, 3) uint8: `count` axial slices in the radiological view, soft-tissue window,
    labels blended in colour, each tile enlarged `zoom` times and numbered by slice, and a
    legend with each object's name and Dice."""
    from PIL import Image, ImageDraw, ImageFont

    view = radiological_view(affine, 2)
    picks = np.linspace(2, ct.shape[2] - 3, count).round().astype(int)
    tiles = []
    for k in picks:
        grey = np.clip((view.to_view(ct[:, :, k]).astype(np.float32) + 160) / 400 * 255, 0, 255)
        rgb = np.repeat(grey[:, :, None], 3, axis=2)
        lab = view.to_view(labels[:, :, k])
        colour = COLOURS[np.minimum(lab, len(COLOURS) - 1)].astype(np.float32)
        rgb = np.where(lab[..., None] > 0, 0.55 * rgb + 0.45 * colour, rgb)
        tile = Image.fromarray(rgb.astype(np.uint8)).resize(
            (rgb.shape[1] * zoom, rgb.shape[0] * zoom), Image.NEAREST
        )
        ImageDraw.Draw(tile).text((6, 4), f"slice {k}", fill=(255, 255, 255))
        tiles.append(np.asarray(tile))
    columns = (count + 1) // 2
    while len(tiles) < 2 * columns:
        tiles.append(np.zeros_like(tiles[0]))
    grid = np.concatenate(
        [np.concatenate(tiles[r * columns : (r + 1) * columns], axis=1) for r in range(2)], axis=0
    )
    legend = Image.new("RGB", (grid.shape[1], 34), (20, 20, 20))
    draw = ImageDraw.Draw(legend)
    font = ImageFont.load_default(size=18)
    x = 8
    for oid, name in (names or {}).items():
        score = "" if scores is None else f" Dice {scores[oid]:.3f}"
        draw.rectangle((x, 9, x + 16, 25), fill=tuple(int(c) for c in COLOURS[oid % len(COLOURS)]))
        draw.text((x + 22, 7), f"{name}{score}", fill=(255, 255, 255), font=font)
        x += 30 + int(draw.textlength(f"{name}{score}", font=font))
    return np.concatenate([grid, np.asarray(legend)], axis=0)


def run_demo(
    out: Path,
    model_name: str = "litemedsam",
    device: str = "auto",
    preprocessing=None,
    precision: str = "fp32",
) -> int:
    import imageio.v3 as iio

    out.mkdir(parents=True, exist_ok=True)
    ct, truth, affine, names = ct_phantom()
    print(f"phantom CT {ct.shape} (3 mm voxels) with {', '.join(names.values())}", flush=True)
    model = load_model(model_name, device=device, preprocessing=preprocessing, precision=precision)
    print(f"model {model.spec.name} from {model.weights_path}", flush=True)
    objects = protocol_objects(truth, axis=2, protocol="B", names=names)
    start = time.perf_counter()
    with progress_reporter("propagating one box per organ") as update:
        result = propagate(
            ct, objects, model, axis=2, affine=affine, preset="abdomen", progress=update
        )
    seconds = time.perf_counter() - start
    scores = {oid: dice(result.labels == oid, truth == oid) for oid in names}
    for oid, score in scores.items():
        lo_hi = result.reached[oid]
        print(
            f"  {names[oid]:12s} Dice {score:.3f}  slices {lo_hi[0]}-{lo_hi[1]}"
            if lo_hi
            else f"  {names[oid]:12s} Dice {score:.3f}  (no slices)"
        )
    print(f"mean Dice {np.mean(list(scores.values())):.3f} from one box per organ, {seconds:.1f} s")
    like = Volume(ct, affine)
    write_volume(out / "phantom_ct.nii.gz", ct, like)
    write_volume(out / "phantom_labels.nii.gz", result.labels, like)
    picture = montage(ct, result.labels, affine, names, scores)
    atomic_write(out / "montage.png", lambda tmp: iio.imwrite(tmp, picture, extension=".png"))
    print(f"wrote {out / 'phantom_labels.nii.gz'} and {out / 'montage.png'}")
    return 0
