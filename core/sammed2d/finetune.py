"""Fine-tuning the mask decoder on one's own labelled volumes.

The image encoder stays as it is: each labelled slice is embedded once (through the
embedding cache), and only the mask decoder, with its IoU head, learns, as MedSAM's and
LiteMedSAM's users fine-tune for a structure or modality the model was not shown. That is
what makes it practical on a CPU: a decoder step costs tens of milliseconds, an embedding
hundreds.

Each labelled object on each slice is a sample: its box, each edge moved in or out at random
by up to `jitter` of the box's side (the decoder learns the boxes a person draws or a walk
carries, not only the label's exact box), and its mask, shown in the window propagation
will show it in (under `auto`: a lung lobe in the lung window, an MR object in its box's
own window), so one slice may be embedded in several windows. The loss is the published recipes':
Dice plus binary cross-entropy of the mask, plus the squared error of the predicted IoU
against the mask's true IoU, which propagation's stopping rules read. Validation holds out
whole volumes, or with one volume its last slices: neighbouring slices are nearly the same
image, so a random split of slices would measure memory. The weights of the best
validation epoch are kept.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .cache import EmbeddingCache
from .errors import Cancelled, ImageError
from .evaluation import middle_slice, slice_box
from .intensity import intensity_range, prompt_window, resolve_preset
from .io import atomic_write, weights_output
from .objects import SlicePrompt
from .orientation import slice_of, slice_view
from .predictor import ImageEmbedding, embed_slices
from .prompts import box_from_mask
from .propagate import VolumeSlices


@dataclass
class FinetuneSettings:
    epochs: int = 5
    lr: float = 5e-5  # AdamW, as LiteMedSAM's training
    weight_decay: float = 0.01
    jitter: float = 0.1  # box edges move in or out by up to this fraction of its side
    val_fraction: float = 0.2  # of the volumes, or of one volume's slices (its last ones)
    max_objects: int = 8  # prompts per decoder call (one slice's objects, at random)
    min_pixels: int = 10  # smaller sections of an object are not samples
    seed: int = 0


@dataclass
class Sample:
    """One slice of one volume and its objects' masks (in the model's view of the slice),
    as `view` (an index into the fine-tune's VolumeSlices: a volume in one window) shows it."""

    case: int
    index: int
    masks: list[np.ndarray]
    view: int = 0


@dataclass
class FinetuneReport:
    before: float  # validation Dice of the weights given
    after: float  # ... of the weights kept
    best_epoch: int  # 0: no epoch beat the weights given, which are kept
    epochs: list[tuple[float, float]] = field(default_factory=list)  # (train loss, val Dice)
    train_samples: int = 0  # slices (an object's window may make one slice several samples)
    val_samples: int = 0
    seconds: float = 0.0


def collect_samples(
    slices: VolumeSlices, labels: np.ndarray, case: int, min_pixels: int, view: int = 0, ids=None
):
    """Every slice of `labels` (shaped as the volume) with an object (of `ids`, default all)
    of `min_pixels` or more."""
    samples = []
    for index in range(slices.count):
        raw = slice_of(labels, index, slices.axis)
        present = [i for i in np.unique(raw) if i > 0 and (ids is None or i in ids)]
        # Each object's mask turned and stretched as a mask: ids are not grey levels.
        masks = [slices.view.to_view(raw == i) for i in present]
        masks = [m for m in masks if m.sum() >= min_pixels]
        if masks:
            samples.append(Sample(case, index, masks, view))
    return samples


def object_windows(
    array: np.ndarray, labels: np.ndarray, axis: int, preset: str, affine=None
) -> dict:
    """{window: object ids}: under `auto`, each object in the window propagation gives it
    from a box on its middle slice (on a CT lung, bone or soft tissue; on an MR one from the
    box's grey levels), so that it learns from the images it will be segmented on; under any
    other preset, every object in that one."""
    ids = [int(i) for i in np.unique(labels) if i > 0]
    if preset != "auto":
        return {preset: ids}
    own = resolve_preset(array, "auto")
    groups: dict[str, list[int]] = {}
    others = tuple(a for a in range(3) if a != axis)
    for oid in ids:
        # The box a protocol-A prompt (and a person's first box) gives it
        index = middle_slice(np.flatnonzero(np.any(labels == oid, axis=others)))
        box = slice_box(slice_of(labels, index, axis) == oid)
        window = prompt_window(array, axis, index, SlicePrompt(box=box), own, affine) or own
        groups.setdefault(window, []).append(oid)
    return groups


def split(samples: list[Sample], cases: int, fraction: float) -> tuple[list, list]:
    """(train, validation): the last `fraction` of the volumes; with one volume, the samples
    of its last slices."""
    if cases > 1:
        held = max(1, int(round(cases * fraction)))
        val = [s for s in samples if s.case >= cases - held]
    else:  # whole slices (a slice may be a sample in several windows)
        indices = sorted({s.index for s in samples})
        held = max(1, int(round(len(indices) * fraction)))
        val = [s for s in samples if s.index in indices[len(indices) - held :]]
    held_out = {id(s) for s in val}
    train = [s for s in samples if id(s) not in held_out]
    if not train or not val:
        raise ImageError(
            f"{_slices(samples)} labelled slices: too few to hold {fraction:.0%} out for validation"
        )
    return train, val


def _slices(samples: list[Sample]) -> int:
    return len({(s.case, s.index) for s in samples})


def embedder(volumes: list[VolumeSlices], cache: EmbeddingCache | None):
    """embed(sample): its slice's embedding, made once (through `cache`, which may keep
    them on disk between runs) and held here, once, for autograd to read."""
    held: dict[tuple[int, int], ImageEmbedding] = {}

    def embed(sample: Sample) -> ImageEmbedding:
        key = (sample.view, sample.index)
        if key not in held:
            slices = volumes[sample.view]
            (emb,) = embed_slices(slices.model, [slices.rgb(sample.index)], 1, cache)
            # Embeddings are made in inference mode; autograd may not save such tensors.
            device = slices.model.device
            held[key] = ImageEmbedding(emb.embedding.to(device).clone(), emb.geometry)
        return held[key]

    return embed


def _forward(model, emb: ImageEmbedding, boxes: np.ndarray):
    """(K, H, W) mask logits on the slice's pixels and (K,) predicted IoUs, with gradients
    for the decoder's weights, for K boxes in view pixels."""
    geo = emb.geometry
    device = model.device
    box_t = torch.from_numpy(geo.boxes_to_input(boxes)).to(device)
    with torch.no_grad():
        sparse, dense = model.prompt_encoder(None, box_t, None)
        pe = model.prompt_encoder.get_dense_pe()
    low, iou = model.mask_decoder(emb.embedding.to(device), pe, sparse, dense, False)
    return geo.logits_to_original(low)[:, 0], iou[:, 0]


def _jittered(box: np.ndarray, jitter: float, shape, rng) -> np.ndarray:
    """Each edge moved in or out by up to `jitter` of the box's side. MedSAM's and
    LiteMedSAM's training only grow the box; boxes that may also cut into the object (as
    a box carried from the previous slice does where the structure grows) held the
    structures never shown better in benchmarks/finetune.py (docs/measurements.md)."""
    side = np.array([box[2] - box[0], box[3] - box[1]] * 2, np.float32)
    moved = box + rng.uniform(-jitter, jitter, 4).astype(np.float32) * np.maximum(side, 1)
    h, w = shape
    moved = np.clip(moved, 0, [w, h, w, h])
    if moved[2] - moved[0] < 1 or moved[3] - moved[1] < 1:
        return box
    return moved


def _loss(logits: torch.Tensor, iou: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    prob = torch.sigmoid(logits)
    inter = (prob * target).sum((1, 2))
    dice = 1 - (2 * inter + 1) / (prob.sum((1, 2)) + target.sum((1, 2)) + 1)
    bce = F.binary_cross_entropy_with_logits(logits, target)
    with torch.no_grad():
        found = logits > 0
        truth = target > 0.5
        true_iou = (found & truth).sum((1, 2)) / (found | truth).sum((1, 2)).clamp(min=1)
    return dice.mean() + bce + F.mse_loss(iou, true_iou.float())


def validation_dice(model, embed, samples: list[Sample]) -> float:
    """Mean 2D Dice of the single mask for each object's own box, over `samples`."""
    scores = []
    with torch.no_grad():
        for s in samples:
            boxes = np.stack([box_from_mask(m) for m in s.masks])
            logits, _ = _forward(model, embed(s), boxes)
            for found, truth in zip((logits > 0).cpu().numpy(), s.masks):
                denom = found.sum() + truth.sum()
                scores.append(2 * (found & truth).sum() / denom if denom else 1.0)
    return float(np.mean(scores))


def finetune(
    model,
    cases: list[tuple[np.ndarray, np.ndarray | None, np.ndarray]],
    axis: int = 2,
    preset: str = "auto",
    settings: FinetuneSettings | None = None,
    cache: EmbeddingCache | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    orientation: str = "radiological",
) -> FinetuneReport:
    """Train `model`'s mask decoder in place on `cases`, (volume, affine, labels) each, the
    labels on the volume's grid; the best validation epoch's weights stay in the model.
    Slices are shown to the model as propagation shows them (`orientation`, see
    `orientation.slice_view`), so that it learns the images it will be asked about.
    `progress(what, done, total)` reports embedding and each epoch; `should_stop()` returning
    True raises Cancelled between steps, with the weights given restored."""
    s = settings or FinetuneSettings()
    start = time.perf_counter()
    rng = np.random.default_rng(s.seed)
    torch.manual_seed(s.seed)
    volumes, samples = [], []
    for n, (array, affine, labels) in enumerate(cases):
        if array.ndim != 3 or labels.shape != array.shape:
            raise ImageError(
                f"case {n + 1}: labels of shape {labels.shape} do not match the volume's "
                f"{array.shape}"
            )
        view = slice_view(affine, axis, orientation)
        for window, ids in object_windows(array, labels, axis, preset, affine).items():
            slices = VolumeSlices(model, array, axis, view, intensity_range(array, window), cache)
            volumes.append(slices)
            samples += collect_samples(slices, labels, n, s.min_pixels, len(volumes) - 1, ids)
    samples.sort(key=lambda sample: (sample.case, sample.index, sample.view))
    if not samples:
        raise ImageError(f"no labelled object of {s.min_pixels} pixels or more on any slice")
    train, val = split(samples, len(cases), s.val_fraction)

    embed = embedder(volumes, cache)

    def check_stop():
        if should_stop is not None and should_stop():
            raise Cancelled("fine-tuning cancelled")

    for done, sample in enumerate(samples, 1):  # every embedding first: one progress bar
        check_stop()
        embed(sample)
        if progress is not None:
            progress("embedding", done, len(samples))

    decoder = model.mask_decoder
    given = {k: v.detach().clone() for k, v in decoder.state_dict().items()}
    best = dict(given)
    report = FinetuneReport(0.0, 0.0, 0, train_samples=_slices(train), val_samples=_slices(val))
    report.before = report.after = validation_dice(model, embed, val)
    model.requires_grad_(False)
    decoder.requires_grad_(True)
    optimiser = torch.optim.AdamW(decoder.parameters(), lr=s.lr, weight_decay=s.weight_decay)
    try:
        for epoch in range(1, s.epochs + 1):
            losses = []
            for step, i in enumerate(rng.permutation(len(train)), 1):
                check_stop()
                sample = train[i]
                masks = sample.masks
                if len(masks) > s.max_objects:
                    masks = [masks[j] for j in rng.choice(len(masks), s.max_objects, False)]
                boxes = np.stack(
                    [_jittered(box_from_mask(m), s.jitter, m.shape, rng) for m in masks]
                )
                target = torch.from_numpy(np.stack(masks).astype(np.float32)).to(model.device)
                logits, iou = _forward(model, embed(sample), boxes)
                loss = _loss(logits, iou, target)
                if not torch.isfinite(loss):
                    raise ImageError(f"epoch {epoch}: the loss is not finite; lower the rate")
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
                losses.append(loss.item())
                if progress is not None:
                    progress(f"epoch {epoch}/{s.epochs}", step, len(train))
            score = validation_dice(model, embed, val)
            report.epochs.append((float(np.mean(losses)), score))
            if score > report.after:
                report.after, report.best_epoch = score, epoch
                best = {k: v.detach().clone() for k, v in decoder.state_dict().items()}
    except BaseException:
        decoder.load_state_dict(given)
        raise
    finally:
        model.requires_grad_(False)
    decoder.load_state_dict(best)
    report.seconds = time.perf_counter() - start
    return report


def finetune_record(model, base: str, window: str, axis: int, cases: int, settings) -> dict:
    """What PATH.json says of a fine-tune besides its figures. It names no training files:
    file names can carry patient data."""
    from . import __version__

    return {
        "base_model": Path(base).name,
        "base_sha256": getattr(model, "weights_id", None),
        "pipeline": model.spec.preprocessing,
        "window": window,
        "axis": axis,
        "cases": cases,
        "settings": asdict(settings),
        "sammed2d": __version__,
    }


def save_finetuned(model, path: str | Path, report: FinetuneReport, record: dict) -> Path:
    """The whole model's weights (fp32 tensors only, as the official files hold them, so
    `load_model(path)` and `weights_only` loading read it), written atomically, and beside
    it PATH.json: the base weights' SHA-256, the settings and the validation figures."""
    path = Path(path)
    state = {k: v.detach().float().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(path, lambda tmp: torch.save(state, tmp))
    info = {**record, "report": asdict(report)}
    text = json.dumps(info, indent=1) + "\n"
    atomic_write(path.with_suffix(path.suffix + ".json"), lambda tmp: Path(tmp).write_text(text))
    return path


def finetune_copy(
    source: str,
    out: str | Path,
    cases: list,
    axis: int,
    preset: str,
    *,
    device=None,
    precision: str = "fp32",
    cache: EmbeddingCache | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    orientation: str = "radiological",
) -> FinetuneReport:
    """Train the decoder of a fresh copy of the model `source` (a registry name or a file)
    on `cases` with the default settings, as `sammed2d finetune` does, and write it to
    `out` with its record. The viewers' Fine-tune runs this: their loaded model keeps
    serving clicks meanwhile, and its embeddings (keyed on the unchanged encoder) serve the
    copy. Cancelled (`should_stop`), nothing is written."""
    from .models import load_model

    out = weights_output(out, source)
    model = load_model(source, device=device, precision=precision)
    settings = FinetuneSettings()
    report = finetune(
        model, cases, axis, preset, settings, cache,
        progress=progress, should_stop=should_stop, orientation=orientation,
    )  # fmt: skip
    record = finetune_record(model, source, preset, axis, len(cases), settings)
    save_finetuned(model, out, report, record)
    return report


def summary(report: FinetuneReport) -> str:
    """One line for a viewer's status: slices trained and held out, the held-out Dice."""
    kept = f"epoch {report.best_epoch}" if report.best_epoch else "no epoch did better"
    return (
        f"fine-tuned on {report.train_samples} slices, {report.val_samples} held out: "
        f"validation Dice {report.before:.3f} → {report.after:.3f} ({kept})"
    )
