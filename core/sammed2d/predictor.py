"""From a medical image and prompts to masks: the Predictor, and batched slice embedding."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from . import graphs
from .cache import EmbeddingCache, embedding_key
from .errors import Cancelled, PromptError
from .intensity import prepare_rgb
from .models import SamModel
from .models.mask_decoder import REASSOCIATE_MIN_TOKENS, box_regions
from .preprocess import InputGeometry, model_input
from .prompts import check_boxes, check_points

ProgressCallback = Callable[[int, int], None]


@dataclass
class ImageEmbedding:
    """An image as the decoder needs it: its embedding and where it sits in the model input."""

    embedding: torch.Tensor  # (1, 256, h, w), float32, on the CPU
    geometry: InputGeometry


def encode(model: SamModel, batch: torch.Tensor) -> torch.Tensor:
    """(B, 3, S, S) encoder input -> (B, 256, h, w) embeddings on the CPU."""
    dtype = getattr(model, "autocast_dtype", None)
    with torch.inference_mode():
        if graphs.wanted(model):
            return graphs.encode(model, batch.to(model.device)).float().cpu()
        if dtype is None:
            return model.image_encoder(batch.to(model.device)).float().cpu()
        with torch.autocast(device_type=model.device.type, dtype=dtype):
            return model.image_encoder(batch.to(model.device)).float().cpu()


def embed_slices(
    model: SamModel,
    images: Sequence[np.ndarray],
    batch_size: int = 4,
    cache: EmbeddingCache | None = None,
    progress: ProgressCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> list[ImageEmbedding]:
    """Embed many 8-bit RGB (H, W, 3) images, `batch_size` at a time, through `cache`.

    Cached images are not recomputed. `progress(done, total)` is called after each batch;
    `should_stop()` returning True raises `Cancelled` between batches.
    """
    spec = model.spec
    prepared = [model_input(img, spec.preprocessing, spec.input_size) for img in images]
    keys = [embedding_key(x, model) for x, _ in prepared] if cache is not None else None
    out: list[torch.Tensor | None] = [None] * len(prepared)
    todo = []
    for i in range(len(prepared)):
        hit = cache.get(keys[i]) if cache is not None else None
        if hit is None:
            todo.append(i)
        else:
            out[i] = hit
    total, done = len(prepared), len(prepared) - len(todo)
    if progress is not None:
        progress(done, total)
    for start in range(0, len(todo), batch_size):
        if should_stop is not None and should_stop():
            raise Cancelled("embedding cancelled")
        chunk = todo[start : start + batch_size]
        embeddings = encode(model, torch.cat([prepared[i][0] for i in chunk]))
        for i, emb in zip(chunk, embeddings):
            out[i] = emb[None].clone()
            if cache is not None:
                cache.put(keys[i], out[i])
        done += len(chunk)
        if progress is not None:
            progress(done, total)
    return [ImageEmbedding(token_major(emb), geo) for emb, (_, geo) in zip(out, prepared)]


def token_major(embedding: torch.Tensor) -> torch.Tensor:
    """The same (B, C, h, w) values held channels-last, as the mask decoder reads them.

    The decoder's first step lays the embedding out as (h*w, C) tokens; from a (C, h, w)
    layout that transposed copy cost ~1.8 ms of LiteMedSAM's ~30 ms per prompt, and it
    was paid again for every prompt on the same slice. Converted once here (a no-op for
    encoders that already give channels-last, a copy for embeddings read from disk)."""
    return embedding.contiguous(memory_format=torch.channels_last)


def decode(
    model: SamModel,
    image: ImageEmbedding,
    point_coords: np.ndarray | None = None,
    point_labels: np.ndarray | None = None,
    boxes: np.ndarray | None = None,
    mask_input: np.ndarray | None = None,
    multimask_output: bool | None = True,
    near_boxes: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the prompt encoder and mask decoder on validated prompts in original pixels.

    `multimask_output`: True the three proposals, False the single mask, None all four
    (the single mask first) at about the cost of one. `near_boxes`, for boxes alone on a
    64 x 64 embedding: masks only around each box (`mask_decoder.box_regions`; the same
    masks, OUTSIDE logits elsewhere), which saves most of the decoder's upscaling for a
    small box. Not for logits fed back as mask prompts.

    Points (K, N, 2)/(K, N), boxes (K, 4), masks (K, 1, 4h, 4w): K prompt sets in one
    decoder call. Returns low-res logits (K, C, 4h, 4w) and IoU predictions (K, C) on the CPU.
    """
    device = model.device
    geo = image.geometry
    points = None
    if point_coords is not None:
        coords = torch.from_numpy(geo.coords_to_input(point_coords)).to(device)
        points = (coords, torch.from_numpy(point_labels).to(device))
    box_t = None
    if boxes is not None:
        box_t = torch.from_numpy(geo.boxes_to_input(boxes)).to(device)
    mask_t = None
    if mask_input is not None:
        mask_t = torch.as_tensor(mask_input, dtype=torch.float32).to(device)
    dtype = getattr(model, "autocast_dtype", None)
    if graphs.wanted(model):
        with torch.inference_mode():
            low_res, iou = graphs.decode(
                model, image.embedding.to(device), points, box_t, mask_t, multimask_output
            )
        return low_res.float().cpu(), iou.float().cpu()
    regions = None
    _, _, h, w = image.embedding.shape
    alone = box_t is not None and points is None and mask_t is None
    if near_boxes and alone and h * w >= REASSOCIATE_MIN_TOKENS:
        size = max(model.prompt_encoder.input_image_size)
        regions = box_regions(box_t, size, h, w)
    with torch.inference_mode():
        sparse, dense = model.prompt_encoder(points, box_t, mask_t)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            low_res, iou = model.mask_decoder(
                image.embedding.to(device),
                model.prompt_encoder.get_dense_pe(),
                sparse,
                dense,
                multimask_output,
                regions,
            )
    return low_res.float().cpu(), iou.float().cpu()


class Predictor:
    """Segment Anything's predictor API over SAM-Med2D, LiteMedSAM, MedSAM and SAM.

    >>> predictor = Predictor(load_model("litemedsam"))
    >>> predictor.set_image(ct_slice_in_hu)
    >>> masks, scores, low_res = predictor.predict(box=[40, 60, 120, 140])
    """

    def __init__(self, model: SamModel, cache: EmbeddingCache | None = None) -> None:
        self.model = model
        self.cache = cache if cache is not None else EmbeddingCache(max_bytes=256 << 20)
        self._image: ImageEmbedding | None = None

    @property
    def is_image_set(self) -> bool:
        return self._image is not None

    @property
    def original_size(self) -> tuple[int, int] | None:
        return None if self._image is None else self._image.geometry.original_size

    def set_image(
        self,
        image: np.ndarray,
        preset: str = "auto",
        value_range: tuple[float, float] | None = None,
    ) -> None:
        """Embed one 2D image: (H, W) grayscale in any units, or (H, W, 3) RGB.

        `preset` chooses the intensity mapping (see `sammed2d.intensity.PRESETS`);
        `value_range` imposes one computed elsewhere (e.g. for a whole volume).
        """
        rgb = prepare_rgb(image, preset, value_range)
        self._image = embed_slices(self.model, [rgb], cache=self.cache)[0]

    def set_embedding(self, image: ImageEmbedding) -> None:
        """Use an embedding computed elsewhere (e.g. by `embed_slices`)."""
        self._image = image

    def get_image_embedding(self) -> torch.Tensor:
        """(1, 256, h, w) embedding of the current image, contiguous as SAM's predictor gives
        it (a copy: it is held channels-last for the decoder, see `token_major`)."""
        return self._current().embedding.contiguous()

    def reset_image(self) -> None:
        self._image = None

    def _current(self) -> ImageEmbedding:
        if self._image is None:
            raise PromptError("no image set: call set_image() before predict()")
        return self._image

    def predict(
        self,
        point_coords=None,
        point_labels=None,
        box=None,
        mask_input=None,
        multimask_output: bool = True,
        return_logits: bool = False,
        return_all_masks: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Masks for prompts in original-image pixels.

        point_coords (N, 2) as (x, y) with point_labels (N,) of 1/0; box [x0, y0, x1, y1] or
        (K, 4) for K objects at once (then points, if any, are (K, N, 2)); mask_input: the
        low-res logits of an earlier prediction, (1, 4h, 4w) or (K, 1, 4h, 4w).

        With `multimask_output=True` the decoder proposes three masks and, as SAM-Med2D's own
        predictor does, only the one with the best predicted IoU is returned;
        `return_all_masks=True` returns all three.

        Returns (masks, scores, low_res_logits): (C, H, W) bool (or float logits with
        `return_logits`), (C,) and (C, 4h, 4w) for one prompt set; with K boxes each gains
        a leading K axis.
        """
        image = self._current()
        size = image.geometry.original_size
        coords, labels = check_points(point_coords, point_labels, size)
        boxes = check_boxes(box, size)
        if coords is None and boxes is None and mask_input is None:
            raise PromptError("empty prompt: give at least one point, a box or a mask")
        batched = boxes is not None and (np.asarray(box).ndim == 2)
        k = len(boxes) if boxes is not None else 1
        if coords is not None:
            if coords.ndim == 2:
                coords, labels = coords[None], labels[None]
            if coords.shape[0] == 1 and k > 1:
                coords = np.repeat(coords, k, axis=0)
                labels = np.repeat(labels, k, axis=0)
            if coords.shape[0] != k:
                raise PromptError(f"{coords.shape[0]} point sets for {k} boxes: expected one each")
        masks_in = self._check_mask_input(mask_input, k)
        low_res, iou = decode(self.model, image, coords, labels, boxes, masks_in, multimask_output)
        if multimask_output and not return_all_masks:
            best = iou.argmax(dim=1)
            rows = torch.arange(low_res.shape[0])
            low_res = low_res[rows, best][:, None]
            iou = iou[rows, best][:, None]
        logits = image.geometry.logits_to_original(low_res)
        masks = logits.numpy() if return_logits else (logits > 0).numpy()
        scores, low = iou.numpy(), low_res.numpy()
        if not batched:
            return masks[0], scores[0], low[0]
        return masks, scores, low

    def _check_mask_input(self, mask_input, k: int) -> np.ndarray | None:
        if mask_input is None:
            return None
        expected = tuple(self.model.prompt_encoder.mask_input_size)
        arr = np.asarray(mask_input, dtype=np.float32)
        if arr.ndim == 2:
            arr = arr[None]
        if arr.ndim == 3:
            arr = arr[None]
        if arr.ndim != 4 or arr.shape[1] != 1 or arr.shape[2:] != expected:
            raise PromptError(
                f"mask_input of shape {np.shape(mask_input)}: expected low-res logits "
                f"(1, {expected[0]}, {expected[1]}) as returned by predict()"
            )
        if not np.all(np.isfinite(arr)):
            raise PromptError("mask_input contains NaN or inf")
        if arr.shape[0] == 1 and k > 1:
            arr = np.repeat(arr, k, axis=0)
        if arr.shape[0] != k:
            raise PromptError(f"{arr.shape[0]} mask inputs for {k} boxes: expected one each")
        return arr
