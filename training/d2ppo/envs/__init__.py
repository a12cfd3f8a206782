"""Simulation environments (robosuite) built from robomimic-style env_args."""

from d2ppo.envs.robosuite_env import (
    RENDER_PROFILES,
    TASK_ALIASES,
    apply_render_profile,
    canonical_task,
    default_env_args,
    is_success,
    make_env,
    raw_obs,
)

__all__ = [
    "RENDER_PROFILES",
    "TASK_ALIASES",
    "apply_render_profile",
    "canonical_task",
    "default_env_args",
    "is_success",
    "make_env",
    "raw_obs",
]
