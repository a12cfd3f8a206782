"""GAE and reward scaling of the env-level MDP."""

from __future__ import annotations

import numpy as np
import pytest
from d2ppo.rl.rollout import RunningRewardScaler, compute_gae


def test_gae_equals_a_hand_computed_example():
    # One env, 3 chunk steps; the episode ends at t = 1 (success), a new one starts at t = 2.
    r = np.array([[0.0], [1.0], [0.0]], np.float32)
    v = np.array([[0.5], [0.8], [0.3]], np.float32)
    d = np.array([[False], [True], [False]])
    v_next = np.array([0.6], np.float32)
    g, lam = 0.9, 0.5
    # t=2: δ = 0 + 0.9·0.6 - 0.3 = 0.24;               Â = 0.24
    # t=1: δ = 1 + 0 - 0.8 = 0.2 (terminal);           Â = 0.2
    # t=0: δ = 0 + 0.9·0.8 - 0.5 = 0.22;               Â = 0.22 + 0.9·0.5·0.2 = 0.31
    adv, ret = compute_gae(r, v, d, v_next, g, lam)
    np.testing.assert_allclose(adv[:, 0], [0.31, 0.2, 0.24], atol=1e-6)
    np.testing.assert_allclose(ret, adv + v, atol=1e-6)


def test_gae_with_lambda_one_and_no_value_is_the_discounted_return():
    r = np.array([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0]], np.float32)
    zeros = np.zeros_like(r)
    adv, _ = compute_gae(r, zeros, np.zeros_like(r, bool), np.zeros(2, np.float32), 0.5, 1.0)
    np.testing.assert_allclose(adv[:, 0], [0.25, 0.5, 1.0])
    np.testing.assert_allclose(adv[:, 1], [0.5, 1.0, 0.0])


def test_reward_scaler_divides_by_the_std_of_discounted_returns():
    scaler = RunningRewardScaler(num_envs=1, gamma=0.0)  # γ = 0: the return is the reward itself
    rewards = np.array([[0.0], [1.0], [0.0], [1.0]])
    out = scaler(rewards, np.zeros_like(rewards, bool))
    assert scaler.var == pytest.approx(0.25, rel=1e-3)
    np.testing.assert_allclose(out[:, 0], [0.0, 2.0, 0.0, 2.0], rtol=1e-3)


def test_reward_scaler_forgets_the_return_of_envs_that_are_reset():
    scaler = RunningRewardScaler(num_envs=2, gamma=0.5)
    scaler(np.ones((3, 2)), np.zeros((3, 2), bool))
    assert np.all(scaler.ret > 0)  # both episodes are running
    scaler.reset(np.array([True, False]))  # env 0 was reset by force (e.g. after an evaluation)
    assert scaler.ret[0] == 0.0 and scaler.ret[1] > 0
    scaler.reset()
    assert np.all(scaler.ret == 0.0)
