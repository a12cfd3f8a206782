"""A fine-tuned package with K′ < K fine-tuned denoising steps deploys the chain that was trained and evaluated:
the frozen pre-trained denoiser (and encoder, when the encoder was fine-tuned) for the first K − K′ steps, the
fine-tuned one for the last K′."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from d2ppo.envs import default_env_args
from d2ppo.model import PolicyConfig
from d2ppo.obs import ObsSpec
from d2ppo.package import PolicyPackageError, load_policy, make_random_policy, write_card
from d2ppo.rl.finetune import FinetuneConfig, build_agent, save_agent
from d2ppo.rl.ppo_diffusion import DiffusionPPOConfig

LOWDIM = ObsSpec(camera_names=(), lowdim_keys=("robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos", "object"),
                 lowdim_dims=(3, 4, 2, 10))
SMALL = PolicyConfig(mlp_dims=(64, 64, 64))
PIXELS = ObsSpec(camera_names=("agentview",), image_size=32)
SMALL_VIT = PolicyConfig(mlp_dims=(64, 64, 64), vit_dim=32, vit_heads=2, spatial_emb=32)


def _package(tmp_path, spec, cfg):
    path = make_random_policy(tmp_path / "pre", spec=spec, cfg=cfg, seed=0)
    card = load_policy(path).card
    card["env_args"] = default_env_args("lift", camera_names=spec.camera_names, image_size=spec.image_size)
    write_card(path, card)
    return load_policy(path)


def _obs(spec, n=3, seed=1):
    rng = np.random.default_rng(seed)
    obs = {"state": rng.uniform(-1, 1, (n, spec.n_obs_steps, spec.state_dim)).astype(np.float32)}
    if spec.uses_images:
        obs["rgb"] = rng.integers(0, 256, (n, spec.n_obs_steps, 1, 3, spec.image_size, spec.image_size), dtype=np.uint8)
    return obs


def _perturb(module, scale=0.05, seed=7):
    """Stand-in for PPO updates: move every weight of a module."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize(
    "spec,cfg,train_encoder",
    [(LOWDIM, SMALL, False), (PIXELS, SMALL_VIT, True)],
    ids=["lowdim", "pixels-encoder-fine-tuned"],
)
def test_saved_package_runs_the_frozen_early_steps_like_the_agent(tmp_path, spec, cfg, train_encoder):
    pkg = _package(tmp_path, spec, cfg)
    ft = FinetuneConfig(policy=str(pkg.path), out=str(tmp_path / "ft"),
                        ppo=DiffusionPPOConfig(ft_denoising_steps=4, train_encoder=train_encoder, eval_eta=0.0))
    agent = build_agent(ft, pkg)
    _perturb(agent.model.denoiser)
    if train_encoder:
        _perturb(agent.model.encoder)
    obs = _obs(spec)
    torch.manual_seed(3)
    want, _ = agent.act(obs, deterministic=True)
    torch.manual_seed(3)
    x_K = torch.randn(3, cfg.horizon, cfg.action_dim)  # the deterministic chain draws only x_K

    save_agent(agent, ft, pkg, tmp_path / "ft", {})
    deployed = load_policy(tmp_path / "ft")
    card = json.loads((tmp_path / "ft" / "policy.json").read_text())
    assert card["format_version"] == 2
    assert card["denoising_chain"] == {"steps": 10, "fine_tuned_steps": 4, "frozen_steps": 6,
                                       "frozen_encoder": train_encoder}
    noise = np.zeros((3, 11, cfg.horizon, cfg.action_dim), np.float32)
    noise[:, 0] = x_K.numpy()
    got = deployed.sampler("torch")(obs, noise)
    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(deployed.sampler("naive")(obs, noise), want, atol=1e-5)
    # The frozen networks are the pre-trained ones, the fine-tuned ones the agent's.
    pre = load_policy(pkg.path).model
    for name, t in pre.denoiser.state_dict().items():
        assert torch.equal(deployed.model.frozen_denoiser.state_dict()[name], t)
        assert torch.equal(deployed.model.denoiser.state_dict()[name], agent.model.denoiser.state_dict()[name])
    if train_encoder:
        for name, t in pre.encoder.state_dict().items():
            assert torch.equal(deployed.model.frozen_encoder.state_dict()[name], t)


def test_a_full_chain_package_keeps_format_version_1(tmp_path):
    pkg = _package(tmp_path, LOWDIM, SMALL)
    ft = FinetuneConfig(policy=str(pkg.path), out=str(tmp_path / "ft"), ppo=DiffusionPPOConfig(ft_denoising_steps=10))
    agent = build_agent(ft, pkg)
    save_agent(agent, ft, pkg, tmp_path / "ft", {})
    card = json.loads((tmp_path / "ft" / "policy.json").read_text())
    assert card["format_version"] == 1 and "denoising_chain" not in card
    assert not load_policy(tmp_path / "ft").model.frozen_steps


def test_split_chain_package_without_its_frozen_weights_fails_by_name(tmp_path):
    from safetensors.torch import load_file, save_file

    path = make_random_policy(tmp_path / "p", spec=LOWDIM, cfg=SMALL, frozen_steps=6)
    w = load_file(str(path / "model.safetensors"))
    save_file({k: v for k, v in w.items() if not k.startswith("frozen_denoiser.")}, str(path / "model.safetensors"))
    with pytest.raises(PolicyPackageError, match="model.safetensors: .*missing.*frozen_denoiser"):
        load_policy(path)


@pytest.mark.parametrize(
    "chain,match",
    [
        ({"steps": 10, "fine_tuned_steps": 4, "frozen_steps": 5, "frozen_encoder": False}, "frozen_steps"),
        ({"steps": 10, "fine_tuned_steps": 0, "frozen_steps": 10, "frozen_encoder": False}, "fine_tuned_steps"),
        ({"steps": 5, "fine_tuned_steps": 4, "frozen_steps": 1, "frozen_encoder": False}, "steps"),
    ],
    ids=["sum", "zero-ft", "steps"],
)
def test_inconsistent_denoising_chain_is_a_clear_error(tmp_path, chain, match):
    path = make_random_policy(tmp_path / "p", spec=LOWDIM, cfg=SMALL, frozen_steps=6)
    card = json.loads((path / "policy.json").read_text())
    card["denoising_chain"] = chain
    (path / "policy.json").write_text(json.dumps(card))
    with pytest.raises(PolicyPackageError, match=f"policy.json: .*denoising_chain.*{match}"):
        load_policy(path)


def test_fine_tuning_a_split_package_again_keeps_its_frozen_steps(tmp_path):
    pkg = _package(tmp_path, LOWDIM, SMALL)
    ft = FinetuneConfig(policy=str(pkg.path), out=str(tmp_path / "ft"), ppo=DiffusionPPOConfig(ft_denoising_steps=4))
    save_agent(build_agent(ft, pkg), ft, pkg, tmp_path / "ft", {})
    again = load_policy(tmp_path / "ft")
    with pytest.raises(ValueError, match="ft_denoising_steps"):
        build_agent(FinetuneConfig(policy="", out="", ppo=DiffusionPPOConfig(ft_denoising_steps=6)), again)
    agent = build_agent(FinetuneConfig(policy="", out="", ppo=DiffusionPPOConfig(ft_denoising_steps=4)), again)
    assert agent.model.frozen_steps == 6
