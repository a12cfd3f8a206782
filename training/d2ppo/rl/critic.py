"""Value function V(s) for PPO fine-tuning."""

from __future__ import annotations

from torch import Tensor, nn


class Critic(nn.Module):
    """MLP (Mish) on the policy encoder's features -> V(s) [B].

    For a low-dim policy the features are the normalised state (as DPPO's state critic); for a pixel policy
    they are the pre-trained ViT's spatial embeddings + state, so the critic is ViT-based without a second
    ViT to train on the CPU.
    """

    def __init__(self, in_dim: int, dims: tuple[int, ...] = (256, 256, 256)):
        super().__init__()
        layers: list[nn.Module] = []
        d = in_dim
        for h in dims:
            layers += [nn.Linear(d, h), nn.Mish()]
            d = h
        layers.append(nn.Linear(d, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, features: Tensor) -> Tensor:
        return self.net(features.float()).squeeze(-1)
