"""The TinyViT image encoder of MobileSAM / LiteMedSAM, for 256 x 256 input.

Parameter names follow `lite_medsam.pth`. Input: (B, 3, 256, 256) in [0, 1]; output:
(B, 256, 64, 64) embeddings.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import fused
from .common import sam_neck


class Conv2dBN(nn.Sequential):
    """Conv (no bias) then BatchNorm; the children are named `c` and `bn` as in the checkpoint."""

    def __init__(self, a: int, b: int, ks: int = 1, stride: int = 1, pad: int = 0, groups: int = 1):
        super().__init__()
        self.add_module("c", nn.Conv2d(a, b, ks, stride, pad, groups=groups, bias=False))
        self.add_module("bn", nn.BatchNorm2d(b))

    def folded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight, bias) of the convolution with the BatchNorm folded in (inference)."""
        conv, bn = self.c, self.bn
        scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
        return conv.weight * scale[:, None, None, None], bn.bias - bn.running_mean * scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return super().forward(x)
        # Inference: fold the BatchNorm into the convolution, one pass over the activations
        # instead of two (these maps are up to 256 x 256 x 256 floats).
        conv = self.c
        weight, bias = self.folded()
        return F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)


def conv_gelu(conv: Conv2dBN, x: torch.Tensor, folded=None) -> torch.Tensor:
    """gelu(conv(x)) at inference, the GELU inside the convolution where oneDNN has it."""
    weight, bias = folded if folded is not None else conv.folded()
    return fused.conv(x, conv.c, weight, bias)


# An MBConv's hidden map is 4x its input: at LiteMedSAM's 256 x 256 grid that is 64 MB per
# image, far past the caches, and the block spent most of its time moving it. Inference
# runs it in bands of rows per image whose hidden map fits this budget (each band reads one
# halo row above and below for the 3 x 3 convolution): the same sums, about 4x faster.
BAND_BYTES = 8 << 20
# Bands and groups are sized as if in fp32 whatever the dtype: in bf16 the same rows (half
# the bytes) ran 2-3 % faster than bands twice as tall (AMD EPYC, 2 threads).
_SIZED_AS = 4  # bytes per value

# Off: window attention pads the grid and projects every padded token, as the reference
# (the benchmark's "whole maps" path; the parity tests compare both).
GRID_ATTENTION = True


class Stem(nn.Module):
    """LiteMedSAM replaced MobileSAM's strided stem with 1x1 convs: the grid stays 256 wide."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.seq = nn.Sequential(Conv2dBN(3, dim // 2), nn.GELU(), Conv2dBN(dim // 2, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return self.seq(x)
        first, _, second = self.seq
        return second(conv_gelu(first, x))


class MBConv(nn.Module):
    def __init__(self, dim: int, expand_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * expand_ratio)
        self.conv1 = Conv2dBN(dim, hidden)
        self.conv2 = Conv2dBN(hidden, hidden, ks=3, pad=1, groups=hidden)
        self.conv3 = Conv2dBN(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            rows = _band_rows(self.conv1.c.out_channels, x)
            if rows < x.shape[2]:
                return self._banded(x, rows)
        y = F.gelu(self.conv1(x))
        y = F.gelu(self.conv2(y))
        return F.gelu(self.conv3(y) + x)

    def _banded(self, x: torch.Tensor, rows: int) -> torch.Tensor:
        folded1, folded2 = self.conv1.folded(), self.conv2.folded()
        w3, b3 = self.conv3.folded()
        h = x.shape[2]
        out = torch.empty_like(x)
        for i in range(x.shape[0]):
            image = x[i : i + 1]
            for top in range(0, h, rows):
                bottom = min(h, top + rows)
                lo, hi = max(0, top - 1), min(h, bottom + 1)
                y = conv_gelu(self.conv1, image[:, :, lo:hi], folded1)
                # The 3 x 3 conv pads with zeros; rows that read padding instead of the next
                # band's halo are cut off, so only the image's own edges see zeros.
                y = conv_gelu(self.conv2, y, folded2)[:, :, top - lo : bottom - lo]
                z = F.conv2d(y, w3, b3) + image[:, :, top:bottom]
                out[i : i + 1, :, top:bottom] = F.gelu(z)
        return out


def _band_rows(hidden: int, x: torch.Tensor) -> int:
    """Rows per band for a hidden map of `hidden` channels: a power of two >= 8 within
    BAND_BYTES, or all rows when the whole map fits."""
    per_row = hidden * x.shape[3] * _SIZED_AS
    if x.shape[2] * per_row <= BAND_BYTES:
        return x.shape[2]
    rows = 8
    while rows * 2 * per_row <= BAND_BYTES:
        rows *= 2
    return rows


class PatchMerging(nn.Module):
    """Takes (B, C, H, W) or (B, H*W, C) at `resolution`, returns (B, H'*W', out_dim)."""

    def __init__(self, resolution: int, dim: int, out_dim: int) -> None:
        super().__init__()
        self.resolution = resolution
        # LiteMedSAM keeps the last stage at 64 x 64: the 320-wide merge does not stride.
        stride = 1 if out_dim in (320, 448, 576) else 2
        self.conv1 = Conv2dBN(dim, out_dim)
        self.conv2 = Conv2dBN(out_dim, out_dim, ks=3, stride=stride, pad=1, groups=out_dim)
        self.conv3 = Conv2dBN(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 3:
            b = x.shape[0]
            x = x.view(b, self.resolution, self.resolution, -1).permute(0, 3, 1, 2)
        if self.training:
            x = F.gelu(self.conv2(F.gelu(self.conv1(x))))
        else:
            x = conv_gelu(self.conv2, conv_gelu(self.conv1, x))
        x = self.conv3(x)
        return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, x.shape[1])


class WindowAttention(nn.Module):
    """LeViT-style attention with a learned bias per (|dy|, |dx|) offset inside a window."""

    def __init__(self, dim: int, num_heads: int, window_size: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.key_dim = dim // num_heads
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, window_size * window_size))
        yy, xx = torch.meshgrid(torch.arange(window_size), torch.arange(window_size), indexing="ij")
        yy, xx = yy.flatten(), xx.flatten()
        # The reference numbers offsets in order of first appearance, which is |dy| * ws + |dx|.
        idx = (yy[:, None] - yy[None, :]).abs() * window_size + (xx[:, None] - xx[None, :]).abs()
        self.register_buffer("attention_bias_idxs", idx, persistent=False)

    def forward(self, x: torch.Tensor, grid: tuple[int, int, int] | None = None) -> torch.Tensor:
        """Attention within each of (windows, tokens, channels), or with `grid` = (h, w,
        window size) over the windows of a (b, h * w, c) grid of tokens."""
        if grid is not None:
            return self._over_grid(x, *grid)
        b, n, c = x.shape
        qkv = fused.linear(self.norm(x), self.qkv.weight, self.qkv.bias)
        qkv = qkv.view(b, n, self.num_heads, 3 * self.key_dim)
        q, k, v = qkv.permute(0, 2, 1, 3).split(self.key_dim, dim=3)
        bias = self._bias(q.dtype)
        # Plain softmax attention: with a float mask, SDPA on the CPU spends more time
        # checking the mask than attending over these 49- and 196-token windows.
        attn = torch.baddbmm(
            bias.expand(b, -1, -1, -1).reshape(-1, n, n),
            q.reshape(-1, n, self.key_dim),
            k.reshape(-1, n, self.key_dim).transpose(1, 2),
            alpha=self.key_dim**-0.5,
        )
        out = (_softmax(attn) @ v.reshape(-1, n, self.key_dim)).view(b, -1, n, self.key_dim)
        out = out.transpose(1, 2).reshape(b, n, c)
        return fused.linear(out, self.proj.weight, self.proj.bias)

    def _bias(self, dtype: torch.dtype) -> torch.Tensor:
        """(heads, tokens, tokens) attention bias, gathered from the learned offsets."""
        return self.attention_biases[:, self.attention_bias_idxs].to(dtype)

    def _over_grid(self, x: torch.Tensor, h: int, w: int, ws: int) -> torch.Tensor:
        """Window attention over a (b, h * w, c) grid of tokens, padded to whole windows as
        the reference pads, without projecting the padding or copying it around.

        The reference pads the grid with zeros and then normalises and projects every
        token; a zero token's LayerNorm is the norm's bias, so every padding token gets the
        same q, k and v, computed once here. Only real tokens are normalised and projected
        (stages 3 and 4 pad 64 x 64 to 70 x 70: 20 % more tokens), and their q, k and v go
        straight into a head-major window layout, where each head's bias is one small
        matrix broadcast over its windows rather than a copy per window.
        """
        b, n, c = x.shape
        heads, kd = self.num_heads, self.key_dim
        nh, nw = -(-h // ws), -(-w // ws)
        qkv = fused.linear(self.norm(x), self.qkv.weight, self.qkv.bias)
        filler = fused.linear(self.norm(x.new_zeros(1, c)), self.qkv.weight, self.qkv.bias)
        windows = qkv.new_empty(3, heads, b, nh, nw, ws, ws, kd)
        # (b, nh, ws, nw, ws, heads, 3, kd): the reference's channel order per token.
        as_grid = windows.permute(2, 3, 5, 4, 6, 1, 0, 7)
        _between_grid_and_windows(qkv.view(b, h, w, heads, 3, kd), as_grid, h, w, ws, True)
        filler = filler.view(heads, 3, kd)
        if h % ws:
            as_grid[:, -1, h % ws :] = filler
        if w % ws:
            as_grid[:, :, :, -1, w % ws :] = filler
        tokens = ws * ws
        q, k, v = windows.view(3, heads, -1, tokens, kd).unbind(0)
        bias = self._bias(q.dtype)
        out = torch.empty_like(q)
        group = max(1, BAND_BYTES // (tokens * tokens * _SIZED_AS))
        for head in range(heads):
            for start in range(0, q.shape[1], group):
                part = slice(start, start + group)
                scores = torch.baddbmm(
                    bias[head], q[head, part], k[head, part].transpose(1, 2), alpha=kd**-0.5
                )
                torch.bmm(_softmax(scores), v[head, part], out=out[head, part])
        grid = out.new_empty(b, h, w, heads, kd)
        as_grid = out.view(heads, b, nh, nw, ws, ws, kd).permute(1, 2, 4, 3, 5, 0, 6)
        _between_grid_and_windows(grid, as_grid, h, w, ws, False)
        return fused.linear(grid.view(b, n, c), self.proj.weight, self.proj.bias)


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = fused.linear(self.norm(x), self.fc1.weight, self.fc1.bias, gelu=True)
        return fused.linear(hidden, self.fc2.weight, self.fc2.bias)


class TinyViTBlock(nn.Module):
    def __init__(self, dim: int, resolution: int, num_heads: int, window_size: int) -> None:
        super().__init__()
        self.resolution = resolution
        self.window_size = window_size
        self.attn = WindowAttention(dim, num_heads, window_size)
        self.local_conv = Conv2dBN(dim, dim, ks=3, pad=1, groups=dim)
        self.mlp = MLP(dim, 4 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        h = w = self.resolution
        ws = self.window_size
        if h == ws and w == ws:
            attn = self._attend(x)
        elif GRID_ATTENTION and not self.training:
            attn = self.attn(x, grid=(h, w, ws))
        else:
            grid = x.view(b, h, w, c)
            pad_b, pad_r = (ws - h % ws) % ws, (ws - w % ws) % ws
            if pad_b or pad_r:
                grid = F.pad(grid, (0, 0, 0, pad_r, 0, pad_b))
            hp, wp = h + pad_b, w + pad_r
            nh, nw = hp // ws, wp // ws
            windows = grid.view(b, nh, ws, nw, ws, c).transpose(2, 3).reshape(-1, ws * ws, c)
            attn = self._attend(windows)
            attn = attn.view(b, nh, nw, ws, ws, c).transpose(2, 3).reshape(b, hp, wp, c)
            attn = attn[:, :h, :w].reshape(b, n, c)
        x = x + attn
        # Tokens (b, n, c) are a channels-last image: the 3 x 3 conv runs on that layout and
        # its result is read back as tokens, with no transposed copies either way.
        x = self.local_conv(x.view(b, h, w, c).permute(0, 3, 1, 2))
        x = x.permute(0, 2, 3, 1).reshape(b, n, c)
        return x + self.mlp(x)

    def _attend(self, windows: torch.Tensor) -> torch.Tensor:
        """Attention over (windows, tokens, channels), a cache-sized group of windows at a
        time: all of a batch's 14 x 14 windows at once make score tensors of tens of MB
        (and a bias copy as large), and a batch of 8 ran twice as slow per image as one."""
        n = windows.shape[1]
        per_window = self.attn.num_heads * n * n * _SIZED_AS
        group = max(1, BAND_BYTES // per_window)
        if windows.shape[0] <= group:
            return self.attn(windows)
        return torch.cat([self.attn(part) for part in windows.split(group)])


# Rows shorter than this go through fp32 for a bf16 softmax on the CPU (below).
_BF16_SOFTMAX_FROM = 64


def _softmax(scores: torch.Tensor) -> torch.Tensor:
    """Softmax over the last axis. Short bf16 rows go through fp32 on the CPU: torch's bf16
    kernel over the 49-token windows' rows ran 1.2-1.6x slower than fp32's plus both casts
    (its vector tail); over the 196-token windows of stage 3 it is 1.5x faster than the
    casts and fp32 (1.9 against 2.9 ms for 125 windows, 2 threads; rows of 64-256 all
    faster). Either way the result differs from the fp32 one rounded in about one value
    in 100,000, by one bf16 step."""
    if (
        scores.dtype == torch.bfloat16
        and scores.device.type == "cpu"
        and scores.shape[-1] < _BF16_SOFTMAX_FROM
    ):
        return scores.float().softmax(dim=-1).to(torch.bfloat16)
    return scores.softmax(dim=-1)


def _regions(size: int, ws: int) -> list[tuple[slice, slice, slice]]:
    """Along one axis of a grid cut into windows of `ws`: (windows, rows in a window, grid
    rows) of the whole windows, then of the last, partial one."""
    full, rest = divmod(size, ws)
    regions = [(slice(0, full), slice(0, ws), slice(0, full * ws))] if full else []
    if rest:
        regions.append((slice(full, full + 1), slice(0, rest), slice(full * ws, size)))
    return regions


def _between_grid_and_windows(grid, windows, h: int, w: int, ws: int, to_windows: bool):
    """Copy a (b, h, w, ...) grid's tokens into the (b, nh, ws, nw, ws, ...) view of its
    windows, or back; padding positions are left alone."""
    for wy, iy, gy in _regions(h, ws):
        for wx, ix, gx in _regions(w, ws):
            part = grid[:, gy, gx]
            part = part.unflatten(1, (wy.stop - wy.start, iy.stop)).unflatten(
                3, (wx.stop - wx.start, ix.stop)
            )
            view = windows[:, wy, iy, wx, ix]
            if to_windows:
                view.copy_(part)
            else:
                part.copy_(view)


class ConvStage(nn.Module):
    def __init__(self, dim: int, resolution: int, depth: int, out_dim: int, expand_ratio: float):
        super().__init__()
        self.blocks = nn.ModuleList(MBConv(dim, expand_ratio) for _ in range(depth))
        self.downsample = PatchMerging(resolution, dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.downsample(x)


class AttentionStage(nn.Module):
    def __init__(
        self,
        dim: int,
        resolution: int,
        depth: int,
        num_heads: int,
        window_size: int,
        out_dim: int | None,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            TinyViTBlock(dim, resolution, num_heads, window_size) for _ in range(depth)
        )
        self.downsample = None if out_dim is None else PatchMerging(resolution, dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x if self.downsample is None else self.downsample(x)


class TinyViTEncoder(nn.Module):
    """LiteMedSAM's encoder (embed dims 64/128/160/320, depths 2/2/6/2 by default)."""

    def __init__(
        self,
        img_size: int = 256,
        embed_dims: tuple[int, ...] = (64, 128, 160, 320),
        depths: tuple[int, ...] = (2, 2, 6, 2),
        num_heads: tuple[int, ...] = (2, 4, 5, 10),
        window_sizes: tuple[int, ...] = (7, 7, 14, 7),
        expand_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        self.img_size = img_size
        self.patch_embed = Stem(embed_dims[0])
        resolutions = [img_size, img_size // 2, img_size // 4, img_size // 4]
        self.out_grid = img_size // 4
        layers = [ConvStage(embed_dims[0], resolutions[0], depths[0], embed_dims[1], expand_ratio)]
        for i in range(1, len(depths)):
            out_dim = embed_dims[i + 1] if i + 1 < len(depths) else None
            layers.append(
                AttentionStage(
                    embed_dims[i], resolutions[i], depths[i], num_heads[i], window_sizes[i], out_dim
                )
            )
        self.layers = nn.ModuleList(layers)
        self.neck = sam_neck(embed_dims[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Channels-last from the start: the 1 x 1 and depthwise convolutions run faster on
        # it, and the token stages read it without copies.
        x = self.patch_embed(x.contiguous(memory_format=torch.channels_last))
        for layer in self.layers:
            x = layer(x)
        b, _, c = x.shape
        x = x.view(b, self.out_grid, self.out_grid, c).permute(0, 3, 1, 2)
        # Kept channels-last: the decoder reads the embedding as tokens, and a (C, h, w)
        # copy here would cost one transposed pass now and another in every decoder call.
        return self.neck(x).contiguous(memory_format=torch.channels_last)
