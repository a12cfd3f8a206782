"""DiffusionPolicy: observation encoder + ε-denoiser + DDPM (training) / DDIM (sampling) chain.

Shapes: obs {"rgb": uint8 [B, To, Ncam, 3, H, W], "state": float [B, To, Ds] (normalised)},
actions are normalised to [-1, 1]: [B, Ta, Da].
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from d2ppo.losses import dispersion_metrics, dispersive_loss
from d2ppo.model.config import PolicyConfig
from d2ppo.model.denoiser import HIDDEN_LAYERS, ResidualMLPDenoiser
from d2ppo.model.vit import SpatialEmbedding, ViTEncoder, random_shift
from d2ppo.obs import ObsSpec

DISPERSIVE_LAYERS = (*HIDDEN_LAYERS, "encoder")


def cosine_alphas_cumprod(steps: int, s: float = 0.008) -> Tensor:
    """ᾱ_t of the cosine schedule (Nichol & Dhariwal 2021), t = 0..steps-1, β clipped at 0.999."""
    x = torch.linspace(0, steps, steps + 1, dtype=torch.float64)
    f = torch.cos(((x / steps) + s) / (1 + s) * math.pi * 0.5) ** 2
    ac = f / f[0]
    betas = (1 - ac[1:] / ac[:-1]).clamp(0, 0.999)
    return torch.cumprod(1.0 - betas, dim=0).float()


@dataclass
class DispersiveConfig:
    """Dispersive regulariser: total loss = diffusion + weight · dispersive(layer)."""

    weight: float = 0.5  # λ (0 = plain diffusion policy, the DPPO baseline)
    tau: float = 0.5  # τ
    variant: str = "infonce_l2"
    layer: str = "early"  # early | mid | late | encoder

    def __post_init__(self):
        if self.layer not in DISPERSIVE_LAYERS:
            raise ValueError(f"dispersive layer must be one of {DISPERSIVE_LAYERS}, got {self.layer!r}")


class ObservationEncoder(nn.Module):
    """obs -> conditioning vector [B, Dc] = [per-camera spatial embeddings, flattened state history]."""

    def __init__(self, spec: ObsSpec, cfg: PolicyConfig):
        super().__init__()
        self.spec = spec
        self.aug_shift = cfg.aug_shift
        state_flat = spec.state_dim * spec.n_obs_steps
        self.cond_dim = state_flat
        if spec.uses_images:
            self.vit = ViTEncoder(spec.image_size, cfg.vit_patch, cfg.vit_dim, cfg.vit_depth, cfg.vit_heads)
            # One ViT shared by all cameras and history frames; one spatial embedding per camera.
            self.spatial = nn.ModuleList(
                [
                    SpatialEmbedding(self.vit.num_tokens * spec.n_obs_steps, cfg.vit_dim, state_flat, cfg.spatial_emb)
                    for _ in spec.camera_names
                ]
            )
            self.cond_dim += cfg.spatial_emb * len(spec.camera_names)

    def forward(self, obs: dict[str, Tensor]) -> Tensor:
        state = obs["state"].flatten(1).float()
        if not self.spec.uses_images:
            return state
        rgb = obs["rgb"]  # [B, To, Ncam, 3, H, W] uint8
        b, to, ncam = rgb.shape[:3]
        img = rgb.reshape(b * to * ncam, *rgb.shape[3:]).float() / 255.0
        if self.training:
            img = random_shift(img, self.aug_shift)
        tokens = self.vit(img)  # [B*To*Ncam, N, C]
        tokens = tokens.reshape(b, to, ncam, *tokens.shape[1:])
        feats = [
            emb(tokens[:, :, cam].reshape(b, to * tokens.shape[3], tokens.shape[4]), state)
            for cam, emb in enumerate(self.spatial)
        ]
        return torch.cat([*feats, state], dim=-1)


class DiffusionPolicy(nn.Module):
    """Encoder + denoiser + DDIM chain; optionally a *split* chain, as PPO fine-tuning of the last K′ steps leaves it.

    ``frozen_steps`` = K − K′ > 0: the first (noisiest) K − K′ DDIM steps, chain indices k = K-1 … K′, run
    ``frozen_denoiser`` (the pre-trained weights, never updated), the last K′ steps (k < K′) run ``denoiser`` (the
    fine-tuned one). ``frozen_encoder``: the frozen steps are conditioned on ``frozen_encoder`` (the pre-trained
    encoder) instead of the fine-tuned ``encoder``, when the encoder was fine-tuned too. This is DPPO's chain
    (``actor`` for early steps, ``actor_ft`` for the fine-tuned ones); a package stores it (d2ppo.package).
    """

    def __init__(self, spec: ObsSpec, cfg: PolicyConfig, frozen_steps: int = 0, frozen_encoder: bool = False):
        super().__init__()
        self.spec, self.cfg = spec, cfg
        self.encoder = ObservationEncoder(spec, cfg)
        self.denoiser = ResidualMLPDenoiser((cfg.horizon, cfg.action_dim), self.encoder.cond_dim, cfg.mlp_dims, cfg.time_dim)
        if not 0 <= frozen_steps < cfg.sample_steps:
            raise ValueError(f"frozen_steps must be in [0, {cfg.sample_steps - 1}], got {frozen_steps}")
        if frozen_encoder and not frozen_steps:
            raise ValueError("frozen_encoder needs frozen_steps > 0")
        self.frozen_steps = int(frozen_steps)
        # Created after the trained modules, so a seeded model has the same trained weights with or without them.
        self.frozen_denoiser = copy.deepcopy(self.denoiser).requires_grad_(False) if frozen_steps else None
        self.frozen_encoder = copy.deepcopy(self.encoder).requires_grad_(False) if frozen_encoder else None
        ac = cosine_alphas_cumprod(cfg.denoising_steps)
        self.register_buffer("alphas_cumprod", ac, persistent=False)
        # DDIM sub-sequence τ_k = k·(T/K), k = 0..K-1 (DDIM Sec. 4.2); ᾱ_prev of the last step is 1.
        if cfg.denoising_steps % cfg.sample_steps:
            raise ValueError(f"sample_steps {cfg.sample_steps} must divide denoising_steps {cfg.denoising_steps}")
        ddim_t = torch.arange(0, cfg.denoising_steps, cfg.denoising_steps // cfg.sample_steps)
        self.register_buffer("ddim_t", ddim_t, persistent=False)
        ab = ac[ddim_t]
        ab_prev = torch.cat([torch.ones(1), ac[ddim_t[:-1]]])
        sigma = cfg.ddim_eta * ((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)).clamp_min(0).sqrt()
        self.register_buffer("ddim_ab", ab, persistent=False)
        self.register_buffer("ddim_ab_prev", ab_prev, persistent=False)
        self.register_buffer("ddim_sigma", sigma, persistent=False)

    # ------------------------------------------------------------------ pre-training
    def diffusion_loss(self, obs: dict[str, Tensor], actions: Tensor, dispersive: DispersiveConfig | None = None,
                       metrics: bool = True):
        """DDPM ε-prediction loss (+ λ · dispersive on one hidden layer, same forward pass).

        Returns (total loss, logs dict). actions [B, Ta, Da] normalised. ``metrics`` adds the dispersion
        metrics of the regularised layer (an SVD: compute it on logging steps only).
        """
        b = actions.shape[0]
        cond = self.encoder(obs)
        t = torch.randint(0, self.cfg.denoising_steps, (b,), device=actions.device)
        noise = torch.randn_like(actions)
        ab = self.alphas_cumprod[t].view(b, 1, 1)
        x_t = ab.sqrt() * actions + (1 - ab).sqrt() * noise  # q(x_t | x_0)
        want_hidden = dispersive is not None
        eps, hidden = self.denoiser(x_t, t, cond, return_hidden=True)
        diff = F.mse_loss(eps, noise)
        logs = {"loss/diffusion": float(diff.detach())}
        total = diff
        if want_hidden:
            feats = cond if dispersive.layer == "encoder" else hidden[dispersive.layer]
            if dispersive.weight > 0:
                disp = dispersive_loss(feats, dispersive.variant, dispersive.tau)
                total = diff + dispersive.weight * disp
                logs["loss/dispersive"] = float(disp.detach())
            if metrics:
                logs.update({f"dispersion/{k}": v for k, v in dispersion_metrics(feats.detach()).items()})
        logs["loss/total"] = float(total.detach())
        return total, logs

    # ------------------------------------------------------------------ split chain
    def split_chain(self, fine_tuned_steps: int, freeze_encoder: bool = False) -> None:
        """Freeze copies of the current (pre-trained) weights for the first K − K′ steps (K′ = fine_tuned_steps).

        ``freeze_encoder``: also condition those steps on a frozen copy of the encoder (when the encoder is going
        to be fine-tuned; pointless for an encoder without weights). On an already split chain only the same K′
        is accepted: a third network for steps fine-tuned once and then frozen is not supported.
        """
        K = self.cfg.sample_steps
        if not 1 <= fine_tuned_steps <= K:
            raise ValueError(f"ft_denoising_steps must be in [1, {K}], got {fine_tuned_steps}")
        if self.frozen_steps:
            if fine_tuned_steps != K - self.frozen_steps:
                raise ValueError(f"this policy's chain is already split: its last {K - self.frozen_steps} of {K} "
                                 f"steps were fine-tuned; ft_denoising_steps must be {K - self.frozen_steps}, "
                                 f"got {fine_tuned_steps}")
            if freeze_encoder and self.frozen_encoder is None:
                raise ValueError("this policy's frozen steps share the encoder of the fine-tuned steps, so its encoder "
                                 "cannot be fine-tuned now (fine-tune with train_encoder off: --no-train-encoder)")
            return
        if fine_tuned_steps == K:
            return
        self.frozen_steps = K - fine_tuned_steps
        self.frozen_denoiser = copy.deepcopy(self.denoiser).requires_grad_(False)
        if freeze_encoder:
            self.frozen_encoder = copy.deepcopy(self.encoder).requires_grad_(False)

    def denoiser_for(self, k: int) -> nn.Module:
        """The denoiser of chain index k (K-1 … 0): the frozen one for the first frozen_steps steps."""
        return self.frozen_denoiser if k >= self.cfg.sample_steps - self.frozen_steps else self.denoiser

    def encode(self, obs: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """(cond of the fine-tuned steps, cond of the frozen steps) [B, Dc] each; the same tensor unless
        the chain has a frozen encoder."""
        cond = self.encoder(obs)
        return cond, (self.frozen_encoder(obs) if self.frozen_encoder is not None else cond)

    # ------------------------------------------------------------------ DDIM chain
    def ddim_mean_std(self, x: Tensor, k: int, cond: Tensor, denoiser: nn.Module | None = None) -> tuple[Tensor, Tensor]:
        """Mean and DDIM σ of p(x_{k-1} | x_k) for chain index k (K-1 .. 0). x [B, Ta, Da].

        x̂0 = (x - √(1-ᾱ) ε̂) / √ᾱ, clipped;  ε' = (x - √ᾱ x̂0) / √(1-ᾱ)
        μ = √ᾱ_prev x̂0 + √(1 - ᾱ_prev - σ²) ε'      (DDIM eq. 12)
        ``denoiser`` defaults to the chain's own for step k (``denoiser_for``); ``cond`` must be that step's
        features: ``encode(obs)[1]`` for a frozen step of a chain with a frozen encoder.
        """
        net = denoiser if denoiser is not None else self.denoiser_for(k)
        b = x.shape[0]
        t = self.ddim_t[k].expand(b)
        eps = net(x, t, cond)
        ab, ab_prev, sigma = self.ddim_ab[k], self.ddim_ab_prev[k], self.ddim_sigma[k]
        x0 = (x - (1 - ab).sqrt() * eps) / ab.sqrt()
        if self.cfg.x0_clip > 0:
            x0 = x0.clamp(-self.cfg.x0_clip, self.cfg.x0_clip)
            eps = (x - ab.sqrt() * x0) / (1 - ab).sqrt()
        if self.cfg.eps_clip > 0:
            eps = eps.clamp(-self.cfg.eps_clip, self.cfg.eps_clip)
        mean = ab_prev.sqrt() * x0 + (1 - ab_prev - sigma**2).clamp_min(0).sqrt() * eps
        return mean, sigma.expand_as(mean)

    @torch.no_grad()
    def sample(self, obs: dict[str, Tensor], noise: Tensor | None = None, std: float | None = None) -> Tensor:
        """10-step DDIM chain, encoding the observation ONCE (the ViT does not depend on the step).

        noise: [B, K+1, Ta, Da] standard normal (index 0 = x_K, index K-k = z of step k) for reproducible
        runs; std: per-step std of the transitions (default cfg.deploy_std; 0 = deterministic means).
        Returns normalised actions [B, Ta, Da] in [-1, 1].
        """
        return self.sample_from_cond(*self.encode(obs), noise=noise, std=std)

    def sample_from_cond(self, cond: Tensor, cond_frozen: Tensor | None = None, noise: Tensor | None = None,
                         std: float | None = None) -> Tensor:
        """The chain from encoder features: ``cond`` [B, Dc] for the fine-tuned steps, ``cond_frozen`` for the
        frozen ones (default ``cond``)."""
        b, K = cond.shape[0], self.cfg.sample_steps
        cond_frozen = cond if cond_frozen is None else cond_frozen
        shape = (b, K + 1, self.cfg.horizon, self.cfg.action_dim)
        if noise is None:
            noise = torch.randn(shape, device=cond.device)
        std = self.cfg.deploy_std if std is None else std
        x = noise[:, 0]
        for i, k in enumerate(range(K - 1, -1, -1)):
            net = self.denoiser_for(k)
            mean, _ = self.ddim_mean_std(x, k, cond if net is self.denoiser else cond_frozen, denoiser=net)
            x = mean + std * noise[:, i + 1] if std > 0 else mean
        return x.clamp(-1.0, 1.0)

    @torch.no_grad()
    def sample_naive(self, obs: dict[str, Tensor], noise: Tensor | None = None, std: float | None = None) -> Tensor:
        """Reference sampler that re-encodes the observation at every denoising step, like DPPO's.

        Kept only to show (tests, benchmark) that encode-once gives identical actions.
        """
        b, K = obs["state"].shape[0], self.cfg.sample_steps
        if noise is None:
            noise = torch.randn((b, K + 1, self.cfg.horizon, self.cfg.action_dim))
        std = self.cfg.deploy_std if std is None else std
        x = noise[:, 0]
        for i, k in enumerate(range(K - 1, -1, -1)):
            net = self.denoiser_for(k)
            cond = self.encoder(obs) if net is self.denoiser else self.encode(obs)[1]
            mean, _ = self.ddim_mean_std(x, k, cond, denoiser=net)
            x = mean + std * noise[:, i + 1] if std > 0 else mean
        return x.clamp(-1.0, 1.0)
