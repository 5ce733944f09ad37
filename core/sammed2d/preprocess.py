"""Each model's own input pipeline: 8-bit RGB image -> encoder input, and masks back.

Every pipeline reproduces the official inference code of its model, because the weights
only give their published accuracy on input prepared the way they were trained:

- sammed2d: mean/std on the original grid, nearest resize to S x S (OpenCV INTER_NEAREST
  indexing), x and y scaled independently; masks bilinear 64 -> S -> original size.
- litemedsam: longest side to 256 with OpenCV's INTER_AREA (bit-exact on uint8), min-max
  to [0, 1], zero pad to 256 x 256; coordinates scaled by 256 / max(H, W); masks cropped,
  then resized.
- sam: longest side to 1024 (bilinear, antialiased), mean/std, zero pad; masks bilinear to
  1024, cropped, then resized.
- medsam: bicubic antialiased resize to 1024 x 1024 (scikit-image), min-max to [0, 1];
  coordinates scaled per axis; masks bilinear from 256 to the original size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

PIXEL_MEAN = np.array([123.675, 116.28, 103.53], dtype=np.float32)
PIXEL_STD = np.array([58.395, 57.12, 57.375], dtype=np.float32)


@dataclass(frozen=True)
class InputGeometry:
    """How an image of `original_size` (H, W) sits in the model's S x S input."""

    pipeline: str
    original_size: tuple[int, int]
    input_size: int
    resized_size: tuple[int, int]  # (h, w) of the image inside the input, before padding

    @property
    def scale_xy(self) -> tuple[float, float]:
        h, w = self.original_size
        if self.pipeline == "litemedsam":
            # LiteMedSAM scales both axes by 256 / max(H, W), not by the rounded sizes.
            scale = self.input_size / max(h, w)
            return scale, scale
        return self.resized_size[1] / w, self.resized_size[0] / h

    def coords_to_input(self, coords: np.ndarray) -> np.ndarray:
        """(..., 2) (x, y) in original pixels -> model-input pixels."""
        sx, sy = self.scale_xy
        out = np.array(coords, dtype=np.float32, copy=True)
        out[..., 0] *= sx
        out[..., 1] *= sy
        return out

    def boxes_to_input(self, boxes: np.ndarray) -> np.ndarray:
        return self.coords_to_input(np.asarray(boxes, np.float32).reshape(-1, 2, 2)).reshape(-1, 4)

    def logits_to_original(self, low_res: torch.Tensor) -> torch.Tensor:
        """(B, C, 4h, 4w) low-res logits -> (B, C, H, W) logits on the original grid."""
        h, w = self.original_size
        s = self.input_size
        rh, rw = self.resized_size
        if self.pipeline == "sammed2d":
            x = F.interpolate(low_res, (s, s), mode="bilinear", align_corners=False)
        elif self.pipeline == "litemedsam":
            x = low_res[..., :rh, :rw]
        elif self.pipeline == "sam":
            x = F.interpolate(low_res, (s, s), mode="bilinear", align_corners=False)
            x = x[..., :rh, :rw]
        else:  # medsam
            x = low_res
        return F.interpolate(x, (h, w), mode="bilinear", align_corners=False)


def resized_shape(h: int, w: int, target: int) -> tuple[int, int]:
    """Longest side to `target`, rounding as SAM's ResizeLongestSide does."""
    scale = target / max(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5)


def _inverse_scale(src: int, dst: int) -> float:
    # OpenCV stores dst / src and inverts it in double precision; the rounding matters
    # wherever i * src / dst is an integer.
    return 1.0 / (dst / src)


def nearest_indices(src: int, dst: int) -> np.ndarray:
    """OpenCV INTER_NEAREST: destination i reads source floor(i * (1 / (dst / src))).

    OpenCV forms the inverse scale in double precision, so i * src / dst that is an exact
    integer can land just below it (64 * 420 / 256 gives 104, not 105); we do the same.
    """
    return np.minimum(np.floor(np.arange(dst) * _inverse_scale(src, dst)).astype(np.int64), src - 1)


@lru_cache(maxsize=64)  # every slice of a volume needs the same tables
def _area_table(src: int, dst: int) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV's area table for shrinking one axis: (dst, k) source indices, float32 weights.

    Partial cells under 1e-3 of a pixel are dropped and each weight is a float32, as in
    OpenCV's `computeResizeAreaTab`; padding entries have weight 0.
    """
    scale = _inverse_scale(src, dst)
    rows = []
    for d in range(dst):
        start = d * scale
        stop = start + scale
        cell = min(scale, src - start)
        first = min(math.ceil(start), src - 1)
        last = min(math.floor(stop), src - 1)
        first = min(first, last)
        entry = []
        if first - start > 1e-3:
            entry.append((first - 1, (first - start) / cell))
        entry += [(s, 1.0 / cell) for s in range(first, last)]
        if stop - last > 1e-3:
            entry.append((last, min(min(stop - last, 1.0), cell) / cell))
        rows.append(entry)
    k = max(len(e) for e in rows)
    index = np.zeros((dst, k), np.int64)
    weight = np.zeros((dst, k), np.float32)
    for d, entry in enumerate(rows):
        for j, (s, w) in enumerate(entry):
            index[d, j], weight[d, j] = s, w
    index.flags.writeable = weight.flags.writeable = False  # shared through the cache
    return index, weight


@lru_cache(maxsize=64)
def _linear_area_table(src: int, dst: int) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV's INTER_AREA table for enlarging one axis: (dst,) left index, (dst, 2) weights
    in 11-bit fixed point."""
    inverse = dst / src
    scale = _inverse_scale(src, dst)
    left = np.zeros(dst, np.int64)
    weights = np.zeros((dst, 2), np.int64)
    for d in range(dst):
        s = math.floor(d * scale)
        f = np.float32((d + 1) - (s + 1) * inverse)
        f = np.float32(0.0) if f <= 0 else np.float32(f - math.floor(f))
        if s < 0:
            f, s = np.float32(0.0), 0
        if s + 1 >= src:
            f, s = np.float32(0.0), src - 1
        left[d] = s
        weights[d] = [
            int(np.rint((np.float32(1.0) - f) * np.float32(2048))),
            int(np.rint(f * 2048)),
        ]
    left.flags.writeable = weights.flags.writeable = False  # shared through the cache
    return left, weights


def resize_area(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """OpenCV's `cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)` on uint8, bit for bit.

    `image` is (H, W) or (H, W, C) uint8 and `size` is (h, w). Shrinking by whole factors
    averages blocks with round-half-up (2 x 2) or float rounding; other shrinking sums
    float32 area weights in OpenCV's order; enlarging is OpenCV's fixed-point
    interpolation with the area-mode coefficients. Checked against OpenCV 4 and 5 in tests.
    """
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"resize_area: expected uint8, got {image.dtype}")
    if image.ndim == 3:
        # Channel by channel (the same sums: channels never mix), and once where they are
        # equal, as in a grey slice shown as RGB: interleaved channels made every gather
        # strided, and a 512 x 512 RGB slice took 11.8 ms against 2.0 ms for one channel.
        channels = [image[..., c] for c in range(image.shape[2])]
        if all(np.array_equal(channels[0], c) for c in channels[1:]):
            return np.repeat(_resize_area_2d(channels[0], size)[..., None], len(channels), 2)
        return np.stack([_resize_area_2d(np.ascontiguousarray(c), size) for c in channels], 2)
    return _resize_area_2d(image, size)


def _resize_area_2d(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    h, w = image.shape
    dh, dw = size
    if (dh, dw) == (h, w):
        return image.copy()
    if dh <= h and dw <= w:
        if h % dh == 0 and w % dw == 0:
            sy, sx = h // dh, w // dw
            total = image.astype(np.int64).reshape(dh, sy, dw, sx)
            total = total.sum(axis=(1, 3))
            if sy * sx == 4:
                return ((total + 2) >> 2).astype(np.uint8)
            out = np.rint(total.astype(np.float32) * np.float32(1.0 / (sy * sx)))
            return np.clip(out, 0, 255).astype(np.uint8)
        iy, wy = _area_table(h, dh)
        ix, wx = _area_table(w, dw)
        src = image.astype(np.float32)
        rows = np.zeros((h, dw), np.float32)
        for j in range(ix.shape[1]):
            rows += src[:, ix[:, j]] * wx[:, j].reshape((1, dw))
        out = rows[iy[:, 0]] * wy[:, 0].reshape((dh, 1))
        for j in range(1, iy.shape[1]):
            out += rows[iy[:, j]] * wy[:, j].reshape((dh, 1))
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)
    ly, by = _linear_area_table(h, dh)
    lx, bx = _linear_area_table(w, dw)
    src = image.astype(np.int64)
    rows = src[:, lx] * bx[:, 0].reshape((1, dw))
    rows += src[:, np.minimum(lx + 1, w - 1)] * bx[:, 1].reshape((1, dw))
    # OpenCV's vector path: 16-bit high products of the pre-shifted rows, then +2 >> 2.
    top = ((rows[ly] >> 4) * by[:, 0].reshape((dh, 1))) >> 16
    bottom = ((rows[np.minimum(ly + 1, h - 1)] >> 4) * by[:, 1].reshape((dh, 1))) >> 16
    return np.clip((top + bottom + 2) >> 2, 0, 255).astype(np.uint8)


def _minmax(x: np.ndarray) -> np.ndarray:
    lo, hi = float(x.min()), float(x.max())
    return (x - lo) / max(hi - lo, 1e-8)


def model_input(rgb: np.ndarray, pipeline: str, size: int) -> tuple[torch.Tensor, InputGeometry]:
    """(H, W, 3) uint8 -> ((1, 3, S, S) float32 encoder input, its geometry)."""
    h, w = rgb.shape[:2]
    if pipeline == "sammed2d":
        norm = (rgb.astype(np.float32) - PIXEL_MEAN) / PIXEL_STD
        out = norm[nearest_indices(h, size)][:, nearest_indices(w, size)]
        geometry = InputGeometry(pipeline, (h, w), size, (size, size))
    elif pipeline == "litemedsam":
        rh, rw = resized_shape(h, w, size)
        small = _minmax(resize_area(rgb, (rh, rw)).astype(np.float32))
        out = np.zeros((size, size, 3), np.float32)
        out[:rh, :rw] = small
        geometry = InputGeometry(pipeline, (h, w), size, (rh, rw))
    elif pipeline == "sam":
        rh, rw = resized_shape(h, w, size)
        t = torch.from_numpy(rgb.transpose(2, 0, 1).astype(np.float32))[None]
        t = F.interpolate(t, (rh, rw), mode="bilinear", align_corners=False, antialias=True)
        small = t[0].round().clamp(0, 255).numpy().transpose(1, 2, 0)
        out = np.zeros((size, size, 3), np.float32)
        out[:rh, :rw] = (small - PIXEL_MEAN) / PIXEL_STD
        geometry = InputGeometry(pipeline, (h, w), size, (rh, rw))
    elif pipeline == "medsam":
        from skimage.transform import resize

        big = resize(rgb, (size, size), order=3, preserve_range=True, anti_aliasing=True)
        out = _minmax(big.astype(np.uint8).astype(np.float32))
        geometry = InputGeometry(pipeline, (h, w), size, (size, size))
    else:
        raise ValueError(f"unknown input pipeline {pipeline!r}")
    tensor = torch.from_numpy(np.ascontiguousarray(out.transpose(2, 0, 1), dtype=np.float32))
    return tensor[None], geometry
