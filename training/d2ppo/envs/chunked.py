"""A robosuite task as an RL environment over action chunks (the env-level MDP of DPPO / D²PPO).

One step of this env = one policy decision: a chunk of ``horizon`` actions of which the first ``act_steps``
are executed at the control rate (20 Hz for the robomimic tasks). The observation returned is the policy
input built by THE observation builder (``PolicyPackage.obs_builder()``), so RL rollouts see exactly what
evaluation, the sim node and the inference node see.

Reward is sparse: 1 for the chunk in which the task's own success check first holds, else 0 (a chunk's
reward is the sum of its env-step rewards, and the episode ends at the first successful env step, so it is
never more than 1). The episode is *terminated* on success and *truncated* at ``max_env_steps``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from d2ppo.obs import ObservationBuilder

# Episode lengths (env steps) of d2ppo.evaluate, so a training episode and an evaluation episode are the same MDP.
DEFAULT_MAX_ENV_STEPS = {"Lift": 200, "PickPlaceCan": 400, "NutAssemblySquare": 400, "TwoArmTransport": 800}


@dataclass
class ChunkedEnvConfig:
    """Everything a worker process needs to build one env (plain data: it is pickled to the worker)."""

    env_args: dict  # robomimic env_args (from the policy card)
    builder: ObservationBuilder  # the policy's observation builder (spec + state normaliser)
    seed: int = 0  # robosuite seed of this env (make_env(seed=...)); episodes follow deterministically
    render_profile: str = "fast"  # from the policy card; images differ between profiles
    camera_names: tuple[str, ...] = ()  # only the policy's cameras are rendered
    image_size: int = 96
    max_env_steps: int = 200  # time limit per episode, env steps
    act_steps: int = 4  # actions of a chunk executed before the next decision


class ChunkedEnv:
    """One robosuite env stepping action chunks. Not thread-safe; one per process (vector.py runs several)."""

    def __init__(self, cfg: ChunkedEnvConfig):
        from d2ppo.envs.robosuite_env import make_env

        self.cfg = cfg
        self.builder = cfg.builder
        self.env = make_env(
            cfg.env_args,
            seed=cfg.seed,
            render_profile=cfg.render_profile,
            camera_names=list(cfg.camera_names),
            image_size=cfg.image_size,
            horizon=cfg.max_env_steps + 10,  # robosuite's own horizon is ignored (ignore_done); ours cuts first
        )
        self.env_steps = 0  # env steps in the current episode
        self.total_env_steps = 0

    def reset(self, seed: int | None = None) -> dict[str, np.ndarray]:
        """New episode; ``seed`` fixes its object placement (evaluation sets), else the env's own stream."""
        from d2ppo.envs.robosuite_env import raw_obs

        if seed is not None:
            # robosuite draws placements from env.rng; resetting its state reseeds them without a hard reset.
            from d2ppo.experts.generate import reseed_episode

            reseed_episode(self.env, seed)
        obs = self.env.reset()
        self.env_steps = 0
        self.builder.reset()
        return self.builder(raw_obs(obs, self.cfg.camera_names))

    def step(self, chunk: np.ndarray) -> tuple[dict[str, np.ndarray], float, bool, bool, dict]:
        """Execute ``chunk[:act_steps]`` (env actions [Ta, Da] in [-1, 1]); every executed control step's
        observation enters the policy's observation history.

        Returns (obs, reward, terminated, truncated, info); info has ``success`` and ``env_steps`` (executed in
        this chunk).
        """
        from d2ppo.envs.robosuite_env import is_success, raw_obs

        chunk = np.asarray(chunk, dtype=np.float64)
        success, executed = False, 0
        # The history holds the last To *control steps*, as the training windows do (d2ppo.data.dataset); only
        # the last To raw observations of the chunk are built into frames (building one resizes its images).
        recent: deque = deque(maxlen=self.builder.spec.n_obs_steps)
        for action in chunk[: self.cfg.act_steps]:
            obs, _, _, _ = self.env.step(np.clip(action, -1.0, 1.0))
            recent.append(raw_obs(obs, self.cfg.camera_names))  # a copy: robosuite may reuse its arrays
            executed += 1
            self.env_steps += 1
            if is_success(self.env):
                success = True
                break
            if self.env_steps >= self.cfg.max_env_steps:
                break
        self.total_env_steps += executed
        truncated = not success and self.env_steps >= self.cfg.max_env_steps
        for raw in recent:
            self.builder.add(raw)
        policy_obs = self.builder.build()
        info = {"success": success, "env_steps": executed, "episode_env_steps": self.env_steps}
        return policy_obs, float(success), success, truncated, info

    def close(self) -> None:
        self.env.close()


def chunked_env_configs(
    package,
    n_envs: int,
    seed: int,
    max_env_steps: int | None = None,
    act_steps: int | None = None,
) -> list[ChunkedEnvConfig]:
    """Configs of ``n_envs`` envs for a policy package, env i seeded ``seed + i``.

    Everything comes from the package's card (env_args, cameras, image size, render profile), so the RL
    env is the env the policy was trained and is evaluated in.
    """
    if package.env_args is None:
        raise ValueError(f"{package.path}: policy card has no env_args; cannot build its simulation env")
    task = package.task
    return [
        ChunkedEnvConfig(
            env_args=package.env_args,
            builder=package.obs_builder(),
            seed=seed + i,
            render_profile=package.render_profile,
            camera_names=tuple(package.spec.camera_names),
            image_size=package.spec.image_size,
            max_env_steps=max_env_steps or DEFAULT_MAX_ENV_STEPS.get(task, 400),
            act_steps=act_steps or package.act_steps,
        )
        for i in range(n_envs)
    ]


def stack_obs(obs_list: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """List of per-env policy inputs -> batched dict {key: [N, ...]}."""
    return {k: np.stack([o[k] for o in obs_list]) for k in obs_list[0]}
