"""The dispersive loss formulas of shared/DESIGN.md, checked against direct computations."""

import math

import pytest
import torch
from d2ppo.losses import VARIANTS, dispersion_metrics, dispersive_loss


def direct(z, variant, tau):
    z = z.reshape(z.shape[0], -1).double()
    b, d = z.shape
    dist = torch.tensor([[((z[i] - z[j]) ** 2).sum() / d for j in range(b)] for i in range(b)], dtype=torch.float64)
    if variant == "infonce_l2":
        return math.log(torch.exp(-dist / tau).sum().item() / b**2)
    if variant == "infonce_cosine":
        cos = torch.tensor([[torch.nn.functional.cosine_similarity(z[i], z[j], dim=0) for j in range(b)] for i in range(b)])
        return math.log(torch.exp(cos / tau).sum().item() / b**2)
    if variant == "hinge":
        return (torch.clamp(1 - dist, min=0) ** 2).sum().item() / b**2
    c = torch.cov(z.t())
    return ((c - torch.diag(torch.diag(c))) ** 2).sum().item() / d


@pytest.mark.parametrize("variant", VARIANTS)
def test_loss_matches_the_design_formula(variant):
    torch.manual_seed(0)
    z = torch.randn(6, 3, 4) * 0.7
    assert dispersive_loss(z, variant, tau=0.5).item() == pytest.approx(direct(z, variant, 0.5), rel=1e-4, abs=1e-5)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("z", [torch.randn(1, 16), torch.ones(5, 16)], ids=["B=1", "identical_rows"])
def test_loss_is_finite_and_differentiable_for_degenerate_batches(variant, z):
    z = z.clone().requires_grad_(True)
    loss = dispersive_loss(z, variant)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(z.grad).all()


def test_infonce_l2_gradient_does_not_vanish_for_wide_features():
    # 768-d features at unit scale: with raw squared distances (no 1/D) every off-diagonal term underflows.
    torch.manual_seed(0)
    z = torch.randn(32, 768, requires_grad=True)
    dispersive_loss(z, "infonce_l2").backward()
    assert z.grad.abs().max() > 1e-6


def test_minimising_the_loss_spreads_features_apart():
    torch.manual_seed(0)
    z = (torch.randn(16, 8) * 0.01).requires_grad_(True)
    before = dispersion_metrics(z)["mean_pairwise_dist"]
    opt = torch.optim.SGD([z], lr=0.5)
    for _ in range(50):
        opt.zero_grad()
        dispersive_loss(z, "infonce_l2").backward()
        opt.step()
    assert dispersion_metrics(z)["mean_pairwise_dist"] > 10 * before


def test_unknown_variant_and_bad_tau_are_rejected():
    with pytest.raises(ValueError, match="unknown dispersive loss variant"):
        dispersive_loss(torch.randn(4, 3), "l1")
    with pytest.raises(ValueError, match="tau"):
        dispersive_loss(torch.randn(4, 3), tau=0.0)


def test_effective_rank_of_collapsed_features_is_one():
    z = torch.randn(1, 8).repeat(10, 1) * torch.arange(1, 11).float().unsqueeze(1)
    assert dispersion_metrics(z)["effective_rank"] == pytest.approx(1.0, abs=1e-3)
