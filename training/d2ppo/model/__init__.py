"""D²PPO diffusion policy: ViT encoder + residual MLP denoiser + DDPM/DDIM chain."""

from d2ppo.model.config import PolicyConfig
from d2ppo.model.policy import DiffusionPolicy

__all__ = ["DiffusionPolicy", "PolicyConfig"]
