"""With an observation history (n_obs_steps > 1) the policy sees the last To consecutive control steps, as its
training windows do (d2ppo.data.dataset), in the RL env and in d2ppo.evaluate — not one frame per chunk."""

from __future__ import annotations

import numpy as np
import pytest
from d2ppo.envs import default_env_args
from d2ppo.model import PolicyConfig
from d2ppo.obs import ObsSpec
from d2ppo.package import load_policy, make_random_policy, write_card

HISTORY = ObsSpec(camera_names=(), lowdim_keys=("robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos", "object"),
                  lowdim_dims=(3, 4, 2, 10), n_obs_steps=3)


@pytest.fixture(scope="module")
def history_package(tmp_path_factory):
    path = make_random_policy(tmp_path_factory.mktemp("pkg") / "lift_history", spec=HISTORY,
                              cfg=PolicyConfig(mlp_dims=(32, 32, 32)), seed=0)
    card = load_policy(path).card
    card["env_args"] = default_env_args("lift", camera_names=())
    write_card(path, card)
    return path


class _StepRecorder:
    """Wraps a robosuite env: records the end-effector position after reset and after every control step."""

    def __init__(self, env):
        self.env, self.eef = env, []

    def reset(self):
        obs = self.env.reset()
        self.eef = [np.array(obs["robot0_eef_pos"])]
        return obs

    def step(self, action):
        out = self.env.step(action)
        self.eef.append(np.array(out[0]["robot0_eef_pos"]))
        return out

    def __getattr__(self, name):
        return getattr(self.env, name)


def _expected_history(eef: list[np.ndarray], to: int) -> np.ndarray:
    """The last ``to`` control steps' eef positions, the first frame repeated before there are enough."""
    frames = [eef[0]] * max(0, to - len(eef)) + eef[-to:]
    return np.stack(frames)


@pytest.mark.timeout(120)
def test_chunked_env_history_holds_the_last_consecutive_control_steps(history_package):
    from d2ppo.envs.chunked import ChunkedEnv, chunked_env_configs

    pkg = load_policy(history_package)
    env = ChunkedEnv(chunked_env_configs(pkg, 1, seed=0, max_env_steps=40)[0])
    env.env = _StepRecorder(env.env)
    try:
        obs = env.reset(seed=5)
        # Identity state normaliser on [-1, 1]: the eef position lands in the first 3 state columns unchanged.
        np.testing.assert_allclose(obs["state"][:, :3], _expected_history(env.env.eef, 3), atol=1e-6)
        rng = np.random.default_rng(0)
        for _ in range(3):
            obs, *_ = env.step(rng.uniform(-0.5, 0.5, (4, 7)))
            assert len(env.env.eef) > 4
            np.testing.assert_allclose(obs["state"][:, :3], _expected_history(env.env.eef, 3), atol=1e-6)
    finally:
        env.close()


@pytest.mark.timeout(120)
def test_evaluate_feeds_the_sampler_the_last_consecutive_control_steps(history_package, monkeypatch):
    import d2ppo.envs.robosuite_env as rs
    from d2ppo.evaluate import run_episodes
    from d2ppo.package import PolicyPackage

    envs, seen = [], []
    real_make_env = rs.make_env

    def recording_make_env(*a, **kw):
        envs.append(_StepRecorder(real_make_env(*a, **kw)))
        return envs[-1]

    class RecordingSampler:
        def noise_shape(self, batch):
            return (batch, 11, 4, 7)

        def __call__(self, obs, noise=None):
            seen.append((obs["state"][:, :3].copy(), list(envs[0].eef)))
            return np.full((4, 7), 0.3, np.float32)

    monkeypatch.setattr(rs, "make_env", recording_make_env)
    monkeypatch.setattr(PolicyPackage, "sampler", lambda self, backend="torch", **kw: RecordingSampler())
    run_episodes(str(history_package), [0], seed=0, horizon=12, video_ids=set(), video_dir=None)
    assert len(seen) == 3  # 12 steps, 4 per chunk
    for state, eef in seen:
        np.testing.assert_allclose(state, _expected_history(eef, 3), atol=1e-6)
