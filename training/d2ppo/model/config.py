"""Model hyper-parameters as typed data (stored in policy.json under ``model``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields


@dataclass
class PolicyConfig:
    """Architecture and diffusion chain of a D²PPO policy. Defaults are the paper's (DPPO robomimic)."""

    horizon: int = 4  # Ta: actions per chunk
    act_steps: int = 4  # actions executed per chunk
    action_dim: int = 7  # Da: OSC_POSE delta (6) + gripper
    # Residual MLP denoiser: hidden widths [early, mid, late]; Mish activations.
    mlp_dims: tuple[int, ...] = (768, 768, 768)
    time_dim: int = 16  # sinusoidal time-embedding width
    # ViT encoder (DPPO's "embed2" conv stem: conv k=patch s=patch/2 -> conv k3 s2, then transformer).
    vit_patch: int = 8
    vit_depth: int = 1
    vit_dim: int = 128
    vit_heads: int = 4
    spatial_emb: int = 128  # per-camera feature width after the spatial embedding
    aug_shift: int = 4  # random-shift augmentation (pixels of replicate padding), training only
    # Diffusion chain.
    denoising_steps: int = 100  # DDPM steps for pre-training (cosine schedule)
    sample_steps: int = 10  # DDIM steps at fine-tuning and deployment
    ddim_eta: float = 1.0  # σ scale of the DDIM chain (1 = DDPM-like variance; the PPO chain's base std)
    x0_clip: float = 1.0  # clip the predicted clean action to [-x0_clip, x0_clip]
    eps_clip: float = 0.0  # 0 = no clip of the recomputed noise
    # Deployment: std of each DDIM transition (0 = deterministic mean chain).
    deploy_std: float = 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict) -> PolicyConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown model config keys: {sorted(unknown)}")
        kw = dict(d)
        if "mlp_dims" in kw:
            kw["mlp_dims"] = tuple(kw["mlp_dims"])
        return cls(**kw)
