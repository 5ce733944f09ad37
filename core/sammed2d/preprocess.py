"""Each model's own input pipeline: 8-bit RGB image -> encoder input, and masks back.

Every pipeline reproduces the official inference code of its model, because the weights
only give their published accuracy on input prepared the way they were trained:

- sammed2d: mean/std on the original grid, nearest resize to S x S (OpenCV INTER_NEAREST
  indexing), x and y scaled independently; masks bilinear 64 -> S -> original size.
- litemedsam: longest side to 256 by area averaging, min-max to [0, 1], zero pad to
  256 x 256; coordinates scaled by 256 / max(H, W); masks cropped, then resized.
- sam: longest side to 1024 (bilinear, antialiased), mean/std, zero pad; masks bilinear to
  1024, cropped, then resized.
- medsam: bicubic antialiased resize to 1024 x 1024 (scikit-image), min-max to [0, 1];
  coordinates scaled per axis; masks bilinear from 256 to the original size.
"""

from __future__ import annotations

from dataclasses import dataclass

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


def nearest_indices(src: int, dst: int) -> np.ndarray:
    """OpenCV INTER_NEAREST: destination i reads source floor(i * (1 / (dst / src))).

    OpenCV forms the inverse scale in double precision, so i * src / dst that is an exact
    integer can land just below it (64 * 420 / 256 gives 104, not 105); we do the same.
    """
    inverse = 1.0 / (dst / src)
    return np.minimum(np.floor(np.arange(dst) * inverse).astype(np.int64), src - 1)


def area_weights(src: int, dst: int) -> np.ndarray:
    """(dst, src) matrix of OpenCV INTER_AREA weights for shrinking one axis."""
    scale = src / dst
    weights = np.zeros((dst, src), dtype=np.float64)
    for i in range(dst):
        start, stop = i * scale, (i + 1) * scale
        first, last = int(np.floor(start)), int(np.ceil(stop))
        for j in range(first, min(last, src)):
            weights[i, j] = min(stop, j + 1) - max(start, j)
    return weights / scale


def resize_area(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Area-averaging resize of (H, W, C) float data for shrinking; bilinear for growing."""
    h, w = image.shape[:2]
    if size[0] > h or size[1] > w:
        t = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None].float()
        t = F.interpolate(t, size, mode="bilinear", align_corners=False)
        return t[0].numpy().transpose(1, 2, 0)
    wy, wx = area_weights(h, size[0]), area_weights(w, size[1])
    rows = np.tensordot(wy, image.astype(np.float64), axes=(1, 0))  # (h', W, C)
    return np.tensordot(rows, wx, axes=(1, 1)).transpose(0, 2, 1).astype(np.float32)


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
        # The official code resizes the uint8 image with OpenCV, which rounds back to uint8.
        small = np.clip(np.rint(resize_area(rgb.astype(np.float32), (rh, rw))), 0, 255)
        small = _minmax(small)
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
