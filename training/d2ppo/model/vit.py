"""Small ViT image encoder (D²PPO/DPPO: patch 8, depth 1, 128-d, 4 heads) and the spatial embedding."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ConvPatchStem(nn.Module):
    """Overlapping conv stem: [B, 3, H, W] -> tokens [B, N, dim] (96x96, patch 8 -> 11x11 = 121 tokens)."""

    def __init__(self, image_size: int, patch: int, dim: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, dim, kernel_size=patch, stride=patch // 2),
            nn.GroupNorm(dim // 16, dim),
            nn.ReLU(inplace=True),
            nn.Conv2d(dim, dim, kernel_size=3, stride=2),
        )
        side = (image_size - patch) // (patch // 2) + 1
        side = (side - 3) // 2 + 1
        self.num_tokens = side * side

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).flatten(2).transpose(1, 2)


class TransformerBlock(nn.Module):
    """Pre-norm transformer layer."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"ViT width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        att = F.scaled_dot_product_attention(q, k, v)
        x = x + self.proj(att.transpose(1, 2).reshape(b, n, d))
        return x + self.mlp(self.norm2(x))


class ViTEncoder(nn.Module):
    """uint8-range float images [B, 3, H, W] in [0, 1] -> patch tokens [B, N, dim]."""

    def __init__(self, image_size: int = 96, patch: int = 8, dim: int = 128, depth: int = 1, heads: int = 4):
        super().__init__()
        self.stem = ConvPatchStem(image_size, patch, dim)
        self.num_tokens = self.stem.num_tokens
        self.pos = nn.Parameter(torch.randn(1, self.num_tokens, dim) * 0.02)
        self.blocks = nn.Sequential(*[TransformerBlock(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)

    def forward(self, img: Tensor) -> Tensor:
        x = self.stem(img - 0.5) + self.pos
        return self.norm(self.blocks(x))


class SpatialEmbedding(nn.Module):
    """Compress patch tokens to one vector while keeping *where* things are (DPPO's spatial embedding).

    Each channel's map over the N patches (plus proprio) is projected to ``out_dim``; a learned weight per
    channel then sums the channels. Unlike mean pooling, the patch positions stay separable.
    tokens [B, N, C], state [B, Ds] -> [B, out_dim].
    """

    def __init__(self, num_tokens: int, channels: int, state_dim: int, out_dim: int):
        super().__init__()
        self.proj = nn.Sequential(nn.Linear(num_tokens + state_dim, out_dim), nn.LayerNorm(out_dim), nn.ReLU(inplace=True))
        # 1/√C init keeps the summed embedding O(1): with unit-normal weights over 128 channels the features
        # (and the denoiser's hidden layers) start ~10x larger and the dispersive InfoNCE term saturates.
        self.channel_weight = nn.Parameter(torch.randn(1, channels, out_dim) / channels**0.5)

    def forward(self, tokens: Tensor, state: Tensor) -> Tensor:
        per_channel = tokens.transpose(1, 2)  # [B, C, N]
        if state.shape[-1] > 0:
            per_channel = torch.cat([per_channel, state.unsqueeze(1).expand(-1, per_channel.shape[1], -1)], dim=-1)
        return (self.proj(per_channel) * self.channel_weight).sum(dim=1)


def random_shift(img: Tensor, pad: int) -> Tensor:
    """Random-shift augmentation (DrQ): replicate-pad by ``pad`` and crop back at a random offset per sample.

    img [B, C, H, W] float. Implemented with one grid_sample call so it costs one pass over the batch.
    """
    if pad <= 0:
        return img
    b, _, h, w = img.shape
    padded = F.pad(img, (pad, pad, pad, pad), mode="replicate")
    eps = 1.0 / (h + 2 * pad)
    ar = torch.linspace(-1.0 + eps, 1.0 - eps, h + 2 * pad, device=img.device, dtype=img.dtype)[:h]
    ys, xs = torch.meshgrid(ar, ar[:w], indexing="ij")
    base = torch.stack([xs, ys], dim=-1).unsqueeze(0).expand(b, -1, -1, -1)
    shift = torch.randint(0, 2 * pad + 1, (b, 1, 1, 2), device=img.device, dtype=img.dtype) * (2.0 / (h + 2 * pad))
    return F.grid_sample(padded, base + shift, padding_mode="zeros", align_corners=False)
