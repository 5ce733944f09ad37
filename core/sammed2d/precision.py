"""Reduced-precision image encoding: bf16 matrix products where the hardware has them.

`fp32` is the reference. `bf16` runs the image encoder and the mask decoder under autocast:
matrix products and convolutions in bfloat16 with fp32 accumulation (oneDNN on CPUs with
AVX512-BF16 or AMX, tensor cores on CUDA; GPUs without bf16 get fp16), while normalisations
and softmax stay in fp32 as autocast decides. The prompt encoder runs in fp32; embeddings,
logits and IoU predictions come back as fp32. Its effect on Dice is measured in the README
(Performance, bf16).
Where there is no fast bf16 path the choice is refused in one line rather than silently
emulated (emulated bf16 is slower than fp32).
"""

from __future__ import annotations

import platform
from typing import TYPE_CHECKING

from .choices import PRECISIONS
from .errors import CheckpointError

if TYPE_CHECKING:
    import torch

__all__ = ["PRECISIONS", "autocast_dtype", "cpu_has_bf16", "set_precision"]


_X86 = ("x86_64", "amd64", "i386", "i686", "x86")
# torch's CPU probes for native bf16 (torch.cpu; private, so each is looked up with a default)
_PROBES = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")


def cpu_has_bf16() -> bool:
    """Native bf16 dot products through oneDNN: AVX512-BF16 or AMX on x86.

    oneDNN also accepts bf16 on AVX-512 CPUs without either (Cascade Lake, Ice Lake) and
    converts to fp32 there, at about a quarter of the fp32 rate (a 2048^2 matmul on 2
    threads: 29 against 115 GFLOP/s), so those count as having none. On other
    architectures oneDNN's own answer stands."""
    import torch

    try:
        if not (
            torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
        ):
            return False
    except (AttributeError, RuntimeError):
        return False
    if platform.machine().lower() not in _X86:
        return True
    return _x86_native_bf16()


def _x86_native_bf16() -> bool:
    """AVX512-BF16 or AMX, from torch's CPU probe, or from /proc/cpuinfo where this torch
    has no probe; False where neither can tell (bf16 is then refused, never emulated)."""
    import torch

    probes = [getattr(torch.cpu, n, None) for n in _PROBES]
    if all(callable(p) for p in probes):
        try:
            return any(bool(p()) for p in probes)
        except RuntimeError:
            pass
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            flags = next(
                (line.split(":", 1)[1].split() for line in f if line.startswith("flags")), []
            )
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The dtype the encoder is autocast to on `device` (None: plain fp32), or a one-line
    CheckpointError where `precision` has no fast path."""
    import torch

    if precision not in PRECISIONS:
        raise CheckpointError(f"precision {precision!r}: expected {' or '.join(PRECISIONS)}")
    if precision == "fp32":
        return None
    if device.type == "cuda":
        # Native bf16 from Ampere (compute capability 8) on, and on ROCm. Older GPUs (T4,
        # V100) emulate it slowly, and torch.cuda.is_bf16_supported() counts that as
        # support by default: they get fp16, which their tensor cores run.
        native = torch.version.hip is not None or torch.cuda.get_device_capability(device)[0] >= 8
        return torch.bfloat16 if native else torch.float16
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
