"""Fixtures for the PPO fine-tuning tests: small random low-dim Lift packages of the real format."""

from __future__ import annotations

import pytest
from d2ppo.model import PolicyConfig
from d2ppo.obs import ObsSpec

LOWDIM = ObsSpec(camera_names=(), lowdim_keys=("robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos", "object"),
                 lowdim_dims=(3, 4, 2, 10))
SMALL = PolicyConfig(mlp_dims=(64, 64, 64))


@pytest.fixture(scope="session")
def lowdim_package(tmp_path_factory):
    """A randomly initialised low-dim Lift package (small denoiser) whose card carries Lift env_args."""
    from d2ppo.envs import default_env_args
    from d2ppo.package import load_policy, make_random_policy, write_card

    path = make_random_policy(tmp_path_factory.mktemp("pkg") / "lift_random", spec=LOWDIM, cfg=SMALL, seed=0)
    card = load_policy(path).card
    card["env_args"] = default_env_args("lift", camera_names=())
    write_card(path, card)
    return path


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Small models on a loaded 2-core machine: 2 OpenMP threads ran PPO updates 6x and sampling 30x slower
    than 1 (threads spinning against the env workers); restore the setting for other test folders."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
