"""The two-layer-MDP update: chain log-probabilities, ratio, clip schedule, denoising discount."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from d2ppo.model import DiffusionPolicy, PolicyConfig
from d2ppo.normalize import RangeNormalizer
from d2ppo.obs import ObsSpec
from d2ppo.rl.ppo_diffusion import DiffusionPPO, DiffusionPPOConfig, clip_schedule, ddim_sigmas, denoising_discount
from torch.distributions import Normal

LOWDIM = ObsSpec(camera_names=(), lowdim_keys=("robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos", "object"),
                 lowdim_dims=(3, 4, 2, 10))


def make_agent(ft_steps: int = 10, **kw) -> DiffusionPPO:
    torch.manual_seed(0)
    model = DiffusionPolicy(LOWDIM, PolicyConfig(mlp_dims=(32, 32, 32)))
    act_norm = RangeNormalizer(min=-np.ones(7, np.float32), max=np.ones(7, np.float32))
    return DiffusionPPO(model, act_norm, DiffusionPPOConfig(ft_denoising_steps=ft_steps, **kw))


def random_obs(n: int = 5) -> dict[str, np.ndarray]:
    return {"state": np.random.default_rng(1).uniform(-1, 1, (n, 1, LOWDIM.state_dim)).astype(np.float32)}


@pytest.mark.parametrize("ft_steps", [10, 4])
def test_chain_log_prob_equals_direct_gaussian_computation(ft_steps):
    agent = make_agent(ft_steps, min_logprob_std=0.1)
    _, rec = agent.act(random_obs())
    chain, cond = torch.as_tensor(rec["chain"]), torch.as_tensor(rec["cond"])
    assert chain.shape == (5, ft_steps + 1, 4, 7)
    got = agent.chain_log_prob(cond, chain)
    model = agent.model
    for j in range(ft_steps):
        k = ft_steps - 1 - j  # chain position j is denoising step k: x_{k+1} -> x_k
        mean, sigma = model.ddim_mean_std(chain[:, j], k, cond)
        std = torch.clamp(sigma, min=0.1)
        want = Normal(mean, std).log_prob(chain[:, j + 1])[:, :4].sum(dim=(1, 2))
        torch.testing.assert_close(got[:, j], want, rtol=1e-5, atol=1e-4)


def test_last_step_std_is_the_floor_because_ddim_sigma_vanishes():
    agent = make_agent()
    sigma = agent.model.ddim_sigma
    assert float(sigma[0]) == pytest.approx(0.0, abs=1e-6)  # k = 0: ᾱ_prev = 1 -> σ = 0
    assert float(sigma[-1]) > 0.1


@pytest.mark.parametrize("ft_steps", [10, 3])
def test_ratio_is_one_before_the_first_update(ft_steps):
    agent = make_agent(ft_steps)
    _, rec = agent.act(random_obs(8))
    new = agent.chain_log_prob(torch.as_tensor(rec["cond"]), torch.as_tensor(rec["chain"]))
    ratio = torch.exp(new - torch.as_tensor(rec["logprob"]))
    torch.testing.assert_close(ratio, torch.ones_like(ratio), rtol=0, atol=1e-4)


def test_clip_schedule_grows_from_base_at_the_noisiest_step_to_last_at_the_final_step():
    eps = clip_schedule(10, base=0.01, last=0.1, rate=3.0)
    assert eps.shape == (10,)
    assert float(eps[0]) == pytest.approx(0.01)
    assert float(eps[-1]) == pytest.approx(0.1)
    assert torch.all(eps[1:] > eps[:-1])
    # exponential interpolation: the midpoint lies below the linear one
    mid = 0.01 + 0.09 * (math.exp(1.5) - 1) / (math.exp(3.0) - 1)
    assert float(clip_schedule(3, 0.01, 0.1, 3.0)[1]) == pytest.approx(mid)
    assert clip_schedule(1, 0.01, 0.1, 3.0).tolist() == pytest.approx([0.1])


def test_denoising_discount_gives_the_final_step_full_credit():
    d = denoising_discount(10, 0.9)
    assert float(d[-1]) == 1.0
    assert float(d[0]) == pytest.approx(0.9**9)
    assert torch.all(d[1:] > d[:-1])


@pytest.mark.parametrize("eval_eta", [None, 0.0])
def test_deterministic_act_is_the_chain_the_fine_tuned_package_deploys(eval_eta):
    agent = make_agent(eval_eta=eval_eta)
    obs = random_obs(3)
    a, rec = agent.act(obs, deterministic=True)
    deployed = DiffusionPolicy(LOWDIM, agent.deploy_config())  # what load_policy builds from the saved card
    deployed.load_state_dict(agent.model.state_dict())
    assert deployed.cfg.ddim_eta == (1.0 if eval_eta is None else 0.0)
    noise = torch.zeros(3, 11, 4, 7)
    noise[:, 0] = torch.as_tensor(rec["chain"][:, 0])  # same x_K
    want = deployed.sample({"state": torch.as_tensor(obs["state"])}, noise=noise, std=0.0)
    np.testing.assert_allclose(a, want.numpy(), atol=1e-5)
    torch.testing.assert_close(agent.model.ddim_sigma, ddim_sigmas(agent.model, 1.0))  # table restored


@pytest.mark.parametrize("noise_eta", [1.0, 0.0])
def test_sampling_noise_is_the_floored_scaled_ddim_sigma(noise_eta):
    agent = make_agent(noise_eta=noise_eta, min_sampling_std=0.1, min_logprob_std=0.1)
    torch.manual_seed(0)
    _, rec = agent.act(random_obs(4000))
    chain, cond = torch.as_tensor(rec["chain"]), torch.as_tensor(rec["cond"])
    mean, sigma = agent.model.ddim_mean_std(chain[:, 0], 9, cond)  # first step k = K-1
    resid = (chain[:, 1] - mean).std().item()
    want = max(noise_eta * float(sigma[0, 0, 0]), 0.1)
    assert resid == pytest.approx(want, rel=0.05)


def _batch(agent, n=64):
    _, rec = agent.act(random_obs(n))
    adv = np.random.default_rng(0).standard_normal(n).astype(np.float32)
    return {"state": random_obs(n)["state"], **rec, "advantage": adv, "return": adv + rec["value"]}


def test_critic_warmup_leaves_the_actor_unchanged_and_the_update_moves_it():
    agent = make_agent(update_epochs=2, minibatch_size=32, actor_lr=1e-3)
    batch = _batch(agent)
    before = [p.detach().clone() for p in agent.model.denoiser.parameters()]
    critic_before = [p.detach().clone() for p in agent.critic.parameters()]
    agent.update(batch, update_actor=False)
    assert all(torch.equal(a, b) for a, b in zip(before, agent.model.denoiser.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(critic_before, agent.critic.parameters()))
    logs = agent.update(batch, update_actor=True)
    assert not all(torch.equal(a, b) for a, b in zip(before, agent.model.denoiser.parameters()))
    assert {"pg_loss", "v_loss", "approx_kl", "clipfrac"} <= set(logs)


def test_frozen_copy_runs_the_early_steps_after_fine_tuning():
    agent = make_agent(ft_steps=4, update_epochs=2, minibatch_size=32, actor_lr=1e-2)
    frozen_before = [p.detach().clone() for p in agent.frozen.parameters()]
    agent.update(_batch(agent), update_actor=True)
    assert all(torch.equal(a, b) for a, b in zip(frozen_before, agent.frozen.parameters()))
    assert agent._net(9) is agent.frozen and agent._net(3) is agent.model.denoiser


def test_updates_move_sampled_actions_toward_higher_advantage():
    """A one-step bandit (reward = -(a - 0.5)²): a few PPO updates over the denoising chain raise the reward."""
    agent = make_agent(actor_lr=1e-3, update_epochs=4, minibatch_size=64, clip_base=0.01, clip_last=0.1)
    obs = {"state": np.repeat(random_obs(1)["state"], 256, 0)}
    rewards = []
    for _ in range(6):
        _, rec = agent.act(obs)
        x0 = np.clip(rec["chain"][:, -1], -1, 1)
        r = -((x0[:, :4] - 0.5) ** 2).mean(axis=(1, 2))
        rewards.append(float(r.mean()))
        agent.update({**obs, **rec, "advantage": (r - r.mean()).astype(np.float32), "return": r.astype(np.float32)})
    assert rewards[-1] > rewards[0] + 0.15, rewards
