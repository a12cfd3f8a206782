"""One tiny fine-tuning iteration end to end on the CPU, in real robosuite, for both algorithms."""

from __future__ import annotations

import json

import pytest
from d2ppo.package import load_policy
from d2ppo.rl.finetune import main

TINY = ["--iterations", "1", "--envs", "1", "--workers", "0", "--steps-per-iter", "4", "--max-env-steps", "16",
        "--critic-warmup", "0", "--eval-every", "1", "--eval-episodes", "1", "--seed", "3"]


@pytest.mark.timeout(300)
def test_one_d2ppo_iteration_writes_a_package_that_load_policy_loads(lowdim_package, tmp_path):
    out, run = tmp_path / "ft", tmp_path / "run"
    main(["--policy", str(lowdim_package), "--out", str(out), "--run-dir", str(run), "--final-eval-episodes", "1", *TINY])
    pkg = load_policy(out)
    card = pkg.card
    assert card["evaluation"]["episodes"] == 1 and "ci95" in card["evaluation"]
    assert card["pretrained_evaluation"]["episodes"] == 1
    ft = card["finetuning"]
    assert ft["command"].startswith("python -m d2ppo.rl.finetune --policy")
    assert ft["env_steps"] > 0 and ft["seed"] == 3 and ft["time_s"] > 0
    assert ft["config"]["ppo"]["ft_denoising_steps"] == 10
    assert (out / "learning_curve.png").stat().st_size > 0
    assert (run / "checkpoints" / "iter_0001" / "model.safetensors").is_file()
    rec = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rec[-1]["iteration"] == 1 and "loss/pg_loss" in rec[-1]
    assert json.loads((run / "config.json").read_text())["algo"] == "d2ppo"
    # The fine-tuned weights differ from the pre-trained ones (the actor was updated).
    before = load_policy(lowdim_package).model.denoiser.state_dict()
    after = pkg.model.denoiser.state_dict()
    assert any(not (before[k] == after[k]).all() for k in before)


@pytest.mark.timeout(300)
def test_gaussian_baseline_runs_in_the_same_harness(lowdim_package, tmp_path):
    from d2ppo.rl.ppo_gaussian import load_gaussian_policy

    out = tmp_path / "gauss"
    main(["--policy", str(lowdim_package), "--out", str(out), "--run-dir", str(tmp_path / "run"), "--algo", "gaussian",
          "--gaussian-init", "scratch", "--final-eval-episodes", "1", *TINY])
    actor, card = load_gaussian_policy(out)
    assert card["evaluation"]["episodes"] == 1
    assert card["finetuning"]["algo"] == "gaussian"
    assert actor.log_std.shape == (4, 7)


@pytest.fixture(scope="module")
def pixel_package(tmp_path_factory):
    """A randomly initialised pixel Lift package: one 32 px agentview camera + proprio, small ViT and denoiser."""
    from d2ppo.envs import default_env_args
    from d2ppo.model import PolicyConfig
    from d2ppo.obs import ObsSpec
    from d2ppo.package import make_random_policy, write_card

    spec = ObsSpec(camera_names=("agentview",), image_size=32)
    cfg = PolicyConfig(mlp_dims=(64, 64, 64), vit_dim=32, vit_heads=2, spatial_emb=32)
    path = make_random_policy(tmp_path_factory.mktemp("pkg") / "lift_pixels", spec=spec, cfg=cfg, seed=0)
    card = load_policy(path).card
    card["env_args"] = default_env_args("lift", camera_names=("agentview",), image_size=32)
    write_card(path, card)
    return path


@pytest.mark.timeout(300)
@pytest.mark.parametrize("train_encoder", [False, True], ids=["frozen-vit", "vit-fine-tuned-by-default"])
def test_one_iteration_from_pixels_renders_the_camera_and_updates_the_actor(pixel_package, tmp_path, train_encoder):
    """The pixel path: rendered agentview images -> ViT features (critic input) -> PPO update -> package.
    As in DPPO, a pixel policy's ViT is fine-tuned (with random shifts) unless --no-train-encoder."""
    out = tmp_path / "ft"
    extra = [] if train_encoder else ["--no-train-encoder"]
    main(["--policy", str(pixel_package), "--out", str(out), "--run-dir", str(tmp_path / "run"),
          "--final-eval-episodes", "1", *TINY, *extra])
    pkg = load_policy(out)
    assert pkg.card["obs"]["camera_names"] == ["agentview"]
    assert pkg.card["finetuning"]["config"]["ppo"]["train_encoder"] is train_encoder
    before, after = load_policy(pixel_package).model, pkg.model
    moved = lambda a, b: any(not (x == y).all() for x, y in zip(a.state_dict().values(), b.state_dict().values()))  # noqa: E731
    assert moved(before.denoiser, after.denoiser)
    assert moved(before.encoder, after.encoder) is train_encoder


@pytest.mark.timeout(300)
def test_fine_tuning_the_last_steps_writes_and_evaluates_the_split_chain(lowdim_package, tmp_path):
    """--ft-denoising-steps 4: the package keeps the pre-trained denoiser for the first 6 steps, and the final
    evaluation (d2ppo.evaluate through load_policy) runs that chain."""
    import torch

    out = tmp_path / "ft"
    main(["--policy", str(lowdim_package), "--out", str(out), "--run-dir", str(tmp_path / "run"),
          "--final-eval-episodes", "1", "--ft-denoising-steps", "4", *TINY])
    pkg = load_policy(out)
    assert pkg.card["denoising_chain"]["fine_tuned_steps"] == 4 and pkg.model.frozen_steps == 6
    assert pkg.card["evaluation"]["episodes"] == 1
    before = load_policy(lowdim_package).model.denoiser.state_dict()
    assert all(torch.equal(pkg.model.frozen_denoiser.state_dict()[k], v) for k, v in before.items())
    assert not all(torch.equal(pkg.model.denoiser.state_dict()[k], v) for k, v in before.items())
