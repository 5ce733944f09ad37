"""SAM's ViT image encoder, with SAM-Med2D's adapters as an option.

Parameter names follow Meta's and SAM-Med2D's checkpoints exactly, so their state dicts load
strictly. Input: a preprocessed (B, 3, S, S) batch; output: (B, 256, S/16, S/16) embeddings.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .common import MLPBlock, sam_neck


def relative_position_table(q_size: int, k_size: int, rel_pos: torch.Tensor) -> torch.Tensor:
    """Gather the (q_size, k_size, head_dim) relative-position embeddings SAM adds to attention."""
    max_dist = 2 * max(q_size, k_size) - 1
    if rel_pos.shape[0] != max_dist:
        # A checkpoint trained at another size: stretch the table linearly, as SAM does.
        rel_pos = F.interpolate(rel_pos.T[None], size=max_dist, mode="linear")[0].T
    q_coords = torch.arange(q_size, device=rel_pos.device)[:, None] * max(k_size / q_size, 1.0)
    k_coords = torch.arange(k_size, device=rel_pos.device)[None, :] * max(q_size / k_size, 1.0)
    relative = (q_coords - k_coords) + (k_size - 1) * max(q_size / k_size, 1.0)
    return rel_pos[relative.long()]


class Attention(nn.Module):
    """Multi-head attention with decomposed relative positions over a (B, H, W, C) grid."""

    def __init__(self, dim: int, num_heads: int, input_size: tuple[int, int]) -> None:
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)
        self.rel_pos_h = nn.Parameter(torch.zeros(2 * input_size[0] - 1, head_dim))
        self.rel_pos_w = nn.Parameter(torch.zeros(2 * input_size[1] - 1, head_dim))

    def attend(self, qkv: torch.Tensor) -> torch.Tensor:
        """Attention from a projected (B, H, W, 3C) qkv grid to (B, H, W, C), before `proj`."""
        b, h, w, c3 = qkv.shape
        c = c3 // 3
        qkv = qkv.reshape(b, h * w, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, heads, N, head_dim)
        r_q = q.reshape(b, self.num_heads, h, w, -1)
        rel_h = torch.einsum("bnhwc,hkc->bnhwk", r_q, relative_position_table(h, h, self.rel_pos_h))
        rel_w = torch.einsum("bnhwc,wkc->bnhwk", r_q, relative_position_table(w, w, self.rel_pos_w))
        bias = (rel_h[..., :, None] + rel_w[..., None, :]).reshape(b, self.num_heads, h * w, h * w)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return out.transpose(1, 2).reshape(b, h, w, c)


class Adapter(nn.Module):
    """SAM-Med2D's adapter: a channel gate, then a down/up spatial path, a skip and a LayerNorm."""

    def __init__(self, dim: int, ratio: float = 0.25) -> None:
        super().__init__()
        hidden = int(dim * ratio)
        self.norm = nn.LayerNorm(dim)
        self.channel = nn.Sequential(
            nn.Linear(dim, hidden, bias=False),
            nn.ReLU(),
            nn.Linear(hidden, dim, bias=False),
            nn.Sigmoid(),
        )
        self.spatial = nn.Sequential(
            nn.Conv2d(dim, dim, kernel_size=3, stride=2, padding=1, bias=False),
            nn.ReLU(),
            nn.ConvTranspose2d(dim, dim, kernel_size=4, stride=2, padding=1, bias=False),
            nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 3, 1, 2)
        gate = self.channel(x.mean(dim=(2, 3)))[:, :, None, None]
        x = x + self._spatial(x * gate)
        return self.norm(x.permute(0, 2, 3, 1))

    def _spatial(self, x: torch.Tensor) -> torch.Tensor:
        """`self.spatial` as two matrix products (im2col, then col2im).

        On the CPU, oneDNN re-lays out these 768-channel weights on every call and runs the
        transposed convolution slowly: as plain GEMMs the same sums take a fraction of the
        time. Results equal the convolutions up to float rounding.
        """
        down, up = self.spatial[0], self.spatial[2]
        b, c, h, w = x.shape
        cols = F.unfold(x, kernel_size=3, padding=1, stride=2)  # (B, C*9, L)
        y = torch.relu(_weight_first(down.weight.reshape(c, -1), cols))  # (B, C, L)
        cols = _weight_first(up.weight.reshape(c, -1).t(), y)  # (B, C*16, L)
        out = F.fold(cols, output_size=(h, w), kernel_size=4, padding=1, stride=2)
        return torch.relu(out)


def _weight_first(weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """weight (M, K) @ x (B, K, L) -> (B, M, L), with the weight as the GEMM's left operand.

    `weight @ x` broadcasts by folding the batch into the rows of x and running
    (B*L, K) @ (K, M): with L = 64 tokens that is ~1.7x slower on CPU, because the large
    weight gets re-packed for a thin left operand, and its output needs a transposing copy.
    """
    b, k, n = x.shape
    out = weight @ x.transpose(0, 1).reshape(k, b * n)  # (M, B*L); no copy when B = 1
    return out.view(-1, b, n).transpose(0, 1)


class Block(nn.Module):
    """One transformer block; `window_size` 0 means global attention."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int,
        grid_size: int,
        adapter: bool,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        size = (window_size, window_size) if window_size > 0 else (grid_size, grid_size)
        self.attn = Attention(dim, num_heads, size)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio))
        self.window_size = window_size
        if adapter:
            self.Adapter = Adapter(dim)  # noqa: N815 - the checkpoints' own name
        else:
            self.Adapter = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qkv = self.attn.qkv(self.norm1(x))
        if self.window_size > 0:
            out = self._windowed(qkv)
        else:
            out = self.attn.attend(qkv)
        x = x + self.attn.proj(out)
        x_norm = self.norm2(x)
        if self.Adapter is None:
            return x + self.mlp(x_norm)
        return x + self.mlp(x_norm) + self.Adapter(x_norm)

    def _windowed(self, qkv: torch.Tensor) -> torch.Tensor:
        """Windowed attention without projecting the padding.

        The reference pads the normalised tokens with zeros before `qkv`, so a padded token's
        q, k and v are the projection's bias alone. We project only the real tokens and fill
        the padding with that bias: the same numbers, for a third of the work at 16 x 16 tokens
        in 14 x 14 windows. The output projection is likewise applied after cropping.
        """
        b, h, w, c3 = qkv.shape
        ws = self.window_size
        hp, wp = -(-h // ws) * ws, -(-w // ws) * ws
        if (hp, wp) != (h, w):
            bias = self.attn.qkv.bias
            padded = bias.to(qkv.dtype).expand(b, hp, wp, c3).clone()
            padded[:, :h, :w] = qkv
            qkv = padded
        nh, nw = hp // ws, wp // ws
        windows = qkv.view(b, nh, ws, nw, ws, c3).permute(0, 1, 3, 2, 4, 5).reshape(-1, ws, ws, c3)
        out = self.attn.attend(windows)
        c = c3 // 3
        out = out.view(b, nh, nw, ws, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, c)
        return out[:, :h, :w]


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


class ViTImageEncoder(nn.Module):
    """SAM's image encoder. `adapters=True` gives SAM-Med2D's encoder."""

    def __init__(
        self,
        img_size: int,
        embed_dim: int,
        depth: int,
        num_heads: int,
        global_attn_indexes: tuple[int, ...],
        window_size: int = 14,
        patch_size: int = 16,
        adapters: bool = False,
        out_chans: int = 256,
    ) -> None:
        super().__init__()
        self.img_size = img_size
        grid = img_size // patch_size
        self.patch_embed = PatchEmbed(patch_size, 3, embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, embed_dim))
        self.blocks = nn.ModuleList(
            Block(
                embed_dim,
                num_heads,
                0 if i in global_attn_indexes else window_size,
                grid,
                adapters,
            )
            for i in range(depth)
        )
        self.neck = sam_neck(embed_dim, out_chans)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.neck(x.permute(0, 3, 1, 2))
