"""Reduced-precision image encoding: bf16 matrix products where the hardware has them.

`fp32` is the reference. `bf16` runs the image encoder and the mask decoder under autocast:
matrix products and convolutions in bfloat16 with fp32 accumulation (oneDNN on CPUs with
AVX512-BF16 or AMX, tensor cores on CUDA; GPUs without bf16 get fp16), while normalisations
and softmax stay in fp32 as autocast decides. The prompt encoder runs in fp32; embeddings,
logits and IoU predictions come back as fp32. Its effect on Dice is measured in the README.
Where there is no fast bf16 path the choice is refused in one line rather than silently
emulated (emulated bf16 is slower than fp32).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .choices import PRECISIONS
from .errors import CheckpointError

if TYPE_CHECKING:
    import torch

__all__ = ["PRECISIONS", "autocast_dtype", "cpu_has_bf16", "set_precision"]


def cpu_has_bf16() -> bool:
    """Native bf16 dot products (AVX512-BF16 or AMX) through oneDNN."""
    import torch

    try:
        return bool(torch.backends.mkldnn.is_available()) and bool(
            torch.ops.mkldnn._is_mkldnn_bf16_supported()
        )
    except (AttributeError, RuntimeError):
        return False


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The dtype the encoder is autocast to on `device` (None: plain fp32), or a one-line
    CheckpointError where `precision` has no fast path."""
    import torch

    if precision not in PRECISIONS:
        raise CheckpointError(f"precision {precision!r}: expected {' or '.join(PRECISIONS)}")
    if precision == "fp32":
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu":
        if not cpu_has_bf16():
            raise CheckpointError(
                "precision bf16: this CPU has no bf16 instructions (AVX512-BF16 or AMX); "
                "use --precision fp32"
            )
        return torch.bfloat16
    raise CheckpointError(f"precision bf16: not supported on {device.type}; use fp32")


def set_precision(model, precision: str):
    """Make `model` encode in `precision` (checked against its device); returns the model."""
    model.autocast_dtype = autocast_dtype(precision, model.device)
    model.precision = precision
    return model
