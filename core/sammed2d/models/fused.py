"""oneDNN calls that finish their own output: the bias and a GELU applied to each block of a
convolution's or matrix product's output while it is in cache, instead of further passes
over maps of up to 64 MB (CPU inference only).

In LiteMedSAM's TinyViT, the exact GELUs (an erf per value) took a quarter of the bf16
encoder's time, and each linear layer first copied its bias into the whole output. The
arithmetic is the same (oneDNN's erf; the sums in another blocking): embeddings within 1e-5
of the plain path (tests/core/test_models.py). Elsewhere (other devices, autograd, a torch
without these calls, or while TorchScript traces, whose tracer cannot record their argument
types) the plain F.conv2d / F.linear path runs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ENABLED = True  # off: the plain path everywhere (the parity tests compare both)

_AVAILABLE: list[bool] = []


def conv(x: torch.Tensor, conv2d: nn.Conv2d, weight, bias) -> torch.Tensor:
    """gelu(conv2d(x)) with `conv2d`'s geometry and the given (BatchNorm-folded) weight and
    bias."""
    dtype = _dtype(x, weight, bias)
    if dtype is not None:
        return torch.ops.mkldnn._convolution_pointwise(
            x.to(dtype), weight.to(dtype), bias.to(dtype), list(conv2d.padding),
            list(conv2d.stride), list(conv2d.dilation), conv2d.groups, "gelu", [None], "none",
        )  # fmt: skip
    y = F.conv2d(x, weight, bias, conv2d.stride, conv2d.padding, conv2d.dilation, conv2d.groups)
    return F.gelu(y)


def linear(x: torch.Tensor, weight, bias, gelu: bool = False) -> torch.Tensor:
    """F.linear(x, weight, bias), and gelu of it, with the bias (if any) added in the
    product's epilogue (`weight` is (out, in), as nn.Linear's)."""
    dtype = _dtype(x, weight, bias)
    if dtype is not None:
        return torch.ops.mkldnn._linear_pointwise(
            x.to(dtype), weight.to(dtype), None if bias is None else bias.to(dtype),
            "gelu" if gelu else "none", [None], "none" if gelu else "",
        )  # fmt: skip
    y = F.linear(x, weight, bias)
    return F.gelu(y) if gelu else y


def _dtype(x: torch.Tensor, *params) -> torch.dtype | None:
    """The dtype to compute `x`'s layer in through oneDNN (autocast's, if on), or None for
    the plain path: also wherever autograd records (the fused calls have no gradients, and
    fine-tuning trains the decoder's weights on inputs that need none)."""
    if not ENABLED or x.device.type != "cpu" or torch.jit.is_tracing():
        return None
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, *params)):
        return None
    dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype
    if dtype not in (torch.float32, torch.bfloat16) or not available():
        return None
    return dtype


def available() -> bool:
    """Whether this torch has the fused calls and they give the plain results (checked once
    on small inputs)."""
    if not _AVAILABLE:
        ok = False
        try:
            if torch.backends.mkldnn.is_available():
                g = torch.Generator().manual_seed(0)
                x = torch.randn(1, 4, 5, 5, generator=g).contiguous(
                    memory_format=torch.channels_last
                )
                w, b = torch.randn(8, 4, 3, 3, generator=g), torch.randn(8, generator=g)
                lw, lb = torch.randn(6, 8, generator=g), torch.randn(6, generator=g)
                t = torch.randn(3, 8, generator=g)
                # Autocast off: under it the plain path runs in bf16 and would fail the
                # comparison, turning the fused calls off for the whole process.
                with torch.inference_mode(), torch.autocast("cpu", enabled=False):
                    got = torch.ops.mkldnn._convolution_pointwise(
                        x, w, b, [1, 1], [1, 1], [1, 1], 1, "gelu", [None], "none"
                    )
                    lin = torch.ops.mkldnn._linear_pointwise(t, lw, lb, "gelu", [None], "none")
                    ok = torch.allclose(
                        got, F.gelu(F.conv2d(x, w, b, padding=1)), rtol=1e-4, atol=1e-5
                    ) and torch.allclose(lin, F.gelu(F.linear(t, lw, lb)), rtol=1e-4, atol=1e-5)
        except (RuntimeError, AttributeError, NotImplementedError):
            ok = False
        _AVAILABLE.append(bool(ok))
    return _AVAILABLE[0]
