"""Simulation environments (robosuite) built from robomimic-style env_args.

Names are loaded lazily so ``python -m d2ppo.envs.robosuite_env`` (the steps/s benchmark) runs
the module once, and importing the package does not import robosuite until it is used.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "RENDER_PROFILES": "d2ppo.envs.robosuite_env",
    "TASK_ALIASES": "d2ppo.envs.robosuite_env",
    "apply_render_profile": "d2ppo.envs.robosuite_env",
    "canonical_task": "d2ppo.envs.robosuite_env",
    "default_env_args": "d2ppo.envs.robosuite_env",
    "is_success": "d2ppo.envs.robosuite_env",
    "make_env": "d2ppo.envs.robosuite_env",
    "raw_obs": "d2ppo.envs.robosuite_env",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'd2ppo.envs' has no attribute {name!r}")
