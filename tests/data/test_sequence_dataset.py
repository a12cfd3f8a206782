"""SequenceDataset: window shapes, padding at episode start/end, normalisation, the shared obs builder."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from d2ppo.data import RobomimicWriter, SequenceDataset
from d2ppo.normalize import RangeNormalizer
from d2ppo.obs import ObservationBuilder, ObsSpec

ENV_ARGS = {"env_name": "Lift", "type": 1, "env_kwargs": {}}


def _demo(T: int, demo_id: int, image_size: int):
    """Step t of demo d has eef_pos x = 100 d + t and action[0] = 100 d + t, so windows are readable."""
    t = np.arange(T, dtype=np.float64)
    pos = np.stack([100 * demo_id + t, np.full(T, 0.5), np.full(T, -0.5)], axis=1)
    quat = np.tile([0.0, 0.0, 0.0, 1.0], (T, 1)) + 0.01 * t[:, None]
    grip = np.stack([0.04 - 0.001 * t, -0.04 + 0.001 * t], axis=1)
    img = np.zeros((T, image_size, image_size, 3), np.uint8)
    img[:, 0, 0, 0] = (10 * demo_id + t).astype(np.uint8)  # frame id in the top-left pixel
    img[:, -1, -1, 1] = 200  # bottom-right marker: must stay bottom-right (no flips)
    actions = np.zeros((T, 7), np.float32)
    actions[:, 0] = 100 * demo_id + t
    actions[:, 6] = np.where(t % 2 == 0, -1.0, 1.0)
    obs = {"robot0_eef_pos": pos, "robot0_eef_quat": quat, "robot0_gripper_qpos": grip, "agentview_image": img}
    return obs, actions


@pytest.fixture
def demo_file(tmp_path):
    path = tmp_path / "windows.hdf5"
    with RobomimicWriter(path, ENV_ARGS) as w:
        for d, T in enumerate((6, 3)):
            obs, actions = _demo(T, d, image_size=8)
            w.add_demo(obs, actions)
        w.write_masks(valid_fraction=0.5, seed=0)
    return path


def _unnorm(ds, item):
    state = ds.normalizers["state"].unnormalize(item["state"].numpy())
    actions = ds.normalizers["action"].unnormalize(item["actions"].numpy())
    return state, actions


def test_window_shapes_and_dtypes(demo_file):
    spec = ObsSpec(camera_names=("agentview",), image_size=8, n_obs_steps=2)
    ds = SequenceDataset(demo_file, spec, horizon=4)
    assert len(ds) == 9 and ds.num_demos == 2
    item = ds[0]
    assert item["rgb"].shape == (2, 1, 3, 8, 8) and item["rgb"].dtype == torch.uint8
    assert item["state"].shape == (2, 9) and item["state"].dtype == torch.float32
    assert item["actions"].shape == (4, 7) and item["actions"].dtype == torch.float32
    batch = ds.get_batch([0, 3, 8])
    assert batch["rgb"].shape == (3, 2, 1, 3, 8, 8) and batch["actions"].shape == (3, 4, 7)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, shuffle=True)
    assert next(iter(loader))["state"].shape == (4, 2, 9)


def test_observation_history_repeats_first_frame_at_episode_start(demo_file):
    spec = ObsSpec(camera_names=("agentview",), image_size=8, n_obs_steps=3)
    ds = SequenceDataset(demo_file, spec, horizon=2)
    state, _ = _unnorm(ds, ds[0])
    np.testing.assert_allclose(state[:, 0], [0, 0, 0], atol=1e-4)
    state, _ = _unnorm(ds, ds[1])
    np.testing.assert_allclose(state[:, 0], [0, 0, 1], atol=1e-4)
    state, _ = _unnorm(ds, ds[4])
    np.testing.assert_allclose(state[:, 0], [2, 3, 4], atol=1e-4)
    # the second demo (global index 6) pads with its own first frame, never the previous demo's
    state, _ = _unnorm(ds, ds[6])
    np.testing.assert_allclose(state[:, 0], [100, 100, 100], atol=1e-3)
    assert ds[6]["rgb"][:, 0, 0, 0, 0].tolist() == [10, 10, 10]
    assert ds[7]["rgb"][:, 0, 0, 0, 0].tolist() == [10, 10, 11]


def test_action_chunk_repeats_last_action_at_episode_end(demo_file):
    spec = ObsSpec(camera_names=(), n_obs_steps=1)
    ds = SequenceDataset(demo_file, spec, horizon=4)
    _, actions = _unnorm(ds, ds[1])
    np.testing.assert_allclose(actions[:, 0], [1, 2, 3, 4], atol=1e-4)
    _, actions = _unnorm(ds, ds[4])
    np.testing.assert_allclose(actions[:, 0], [4, 5, 5, 5], atol=1e-4)
    np.testing.assert_allclose(actions[:, 6], [-1, 1, 1, 1], atol=1e-5)
    _, actions = _unnorm(ds, ds[8])  # last step of the 3-step demo 1
    np.testing.assert_allclose(actions[:, 0], [102, 102, 102, 102], atol=1e-3)
    assert "rgb" not in ds[0]


def test_normalised_data_spans_minus_one_to_one_and_round_trips(demo_file):
    spec = ObsSpec(camera_names=(), n_obs_steps=1)
    ds = SequenceDataset(demo_file, spec, horizon=1)
    states = torch.cat([ds[i]["state"] for i in range(len(ds))])
    actions = torch.cat([ds[i]["actions"] for i in range(len(ds))])
    assert actions.min() >= -1 - 1e-6 and actions.max() <= 1 + 1e-6
    assert torch.isclose(actions[:, 0].min(), torch.tensor(-1.0)) and torch.isclose(
        actions[:, 0].max(), torch.tensor(1.0)
    )
    assert torch.all(states[:, 1] == 0)  # constant feature maps to 0
    raw = ds.normalizers["action"].unnormalize(actions)
    np.testing.assert_allclose(raw[:, 0].numpy(), [0, 1, 2, 3, 4, 5, 100, 101, 102], atol=1e-3)
    # given normalisers are used as they are (validation data uses the training statistics)
    fixed = {"state": RangeNormalizer.fit(np.array([[-1000.0] * 9, [1000.0] * 9])), "action": ds.normalizers["action"]}
    ds2 = SequenceDataset(demo_file, spec, horizon=1, normalizers=fixed)
    assert ds2.normalizers["state"] is fixed["state"]
    np.testing.assert_allclose(ds2[0]["state"][0, 0].item(), 0.0, atol=1e-6)


def test_windows_match_the_deployment_observation_builder(demo_file):
    spec = ObsSpec(camera_names=("agentview",), image_size=8, n_obs_steps=2)
    ds = SequenceDataset(demo_file, spec, horizon=4)
    builder = ObservationBuilder(spec, ds.normalizers["state"])
    obs, _ = _demo(6, 0, image_size=8)
    builder.reset()
    for t in range(6):
        built = builder({k: v[t] for k, v in obs.items()})
        np.testing.assert_allclose(ds[t]["state"].numpy(), built["state"], atol=1e-6)
        np.testing.assert_array_equal(ds[t]["rgb"].numpy(), built["rgb"])
    assert ds[0]["rgb"][0, 0, 1, 7, 7] == 200  # marker pixel still bottom-right, green channel


def test_images_are_resized_once_to_the_spec_size(demo_file):
    spec = ObsSpec(camera_names=("agentview",), image_size=4, n_obs_steps=1)
    ds = SequenceDataset(demo_file, spec, horizon=1)
    assert ds[0]["rgb"].shape == (1, 1, 3, 4, 4)


def test_filter_key_and_max_demos_select_demos(demo_file):
    spec = ObsSpec(camera_names=(), n_obs_steps=1)
    train = SequenceDataset(demo_file, spec, filter_key="train")
    valid = SequenceDataset(demo_file, spec, filter_key="valid", normalizers=train.normalizers)
    assert sorted(train.demo_names + valid.demo_names) == ["demo_0", "demo_1"]
    assert len(train) + len(valid) == 9
    assert SequenceDataset(demo_file, spec, max_demos=1).demo_names == ["demo_0"]
