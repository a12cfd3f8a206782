"""Residual MLP denoiser ε_θ(x_t, t, cond) with Mish and a sinusoidal time embedding."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

# Names of the hidden layers a dispersive loss can regularise (D²PPO Sec. 4: early / mid / late).
HIDDEN_LAYERS = ("early", "mid", "late")


class SinusoidalTimeEmbedding(nn.Module):
    """t [B] (integer diffusion step) -> [B, dim] -> small MLP, as in DDPM."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.mlp = nn.Sequential(nn.Linear(dim, dim * 2), nn.Mish(), nn.Linear(dim * 2, dim))

    def forward(self, t: Tensor) -> Tensor:
        half = self.dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / (half - 1))
        ang = t.float().unsqueeze(-1) * freqs
        return self.mlp(torch.cat([ang.sin(), ang.cos()], dim=-1))


class ResidualBlock(nn.Module):
    """Pre-activation two-layer residual block: h + W2 Mish(W1 Mish(h))."""

    def __init__(self, dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.Mish(), nn.Linear(dim, dim), nn.Mish(), nn.Linear(dim, dim))

    def forward(self, h: Tensor) -> Tensor:
        return h + self.net(h)


class ResidualMLPDenoiser(nn.Module):
    """[x_t (Ta*Da), time emb, cond] -> ε̂ [B, Ta, Da].

    Widths ``dims`` = [early, mid, late]: an input projection to dims[0] ("early"), then one residual block per
    further width ("mid", "late"; a linear adapter precedes a block whose width changes). The hidden
    activations are returned from the same forward pass so a dispersive loss needs no second pass.
    """

    def __init__(self, action_shape: tuple[int, int], cond_dim: int, dims: tuple[int, ...] = (768, 768, 768), time_dim: int = 16):
        super().__init__()
        if len(dims) != 3:
            raise ValueError(f"mlp_dims must list three hidden widths [early, mid, late], got {dims}")
        self.action_shape = tuple(action_shape)
        act_flat = action_shape[0] * action_shape[1]
        self.time_emb = SinusoidalTimeEmbedding(time_dim)
        self.inp = nn.Linear(act_flat + time_dim + cond_dim, dims[0])
        self.adapters = nn.ModuleList(
            [nn.Identity() if dims[i] == dims[i + 1] else nn.Linear(dims[i], dims[i + 1]) for i in range(len(dims) - 1)]
        )
        self.blocks = nn.ModuleList([ResidualBlock(d) for d in dims[1:]])
        self.out = nn.Sequential(nn.Mish(), nn.Linear(dims[-1], act_flat))

    def forward(self, x: Tensor, t: Tensor, cond: Tensor, return_hidden: bool = False):
        """x [B, Ta, Da], t [B] long, cond [B, Dc] -> ε̂ [B, Ta, Da] (and {"early","mid","late": [B, width]})."""
        h = self.inp(torch.cat([x.flatten(1), self.time_emb(t), cond], dim=-1))
        hidden = {"early": h}
        for name, adapter, block in zip(HIDDEN_LAYERS[1:], self.adapters, self.blocks):
            h = block(adapter(h))
            hidden[name] = h
        eps = self.out(h).reshape(-1, *self.action_shape)
        return (eps, hidden) if return_hidden else eps
