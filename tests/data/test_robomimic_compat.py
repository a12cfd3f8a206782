"""Files laid out like robomimic's official datasets (written here with plain h5py) load unchanged."""

from __future__ import annotations

import json

import h5py
import numpy as np
from d2ppo.data import SequenceDataset, list_demos, read_demo, read_env_args, validate_file
from d2ppo.envs import make_env
from d2ppo.obs import ObsSpec
from robomimic_fixtures import OFFICIAL_LIFT_ENV_ARGS as OFFICIAL_ENV_ARGS

# As in robomimic v0.3 lift/ph/image_v141.hdf5: robosuite 1.4 controller form, 84x84 images.


def _write_official_layout(path, lengths=(12, 9, 15)):
    """The layout robomimic's dataset_states_to_obs.py writes, without next_obs (older releases)."""
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        total = 0
        for i, T in enumerate(lengths):
            g = data.create_group(f"demo_{i}")
            g.attrs["num_samples"] = T
            g.attrs["model_file"] = "<mujoco model='base'/>"
            g.create_dataset("actions", data=rng.uniform(-1, 1, (T, 7)))  # float64, as robomimic stores them
            g.create_dataset("rewards", data=np.zeros(T))
            g.create_dataset("dones", data=np.zeros(T, dtype=np.int64))
            g.create_dataset("states", data=rng.normal(size=(T, 32)))
            obs = g.create_group("obs")
            for key, dim in [
                ("object", 10),
                ("robot0_eef_pos", 3),
                ("robot0_eef_quat", 4),
                ("robot0_eef_vel_ang", 3),
                ("robot0_gripper_qpos", 2),
                ("robot0_joint_pos", 7),
                ("robot0_joint_vel", 7),
            ]:
                obs.create_dataset(key, data=rng.normal(size=(T, dim)))
            for cam in ("agentview", "robot0_eye_in_hand"):
                obs.create_dataset(f"{cam}_image", data=rng.integers(0, 256, (T, 84, 84, 3), dtype=np.uint8))
            total += T
        data.attrs["total"] = total
        data.attrs["env_args"] = json.dumps(OFFICIAL_ENV_ARGS, indent=4)
        f.create_dataset("mask/train", data=np.array([b"demo_0", b"demo_2"], dtype="S6"))
        f.create_dataset("mask/valid", data=np.array([b"demo_1"], dtype="S6"))


def test_official_layout_validates_reads_and_feeds_the_dataset(tmp_path):
    path = tmp_path / "image_v141.hdf5"
    _write_official_layout(path)
    validate_file(path, obs_keys=["object", "robot0_joint_pos", "agentview_image"], action_dim=7)
    assert read_env_args(path)["env_kwargs"]["controller_configs"]["type"] == "OSC_POSE"
    assert list_demos(path, "train") == ["demo_0", "demo_2"] and list_demos(path, "valid") == ["demo_1"]
    demo = read_demo(path, "demo_2")
    assert demo.next_obs == {} and demo.actions.dtype == np.float32 and len(demo) == 15
    spec = ObsSpec(camera_names=("agentview", "robot0_eye_in_hand"), image_size=96, n_obs_steps=2)
    ds = SequenceDataset(path, spec, horizon=4, filter_key="train")
    assert len(ds) == 27
    item = ds[5]
    assert item["rgb"].shape == (2, 2, 3, 96, 96) and item["state"].shape == (2, 9)


def test_official_env_args_build_the_env_they_describe(tmp_path):
    path = tmp_path / "low_dim_v141.hdf5"
    _write_official_layout(path, lengths=(3,))
    env = make_env(read_env_args(path), seed=0, camera_names=())
    obs = env.reset()
    assert env.action_dim == 7 and obs["object-state"].shape == (10,)
    env.close()
