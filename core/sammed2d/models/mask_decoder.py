"""SAM's mask decoder: a two-way transformer between prompt tokens and the image embedding."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from . import fused
from .common import LayerNorm2d, MLPBlock

# Image sides from this many tokens (LiteMedSAM's 64 x 64) take the reassociated attention
# below. SAM-Med2D's 16 x 16 side costs ~1 ms either way and keeps the reference's order of
# operations, so its masks stay bit-identical to the official predictor's.
REASSOCIATE_MIN_TOKENS = 1024


class DecoderAttention(nn.Module):
    """Attention with separate q/k/v projections, optionally to a narrower inner width."""

    def __init__(self, dim: int, num_heads: int, downsample_rate: int = 1) -> None:
        super().__init__()
        inner = dim // downsample_rate
        self.num_heads = num_heads
        self.q_proj = nn.Linear(dim, inner)
        self.k_proj = nn.Linear(dim, inner)
        self.v_proj = nn.Linear(dim, inner)
        self.out_proj = nn.Linear(inner, dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def forward(self, q, k, v, residual: torch.Tensor | None = None) -> torch.Tensor:
        """Attention output, plus `residual` when given (fused where that saves a pass)."""
        n_q, n_k = q.shape[-2], k.shape[-2]
        narrow = self.num_heads * min(n_q, n_k) < self.q_proj.out_features
        if narrow and max(n_q, n_k) >= REASSOCIATE_MIN_TOKENS:
            if n_q > n_k:
                return self._few_keys(q, k, v, residual)
            out = self._few_queries(q, k, v)
        else:
            out = self._plain(q, k, v)
        return out if residual is None else residual + out

    def _plain(self, q, k, v):
        q = self._heads(self.q_proj(q))
        k = self._heads(self.k_proj(k))
        v = self._heads(self.v_proj(v))
        scale = math.sqrt(q.shape[-1])
        # Small matmuls and a softmax, as the reference writes it; the CPU flash kernel is
        # several times slower at these shapes. Scores are laid out with the shorter side
        # first in memory, because a softmax over a short last axis is ~10x slower on CPU.
        if q.shape[-2] > k.shape[-2]:
            attn = torch.softmax((k @ q.transpose(-2, -1)) / scale, dim=-2)
            out = attn.transpose(-2, -1) @ v
        else:
            out = torch.softmax((q @ k.transpose(-2, -1)) / scale, dim=-1) @ v
        b, h, n, c = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, n, h * c))

    # Between a few prompt tokens and thousands of image tokens, the image side's projections
    # are the whole cost. Both forms below are the same sums, reassociated so that the image
    # tokens meet (heads x prompt tokens) columns instead of the projection width: 56 rather
    # than 128 for SAM's decoder. Scores are kept prompt-tokens-first in memory, as above.

    def _through(self, xh: torch.Tensor, proj: nn.Linear) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-head prompt vectors xh (B, H, s, d) taken back through `proj` to the image width.

        For image tokens y: xh . proj(y)_head = (xh @ W_head) . y + xh . b_head, so this
        returns the (B, H*s, C) rows and the (B, H*s, 1) bias that give every score at once.
        """
        b, h, s, d = xh.shape
        rows = (xh @ proj.weight.view(h, d, -1)).reshape(b, h * s, -1)
        bias = (xh * proj.bias.view(h, 1, d)).sum(-1).reshape(b, h * s, 1)
        return rows, bias

    def _few_queries(self, q, k, v):
        """Prompt tokens attend to the image: project the queries back to the image width."""
        h = self.num_heads
        qh = self._heads(self.q_proj(q))  # (B, H, s, d)
        b, _, s, d = qh.shape
        q_img, q_bias = self._through(qh, self.k_proj)
        attn = torch.softmax(_scores(q_bias, q_img, k, d), dim=-1)  # (B, H*s, N)
        mixed = _times(attn, v).view(b, h, s, -1)  # (B, H, s, C)
        wv = self.v_proj.weight.view(h, d, -1)
        out = mixed @ wv.transpose(1, 2) + self.v_proj.bias.view(h, 1, d)  # (B, H, s, d)
        return self.out_proj(out.transpose(1, 2).reshape(b, s, h * d))

    def _few_keys(self, q, k, v, residual):
        """The image attends to the prompt tokens: fold keys and values into the image width."""
        h = self.num_heads
        kh = self._heads(self.k_proj(k))  # (B, H, s, d)
        vh = self._heads(self.v_proj(v))
        b, _, s, d = kh.shape
        k_img, k_bias = self._through(kh, self.q_proj)
        scores = _scores(k_bias, k_img, q, d)  # (B, H*s, N)
        attn = torch.softmax(scores.view(b, h, s, -1), dim=2).view(b, h * s, -1)
        wo = self.out_proj.weight.view(-1, h, d).transpose(0, 1)  # (H, C, d)
        v_img = (vh @ wo.transpose(1, 2)).reshape(b, h * s, -1)  # (B, H*s, C)
        # Each head's weights sum to one, so a 1/H share of the output bias on every row
        # adds the bias once; the residual then rides in the same matmul.
        v_img = v_img + self.out_proj.bias / h
        if residual is None:
            return attn.transpose(1, 2) @ v_img
        return torch.baddbmm(residual, attn.transpose(1, 2), v_img)


def _times(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b for (B, m, N) weights over (1 or B, N, C) image tokens. On the CPU oneDNN takes
    the image side as the transposed weight of an inner product, in place: at LiteMedSAM's
    56 x 4,096 x 256 about 1.5x faster than the batched matmul (fp32). Over one image
    shared by B > 1 prompts the batched matmul is kept: the prompts' rows in one inner
    product change bf16's sums from those of a prompt decoded alone."""
    if a.shape[0] == 1 and b.shape[0] == 1:
        return fused.linear(a[0], b[0].t(), None).unsqueeze(0)
    return a @ b


def _scores(bias: torch.Tensor, rows: torch.Tensor, image: torch.Tensor, d: int) -> torch.Tensor:
    """(bias + rows . image) / sqrt(d), (B, H*s, N), for (B, H*s, C) rows and (1 or B, N, C)
    image; one image shared by all B prompts meets all their rows in one product.

    The product is taken as (image tokens x rows), with the image as the contiguous left
    operand: at LiteMedSAM's 4,096 x 256 x 56 that runs about 1.7x faster on the CPU than
    the rows-first orientation, and gives the same sums (identical values). One transposed
    copy then puts the image axis last again for the softmax."""
    # The scale goes on the few rows rather than on every score: no pass over the scores,
    # and the same numbers where it is a power of two (SAM's heads: d = 16, 1/4).
    scale = 1 / math.sqrt(d)
    b, m, c = rows.shape
    if image.shape[0] == 1:
        rows, bias = rows.reshape(1, b * m, c), bias.reshape(1, b * m, 1)
    scores = torch.baddbmm(bias.transpose(1, 2) * scale, image, rows.transpose(1, 2) * scale)
    return scores.transpose(1, 2).contiguous().view(b, m, -1)  # (B, H*s, N)


class TwoWayAttentionBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_dim: int, skip_first_layer_pe: bool) -> None:
        super().__init__()
        self.self_attn = DecoderAttention(dim, num_heads)
        self.norm1 = nn.LayerNorm(dim)
        self.cross_attn_token_to_image = DecoderAttention(dim, num_heads, downsample_rate=2)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLPBlock(dim, mlp_dim, activation=nn.ReLU)
        self.norm3 = nn.LayerNorm(dim)
        self.norm4 = nn.LayerNorm(dim)
        self.cross_attn_image_to_token = DecoderAttention(dim, num_heads, downsample_rate=2)
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(self, queries, keys, query_pe, key_pe):
        if self.skip_first_layer_pe:
            # SAM's first layer replaces the queries (no residual) and adds no positions.
            queries = self.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        queries = self.norm1(queries)

        q, k = queries + query_pe, keys + key_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image(q, k, keys))
        queries = self.norm3(queries + self.mlp(queries))

        # The keys have not changed since `k` was formed: reuse it.
        q = queries + query_pe
        keys = self.norm4(self.cross_attn_image_to_token(k, q, queries, residual=keys))
        return queries, keys


class TwoWayTransformer(nn.Module):
    def __init__(self, depth: int = 2, dim: int = 256, num_heads: int = 8, mlp_dim: int = 2048):
        super().__init__()
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(dim, num_heads, mlp_dim, skip_first_layer_pe=i == 0)
            for i in range(depth)
        )
        self.final_attn_token_to_image = DecoderAttention(dim, num_heads, downsample_rate=2)
        self.norm_final_attn = nn.LayerNorm(dim)

    def forward(self, keys, key_pe, point_embedding):
        """keys (B, h*w, C) image tokens, key_pe (1 or B, h*w, C), point_embedding (B, n, C)."""
        queries = point_embedding
        for layer in self.layers:
            queries, keys = layer(queries, keys, point_embedding, key_pe)
        q, k = queries + point_embedding, keys + key_pe
        queries = self.norm_final_attn(queries + self.final_attn_token_to_image(q, k, keys))
        return queries, keys


class MLP(nn.Module):
    """Linear layers with ReLU between them; `layers.N` as in the checkpoints."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


class MaskDecoder(nn.Module):
    def __init__(self, dim: int = 256, num_multimask_outputs: int = 3) -> None:
        super().__init__()
        self.transformer = TwoWayTransformer(dim=dim)
        self.num_mask_tokens = num_multimask_outputs + 1
        self.iou_token = nn.Embedding(1, dim)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(dim, dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(dim // 4),
            nn.GELU(),
            nn.ConvTranspose2d(dim // 4, dim // 8, kernel_size=2, stride=2),
            nn.GELU(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(dim, dim, dim // 8, 3) for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(dim, 256, self.num_mask_tokens, 3)

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: bool | None,
        regions: list[tuple[int, int, int, int]] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Low-res mask logits (B, 1, 3 or 4, 4h, 4w) and predicted IoUs (B, 1, 3 or 4).

        `image_embeddings` is (1, C, h, w), shared by all B prompts, or (B, C, h, w), one each.
        `regions`: per prompt, the token rows and columns (y0, y1, x0, x1) whose masks are
        wanted (`box_regions`); logits elsewhere are OUTSIDE (see `_masks_in_regions`).
        """
        if multimask_output is None:  # all four, the single mask first (one pass either way)
            sl = slice(None)
        else:
            sl = slice(1, None) if multimask_output else slice(0, 1)
        return self.predict_masks(
            image_embeddings,
            image_pe,
            sparse_prompt_embeddings,
            dense_prompt_embeddings,
            sl,
            regions,
        )

    def predict_masks(
        self, image_embeddings, image_pe, sparse, dense, which=slice(None), regions=None
    ):
        """Masks and IoUs for the mask tokens `which` selects (all four by default).

        The IoU head sees every token either way; only the selected masks are upscaled.
        """
        tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        tokens = tokens.unsqueeze(0).expand(sparse.shape[0], -1, -1)
        tokens = torch.cat([tokens, sparse], dim=1)
        n = tokens.shape[0]
        _, c, h, w = image_embeddings.shape
        # Without mask prompts every prompt starts from the same image tokens (the prompt
        # encoder's no-mask embedding is one row expanded, stride 0), and the first
        # layer's image-side products take all prompts' rows at once over one copy (with n
        # boxes on a slice, n - 1 fewer passes over 4,096 x 256 tokens). The tokens part
        # ways where the image attends to each prompt's tokens. SAM-Med2D's 16 x 16 tokens
        # keep the reference's per-prompt order of operations (see REASSOCIATE_MIN_TOKENS).
        one = image_embeddings.shape[0] == 1 and (dense.shape[0] == 1 or dense.stride(0) == 0)
        if one and h * w >= REASSOCIATE_MIN_TOKENS:
            image_embeddings, dense, n = image_embeddings[:1], dense[:1], 1
        # Image tokens in token-major order, written once: every add, norm and projection
        # after this runs on contiguous rows.
        src = torch.empty((n, h * w, c), dtype=dense.dtype, device=dense.device)
        torch.add(_tokens(image_embeddings), _tokens(dense), out=src)
        hs, src = self.transformer(src, _tokens(image_pe), tokens)
        iou = self.iou_prediction_head(hs[:, 0, :])[:, which]
        mask_tokens_out = hs[:, 1 : 1 + self.num_mask_tokens, :]
        mlps = list(enumerate(self.output_hypernetworks_mlps))[which]
        hyper_in = torch.stack([mlp(mask_tokens_out[:, i, :]) for i, mlp in mlps], dim=1)
        if regions is not None:
            return self._masks_in_regions(src, hyper_in, h, w, regions), iou
        return self._masks_token_major(src, hyper_in, h, w), iou

    def _masks_in_regions(self, src, hyper_in, h, w, regions):
        """`_masks_token_major` over each prompt's region of tokens only, OUTSIDE elsewhere.

        Each token's 4 x 4 block of logits depends on that token alone (both transposed
        convolutions have kernel = stride = 2; the norm and GELUs are per pixel), so the
        logits inside a region are the whole map's. Where a mask reaches the region's outer
        ring of tokens (one that does not lie on the image's edge), it may go on outside:
        that prompt's whole map is computed instead. A second mask wholly outside the
        region, apart from the first, is not seen: 651 walk steps on fourteen structures
        had none even outside regions grown half as far as `box_regions` grows them.
        """
        b, k = hyper_in.shape[:2]
        out = src.new_full((b, k, 4 * h, 4 * w), OUTSIDE)
        grid = src.view(b, h, w, -1)
        for i, (y0, y1, x0, x1) in enumerate(regions):
            part = grid[i, y0:y1, x0:x1].reshape(1, (y1 - y0) * (x1 - x0), -1)
            logits = self._masks_token_major(part, hyper_in[i : i + 1], y1 - y0, x1 - x0)[0]
            # each side's outer token (4 logits deep), unless the side is the image's edge
            ring = [
                (y0 > 0, logits[:, :4]),
                (y1 < h, logits[:, -4:]),
                (x0 > 0, logits[:, :, :4]),
                (x1 < w, logits[:, :, -4:]),
            ]
            if any(inner and bool((side > 0).any()) for inner, side in ring):
                out[i] = self._masks_token_major(src[i : i + 1], hyper_in[i : i + 1], h, w)[0]
            else:
                out[i, :, 4 * y0 : 4 * y1, 4 * x0 : 4 * x1] = logits
        return out

    def _masks_token_major(self, src, hyper_in, h, w):
        """`output_upscaling` and the hypernetwork product without leaving token-major order.

        Both transposed convolutions have kernel = stride = 2, so each is one matmul whose
        output holds every 2 x 2 sub-pixel block next to its source token; the LayerNorm runs
        on the contiguous channel axis. Only the final (B, K) logits get interleaved into
        image order, instead of 32 feature channels at 16x the token count.
        """
        up1, norm, act1, up2, _ = self.output_upscaling
        b = src.shape[0]
        x = _subpixel(src.reshape(b * h * w, -1), up1)
        x = x.reshape(b * h * w * 4, -1)  # one row per output pixel of the first convolution
        # The GELUs run in place: each map is 4-8 MB, and a fresh output for it is one
        # more pass over memory that the products do not need.
        x = _gelu_(F.layer_norm(x, x.shape[-1:], norm.weight, norm.bias, norm.eps), act1)
        x = _subpixel(x, up2, gelu=True)
        x = x.reshape(b, h * w * 16, -1)
        k = hyper_in.shape[1]
        # Each mask's logits contiguous, in the order (token i, j; first block a, b'; second
        # block a2, b2), to go to row 4i+2a+a2, column 4j+2b'+b2. Two reorders with runs of
        # 4 and 2 values take half the time of one 8-axis gather (LiteMedSAM's four masks,
        # product and reorders: 0.55 against 0.95 ms in fp32, 0.40 against 0.78 in bf16).
        # The product stays image-rows-first: a bf16 product with the image side transposed
        # first copies it (2.2 ms).
        masks = (x @ hyper_in.transpose(1, 2)).transpose(1, 2).contiguous()
        masks = masks.view(b, k, h, w, 2, 2, 4)
        masks = masks.permute(0, 1, 2, 4, 3, 5, 6).contiguous()  # (i, a, j, b', a2 b2)
        masks = masks.view(b, k, h, 2, w, 2, 2, 2).permute(0, 1, 2, 3, 6, 4, 5, 7)
        return masks.reshape(b, k, 4 * h, 4 * w)


# The logit given to the pixels outside a prompt's region: far below any the decoder makes,
# finite, so that resizing the map mixes no inf into the pixels near the region's edge, and
# a power of two, the same number in fp32, bf16 and fp16.
OUTSIDE = -16384.0


def box_regions(
    boxes: torch.Tensor, input_size: int, h: int, w: int, grow: float = 0.5, least: int = 8
) -> list[tuple[int, int, int, int]]:
    """Token regions (y0, y1, x0, x1) around (K, 4) boxes in model-input pixels: each box
    grown on every side by `grow` times its own side, and at least `least` tokens, on the
    (h, w) token grid. Boxes alone keep LiteMedSAM's masks well inside this (propagation
    steps, docs/measurements.md), and `_masks_in_regions` checks each mask against it.

    Sides are whole multiples of 8 tokens (widened about their middle): oneDNN prepares a
    kernel for each new product shape, several ms each, and this keeps them to a few dozen.
    """
    per_token = input_size / max(h, w)
    out = []
    for x0, y0, x1, y1 in boxes.tolist():
        gx = max(grow * (x1 - x0), least * per_token)
        gy = max(grow * (y1 - y0), least * per_token)
        out.append(
            _whole_eighths((y0 - gy) / per_token, (y1 + gy) / per_token, h)
            + _whole_eighths((x0 - gx) / per_token, (x1 + gx) / per_token, w)
        )
    return out


def _whole_eighths(lo: float, hi: float, n: int) -> tuple[int, int]:
    """[lo, hi) widened to whole tokens, then to a multiple of 8 tokens, within [0, n)."""
    a, b = max(math.floor(lo), 0), min(math.ceil(hi), n)
    size = min(-(-(b - a) // 8) * 8, n)
    a = max(0, min(a - (size - (b - a)) // 2, n - size))
    return a, a + size


def _gelu_(x: torch.Tensor, act: nn.GELU) -> torch.Tensor:
    if torch.is_grad_enabled() and x.requires_grad:  # training: autograd needs the input
        return F.gelu(x, approximate=act.approximate)
    return torch.ops.aten.gelu_(x, approximate=act.approximate)


def _tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, h*w, C) view."""
    return x.flatten(2).transpose(1, 2)


def _subpixel(x: torch.Tensor, conv: nn.ConvTranspose2d, gelu: bool = False) -> torch.Tensor:
    """Rows x (N, C_in) through a kernel = stride = 2 transposed convolution, (N, 4*C_out),
    and SAM's exact GELU after it when `gelu`.

    On the CPU the bias and the GELU ride in oneDNN's product (`fused.linear`): addmm
    first copies the bias into the whole 4-8 MB output and the GELU is one more pass."""
    w = conv.weight  # (C_in, C_out, 2, 2) -> (2*2*C_out, C_in), output channel fastest
    weight = w.permute(2, 3, 1, 0).reshape(-1, w.shape[0])
    return fused.linear(x, weight, conv.bias.repeat(4), gelu=gelu)
