"""Chunked robosuite envs in worker processes: same results as in-process, auto-reset, fixed eval seeds."""

from __future__ import annotations

import numpy as np
import pytest
from d2ppo.envs.chunked import chunked_env_configs
from d2ppo.envs.vector import VectorChunkedEnv
from d2ppo.package import load_policy


def _run(configs, workers, chunks):
    with VectorChunkedEnv(configs, workers=workers) as venv:
        obs = [venv.reset()["state"]]
        for c in chunks:
            o, r, term, trunc, infos = venv.step(c)
            obs.append(o["state"])
        return np.stack(obs), venv.env_steps()


@pytest.mark.timeout(240)
def test_two_worker_processes_step_exactly_like_one_process(lowdim_package):
    pkg = load_policy(lowdim_package)
    configs = chunked_env_configs(pkg, n_envs=2, seed=7, max_env_steps=40)
    chunks = np.random.default_rng(0).uniform(-1, 1, (6, 2, 4, 7)).astype(np.float32)
    local, steps_local = _run(configs, 0, chunks)
    remote, steps_remote = _run(configs, 2, chunks)
    np.testing.assert_array_equal(local, remote)
    assert steps_local == steps_remote == 6 * 2 * 4
    assert not np.array_equal(local[:, 0], local[:, 1])  # env i is seeded seed + i


@pytest.mark.timeout(120)
def test_time_limit_truncates_and_resets_with_the_final_obs_in_info(lowdim_package):
    pkg = load_policy(lowdim_package)
    with VectorChunkedEnv(chunked_env_configs(pkg, n_envs=1, seed=0, max_env_steps=10), workers=0) as venv:
        venv.reset()
        zero = np.zeros((1, 4, 7), np.float32)
        _, r, term, trunc, infos = venv.step(zero)
        _, r, term, trunc, infos = venv.step(zero)
        assert not trunc[0]
        obs, r, term, trunc, infos = venv.step(zero)  # env steps 9, 10 -> time limit inside the chunk
        assert trunc[0] and not term[0] and r[0] == 0.0
        assert infos[0]["env_steps"] == 2 and infos[0]["episode_env_steps"] == 10
        assert not np.array_equal(infos[0]["final_obs"]["state"], obs["state"][0])  # obs is the new episode's


@pytest.mark.timeout(120)
def test_reset_seed_fixes_the_object_placement(lowdim_package):
    pkg = load_policy(lowdim_package)
    with VectorChunkedEnv(chunked_env_configs(pkg, n_envs=2, seed=0), workers=0) as venv:
        a = venv.reset([123, 456])["state"]
        b = venv.reset([123, None])["state"]
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(a[0], a[1])
