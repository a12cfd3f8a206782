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
    agent = make_agent(ft_steps, min_logprob_std=0.1, logprob_clamp=None)
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


# ---------------------------------------------------------------------- values that make log-probs non-finite
@pytest.mark.parametrize(
    "field,value",
    [("min_logprob_std", 0.0), ("min_logprob_std", -0.1), ("min_logprob_std", float("nan")),
     ("min_logprob_std", float("inf")), ("noise_eta", float("inf")), ("noise_eta", -1.0),
     ("min_sampling_std", -0.1), ("logprob_clamp", (2.0, -5.0))],
)
def test_config_refuses_values_that_make_log_probs_non_finite(field, value):
    with pytest.raises(ValueError, match=field):
        DiffusionPPOConfig(**{field: value})


def test_gaussian_config_refuses_a_non_positive_std_floor():
    from d2ppo.rl.ppo_gaussian import GaussianPPOConfig

    with pytest.raises(ValueError, match="std_min"):
        GaussianPPOConfig(std_min=0.0)
    with pytest.raises(ValueError, match="std_max"):
        GaussianPPOConfig(std_min=0.1, std_max=0.05)


# ---------------------------------------------------------------------- log-probability clamp (DPPO)
def test_log_prob_clamp_bounds_each_elements_log_density_like_dppo():
    """DPPO clamps every element's log-density of a transition to [-5, 2] before the per-dimension mean."""
    clamped, raw = make_agent(4), make_agent(4, logprob_clamp=None)
    assert clamped.cfg.logprob_clamp == (-5.0, 2.0)  # DPPO's default
    _, rec = raw.act(random_obs(16))
    chain, cond = torch.as_tensor(rec["chain"]).clone(), torch.as_tensor(rec["cond"])
    chain[:, 1:] += torch.randn_like(chain[:, 1:]) * 3  # far from the means: many elements below -5
    got = clamped.chain_log_prob(cond, chain)
    for j in range(4):
        mean, sigma = clamped.model.ddim_mean_std(chain[:, j], 3 - j, cond)
        lp = Normal(mean, sigma.clamp(min=0.1)).log_prob(chain[:, j + 1])[:, :4]
        assert (lp < -5).any()
        torch.testing.assert_close(got[:, j], lp.clamp(-5.0, 2.0).sum(dim=(1, 2)), rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(raw.chain_log_prob(cond, chain)[:, j], lp.sum(dim=(1, 2)), rtol=1e-5, atol=1e-4)


# ---------------------------------------------------------------------- behaviour-cloning regulariser (DPPO)
def test_bc_regulariser_is_off_by_default_and_pulls_the_chain_toward_the_pre_trained_policy():
    assert DiffusionPPOConfig().bc_coef == 0.0  # DPPO: use_bc_loss False
    agent = make_agent(4, bc_coef=1.0, actor_lr=1e-3, update_epochs=1, minibatch_size=64)
    batch = _batch(agent)
    logs = agent.update(batch)
    assert "bc_loss" in logs and np.isfinite(logs["bc_loss"])
    # The teacher is the pre-trained chain: moving the fine-tuned weights away raises the BC loss, and
    # an update with only the BC term (zero advantages) lowers it again.
    with torch.no_grad():
        for p in agent.model.denoiser.parameters():
            p.add_(0.3 * torch.randn_like(p))
    torch.manual_seed(0)
    far = agent.bc_loss(agent.encode(agent._obs(batch))).item()
    zero = {**batch, "advantage": np.zeros_like(batch["advantage"])}
    for _ in range(20):
        agent.update(zero)
    torch.manual_seed(0)
    near = agent.bc_loss(agent.encode(agent._obs(batch))).item()
    assert near < far - 0.05, (far, near)


# ---------------------------------------------------------------------- learning-rate warm-up
def test_actor_learning_rate_warms_up_linearly_over_actor_update_iterations():
    assert DiffusionPPOConfig().actor_lr_warmup_iters == 0  # DPPO's robomimic configs: min_lr = actor_lr, constant
    agent = make_agent(actor_lr=1e-3, actor_lr_warmup_iters=3, actor_lr_warmup_start=0.25, update_epochs=1,
                       minibatch_size=64)
    batch = _batch(agent)
    lrs = []
    for update_actor in (False, True, True, True, True):  # a critic warm-up iteration does not count
        logs = agent.update(batch, update_actor=update_actor)
        lrs.append(logs.get("actor_lr"))
    assert lrs[0] is None
    assert lrs[1:] == pytest.approx([0.25e-3, 0.5e-3, 0.75e-3, 1e-3])
    assert agent.actor_opt.param_groups[0]["lr"] == pytest.approx(1e-3)


def test_without_warm_up_the_actor_learning_rate_is_constant():
    agent = make_agent(actor_lr=1e-3, update_epochs=1, minibatch_size=64)
    batch = _batch(agent)
    assert [agent.update(batch)["actor_lr"] for _ in range(2)] == pytest.approx([1e-3, 1e-3])


# ---------------------------------------------------------------------- ViT fine-tuning with random shifts
PIXELS = ObsSpec(camera_names=("agentview",), image_size=32)


def make_pixel_agent(**kw) -> DiffusionPPO:
    torch.manual_seed(0)
    model = DiffusionPolicy(PIXELS, PolicyConfig(mlp_dims=(32, 32, 32), vit_dim=32, vit_heads=2, spatial_emb=16))
    act_norm = RangeNormalizer(min=-np.ones(7, np.float32), max=np.ones(7, np.float32))
    return DiffusionPPO(model, act_norm, DiffusionPPOConfig(ft_denoising_steps=4, **kw))


def _pixel_batch(agent, n=16):
    rng = np.random.default_rng(2)
    obs = {"state": rng.uniform(-1, 1, (n, 1, 9)).astype(np.float32),
           "rgb": rng.integers(0, 256, (n, 1, 1, 3, 32, 32), dtype=np.uint8)}
    _, rec = agent.act(obs)
    adv = rng.standard_normal(n).astype(np.float32)
    return {**obs, **rec, "advantage": adv, "return": adv + rec["value"]}


def test_pixel_policies_fine_tune_the_vit_with_random_shifts_by_default():
    """DPPO's image runs fine-tune the ViT and random-shift the update batch's images (pad 4)."""
    assert make_pixel_agent().train_encoder and make_pixel_agent().augment
    assert not make_agent().train_encoder  # low-dim: the encoder is the identity, nothing to fine-tune
    assert not make_pixel_agent(train_encoder=False).train_encoder


def test_random_shift_of_the_update_batch_keeps_the_first_ratio_at_one(monkeypatch):
    """Old log-probs are recomputed on the shifted images (as DPPO does), so before any step the ratio is 1."""
    import d2ppo.rl.ppo_diffusion as ppo

    calls = []
    real = ppo.random_shift

    def spy(img, pad):
        calls.append((tuple(img.shape), pad))
        return real(img, pad)

    monkeypatch.setattr(ppo, "random_shift", spy)
    agent = make_pixel_agent(actor_lr=0.0, critic_lr=0.0, update_epochs=1, minibatch_size=16, logprob_clamp=None)
    logs = agent.update(_pixel_batch(agent))
    assert calls and calls[0] == ((16, 3, 32, 32), 4)
    assert logs["ratio"] == pytest.approx(1.0, abs=1e-5) and logs["approx_kl"] == pytest.approx(0.0, abs=1e-7)
    # The shifted images are what the update saw: other features than the rollout's.
    agent_plain = make_pixel_agent(actor_lr=0.0, critic_lr=0.0, update_epochs=1, minibatch_size=16, augment=False)
    n_calls = len(calls)
    agent_plain.update(_pixel_batch(agent_plain))
    assert len(calls) == n_calls
