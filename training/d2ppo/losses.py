"""Dispersive loss (D²PPO, arXiv 2508.02644, Sec. 3.2) — the API fixed in shared/DESIGN.md.

The loss is a contrastive term *without positive pairs*: it pushes the hidden features of the samples in a
batch apart so similar observations do not collapse onto the same representation. Every variant is
computed on features flattened to [B, D] with distances scaled by 1/D: with raw squared distances of
768-d features every off-diagonal exp(-d/τ) underflows and the gradient vanishes (the flaw of the
released code), while d/D keeps the terms in a useful range for any width.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

VARIANTS = ("infonce_l2", "infonce_cosine", "hinge", "covariance")


def _pairwise_sq_dist(z: Tensor) -> Tensor:
    """d_ij = ||z_i - z_j||² / D for all pairs, diagonal included: [B, B].

    Uses the Gram form ||z_i||² + ||z_j||² - 2 z_i·z_j (one [B, D] x [D, B] matmul instead of a [B, B, D]
    difference tensor: the dispersive term must stay cheap next to the network). Rounding can make it
    slightly negative for (near-)identical rows, so it is clamped at 0 and the diagonal is set to exactly 0;
    both keep the value and gradient finite for B = 1 and identical rows.
    """
    sq = z.pow(2).sum(dim=1)
    d = (sq.unsqueeze(1) + sq.unsqueeze(0) - 2.0 * (z @ z.t())).clamp_min(0.0)
    d = d * (1.0 - torch.eye(z.shape[0], device=z.device, dtype=z.dtype))
    return d / z.shape[1]


def dispersive_loss(z: Tensor, variant: str = "infonce_l2", tau: float = 0.5) -> Tensor:
    """Dispersive regulariser of a batch of features.

    Args:
        z: features [B, ...]; flattened to [B, D].
        variant: ``infonce_l2`` | ``infonce_cosine`` | ``hinge`` | ``covariance``.
        tau: temperature τ of the InfoNCE variants.
    Returns:
        scalar loss (lower = more dispersed), finite and differentiable for B = 1 and identical rows.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown dispersive loss variant {variant!r}; expected one of {VARIANTS}")
    if tau <= 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    if z.dim() < 2:
        raise ValueError(f"dispersive_loss expects features [B, ...], got shape {tuple(z.shape)}")
    z = z.reshape(z.shape[0], -1).float()
    b, d = z.shape

    if variant == "infonce_l2":
        # log( (1/B²) Σ_ij exp(-d_ij / τ) )
        logits = -_pairwise_sq_dist(z) / tau
        return torch.logsumexp(logits.reshape(-1), dim=0) - 2.0 * math.log(b)

    if variant == "infonce_cosine":
        # log( (1/B²) Σ_ij exp(cos(z_i, z_j) / τ) ); eps in the norm keeps zero rows finite
        zn = z / z.norm(dim=1, keepdim=True).clamp_min(1e-8)
        logits = (zn @ zn.t()) / tau
        return torch.logsumexp(logits.reshape(-1), dim=0) - 2.0 * math.log(b)

    if variant == "hinge":
        # (1/B²) Σ_ij max(0, 1 - d_ij)²  — pairs closer than the margin 1 are pushed apart
        return torch.clamp(1.0 - _pairwise_sq_dist(z), min=0.0).pow(2).mean()

    # covariance: Σ_{m≠n} C_mn² / D — decorrelates feature dimensions (B = 1 has no covariance: 0)
    zc = z - z.mean(dim=0, keepdim=True)
    cov = zc.t() @ zc / max(b - 1, 1)
    off = cov - torch.diag_embed(torch.diagonal(cov))
    return off.pow(2).sum() / d


@torch.no_grad()
def dispersion_metrics(z: Tensor) -> dict[str, float]:
    """Logged during training for the regularised layer.

    mean_pairwise_dist: mean of d_ij over i ≠ j (same 1/D scaling as the loss).
    effective_rank: exp(entropy of the normalised singular values of the centred features) (Roy & Vetterli),
        between 1 (collapsed to a line) and min(B, D).
    """
    z = z.reshape(z.shape[0], -1).float()
    b = z.shape[0]
    if b < 2:
        return {"mean_pairwise_dist": 0.0, "effective_rank": 1.0}
    dist = _pairwise_sq_dist(z)
    mean_off = (dist.sum() / (b * (b - 1))).item()
    s = torch.linalg.svdvals(z - z.mean(dim=0, keepdim=True))
    p = s / s.sum().clamp_min(1e-12)
    ent = -(p * torch.log(p.clamp_min(1e-12))).sum()
    return {"mean_pairwise_dist": mean_off, "effective_rank": float(torch.exp(ent))}
