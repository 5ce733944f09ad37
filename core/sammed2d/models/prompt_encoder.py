"""SAM's prompt encoder: points, boxes and masks to sparse and dense embeddings."""

from __future__ import annotations

import math

import torch
from torch import nn

from .common import LayerNorm2d


class PositionEmbeddingRandom(nn.Module):
    """Positional encoding from random Gaussian spatial frequencies (stored in the checkpoint)."""

    def __init__(self, num_pos_feats: int = 128) -> None:
        super().__init__()
        self.register_buffer("positional_encoding_gaussian_matrix", torch.randn(2, num_pos_feats))

    def _encode(self, coords: torch.Tensor) -> torch.Tensor:
        """coords in [0, 1], (..., 2) as (x, y) -> (..., 2 * num_pos_feats)."""
        coords = (2 * coords - 1) @ self.positional_encoding_gaussian_matrix
        coords = 2 * math.pi * coords
        return torch.cat([torch.sin(coords), torch.cos(coords)], dim=-1)

    def grid(self, size: tuple[int, int]) -> torch.Tensor:
        """(C, H, W) encoding of pixel centres of an H x W grid."""
        h, w = size
        device = self.positional_encoding_gaussian_matrix.device
        ones = torch.ones((h, w), device=device)
        y = (ones.cumsum(dim=0) - 0.5) / h
        x = (ones.cumsum(dim=1) - 0.5) / w
        return self._encode(torch.stack([x, y], dim=-1)).permute(2, 0, 1)

    def at(self, coords: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        """Encoding of (..., 2) pixel coordinates (x, y) in an image of `image_size` = (H, W)."""
        coords = coords.clone().float()
        coords[..., 0] = coords[..., 0] / image_size[1]
        coords[..., 1] = coords[..., 1] / image_size[0]
        return self._encode(coords)


class PromptEncoder(nn.Module):
    def __init__(
        self,
        embed_dim: int = 256,
        image_embedding_size: tuple[int, int] = (16, 16),
        input_image_size: tuple[int, int] = (256, 256),
        mask_in_chans: int = 16,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.image_embedding_size = image_embedding_size
        self.input_image_size = input_image_size
        self.pe_layer = PositionEmbeddingRandom(embed_dim // 2)
        # 0: negative point, 1: positive point, 2: box top-left, 3: box bottom-right.
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, embed_dim) for _ in range(4))
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.mask_input_size = (4 * image_embedding_size[0], 4 * image_embedding_size[1])
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans // 4),
            nn.GELU(),
            nn.Conv2d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans),
            nn.GELU(),
            nn.Conv2d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    def get_dense_pe(self) -> torch.Tensor:
        """(1, C, h, w) positional encoding of the image embedding grid.

        It depends only on a fixed buffer, so it is computed once per device and dtype.
        """
        matrix = self.pe_layer.positional_encoding_gaussian_matrix
        key = (matrix.device, matrix.dtype, matrix.data_ptr(), matrix._version)
        if getattr(self, "_dense_pe_key", None) != key:
            self._dense_pe = self.pe_layer.grid(self.image_embedding_size).unsqueeze(0)
            self._dense_pe_key = key
        return self._dense_pe

    def _embed_points(self, points: torch.Tensor, labels: torch.Tensor, pad: bool) -> torch.Tensor:
        points = points + 0.5  # pixel centres
        if pad:
            # Without a box, SAM appends one "not a point" so the decoder sees a fixed layout.
            points = torch.cat([points, torch.zeros_like(points[:, :1])], dim=1)
            labels = torch.cat([labels, -torch.ones_like(labels[:, :1])], dim=1)
        emb = self.pe_layer.at(points, self.input_image_size)
        emb = torch.where((labels == -1)[..., None], torch.zeros_like(emb), emb)
        emb = emb + (labels == -1)[..., None] * self.not_a_point_embed.weight
        emb = emb + (labels == 0)[..., None] * self.point_embeddings[0].weight
        emb = emb + (labels == 1)[..., None] * self.point_embeddings[1].weight
        return emb

    def _embed_boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        corners = (boxes + 0.5).reshape(-1, 2, 2)
        emb = self.pe_layer.at(corners, self.input_image_size)
        emb[:, 0, :] += self.point_embeddings[2].weight[0]
        emb[:, 1, :] += self.point_embeddings[3].weight[0]
        return emb

    def forward(
        self,
        points: tuple[torch.Tensor, torch.Tensor] | None,
        boxes: torch.Tensor | None,
        masks: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Points ((B, N, 2), (B, N)), boxes (B, 4) and masks (B, 1, 4h, 4w), in model-input pixels.

        Returns sparse (B, tokens, C) and dense (B, C, h, w) embeddings.
        """
        if points is not None:
            bs = points[0].shape[0]
        elif boxes is not None:
            bs = boxes.shape[0]
        elif masks is not None:
            bs = masks.shape[0]
        else:
            bs = 1
        device = self.no_mask_embed.weight.device
        sparse = torch.empty((bs, 0, self.embed_dim), device=device)
        if points is not None:
            coords, labels = points
            sparse = torch.cat(
                [sparse, self._embed_points(coords, labels, pad=boxes is None)], dim=1
            )
        if boxes is not None:
            sparse = torch.cat([sparse, self._embed_boxes(boxes)], dim=1)
        if masks is not None:
            dense = self.mask_downscaling(masks)
        else:
            h, w = self.image_embedding_size
            dense = self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(bs, -1, h, w)
        return sparse, dense
