"""Recorder logic without ROS: pairing executed actions with inputs, sample assembly, durable demos that
training reads."""

from __future__ import annotations

import json

import numpy as np
import pytest
from d2ppo.data.dataset import SequenceDataset
from d2ppo.data.robomimic_hdf5 import list_demos, read_demo, read_env_args
from d2ppo.obs import ObsSpec
from d2ppo_recorder.demo_file import DemoFile
from d2ppo_recorder.episode import (
    REAL_ENV_TYPE,
    EpisodeRecorder,
    InputHistory,
    RecorderStateError,
    make_sample,
    real_env_args,
)

PERIOD = 0.05


def _inputs(now, cams=("agentview",), image_shape=(40, 50), image_size=0, history=None):
    """Inputs of one moment: a frame captured 30 ms before ``now``, robot state 10 ms before."""
    history = history or InputHistory(cams, keep_s=1.0, image_size=image_size)
    for c in cams:
        history.set_image(c, now - 0.03, np.full((*image_shape, 3), 77, np.uint8))
    history.set_ee_pose(now - 0.01, [0.5, 0.1, 0.3], [1.0, 0.0, 0.0, 0.0])
    history.set_fingers(now - 0.01, 0.03, 0.03)
    history.set_arm_joints(now - 0.01, np.arange(7) * 0.1)
    return history


def _sample(t, cams=("agentview",), image_size=16):
    obs, reason = make_sample(_inputs(t, cams, image_size=image_size), t, max_obs_age=0.2)
    assert reason == ""
    return obs


def test_an_executed_action_is_paired_with_the_newest_inputs_stamped_at_or_before_it():
    history = InputHistory(["agentview"], keep_s=1.0)
    for k in range(5):  # frames at 10.00, 10.03, ... 10.12, robot state at 10.00, 10.01, ...
        history.set_image("agentview", 10.0 + 0.03 * k, np.full((8, 8, 3), k, np.uint8))
    for k in range(15):
        history.set_ee_pose(10.0 + 0.01 * k, [k, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0])
        history.set_fingers(10.0 + 0.01 * k, 0.01, 0.01)
        history.set_arm_joints(10.0 + 0.01 * k, np.full(7, k))
    # The action was sent at 10.065; frames 10.09 and 10.12 and later robot states had arrived too, but a policy
    # acting at 10.065 could not have seen them.
    obs, reason = make_sample(history, 10.065, max_obs_age=0.2)
    assert reason == ""
    assert obs["agentview_stamp"] == pytest.approx(10.06) and obs["agentview_image"][0, 0, 0] == 2
    assert obs["robot0_eef_stamp"] == pytest.approx(10.06) and obs["robot0_eef_pos"][0] == 6
    assert obs["robot0_joint_pos"][0] == 6 and obs["timestamp"] == 10.065
    # Equal stamps pair (the lock-step sim stamps a step's observation and its action alike).
    obs, _ = make_sample(history, 10.09, max_obs_age=0.2)
    assert obs["agentview_stamp"] == pytest.approx(10.09) and obs["robot0_eef_stamp"] == pytest.approx(10.09)


def test_input_history_forgets_entries_older_than_its_window_but_keeps_the_newest():
    history = InputHistory([], keep_s=0.5)
    for k in range(100):
        history.set_ee_pose(float(k) * 0.1, [k, 0, 0], [0, 0, 0, 1])
    assert history.at("robot/ee_pose", 9.45)[0] == pytest.approx(9.4)  # newest 9.9, window 0.5 s
    assert history.at("robot/ee_pose", 9.35) is None  # 9.3 was forgotten
    history.set_fingers(1.0, 0.0, 0.0)
    assert history.at("robot/joint_states", 1000.0)[0] == 1.0
    for k in range(100):  # the clock jumped back (a sim reset): the new time line replaces the old one
        history.set_ee_pose(float(k) * 0.1, [k, 0, 0], [0, 0, 0, 1])
    assert len(history._entries["robot/ee_pose"]) <= 6 and history.at("robot/ee_pose", 9.45)[0] == pytest.approx(9.4)


def test_sample_uses_robomimic_names_resized_images_and_keeps_input_stamps():
    obs, reason = make_sample(_inputs(100.0, image_size=16), 99.995, max_obs_age=0.2)
    assert reason == ""
    assert obs["agentview_image"].shape == (16, 16, 3) and obs["agentview_image"].dtype == np.uint8
    np.testing.assert_allclose(obs["robot0_eef_pos"], [0.5, 0.1, 0.3])
    np.testing.assert_allclose(obs["robot0_eef_quat"], [1, 0, 0, 0])
    np.testing.assert_allclose(obs["robot0_gripper_qpos"], [0.03, -0.03])
    np.testing.assert_allclose(obs["robot0_joint_pos"], np.arange(7) * 0.1)
    assert obs["timestamp"] == 99.995 and obs["agentview_stamp"] == pytest.approx(99.97)
    assert obs["robot0_eef_stamp"] == pytest.approx(99.99) and obs["robot0_joint_stamp"] == pytest.approx(99.99)
    native, _ = make_sample(_inputs(100.0, image_size=0), 99.995, max_obs_age=0.2)
    assert native["agentview_image"].shape == (40, 50, 3)


def test_sample_is_skipped_when_an_input_is_missing_or_stale():
    _, reason = make_sample(_inputs(100.0), 100.5, max_obs_age=0.2)
    assert reason.startswith("stale cameras/agentview/image_raw")
    _, reason = make_sample(_inputs(100.0), 99.98, max_obs_age=0.2)  # the action predates the robot state
    assert reason.startswith("missing") and "robot/ee_pose" in reason
    _, reason = make_sample(InputHistory(["agentview"], keep_s=1.0), 1.0, 0.2)
    assert reason.startswith("missing") and "robot/joint_states" in reason


def test_episodes_become_demos_that_sequence_dataset_reads(tmp_path):
    path = tmp_path / "demos.hdf5"
    env_args = real_env_args("Lift", ["agentview"], 16, 20.0, robot_ip="172.16.0.2")
    rec = EpisodeRecorder(DemoFile(path, env_args), min_steps=3)
    for episode, n in enumerate((12, 9)):
        rec.start()
        for t in range(n):
            assert rec.add(_sample(100.0 + t * PERIOD), np.full(7, 0.1 * episode), "teleop") == ""
        assert rec.stop({"operator": "test"}) == f"demo_{episode}"
    assert list_demos(path) == ["demo_0", "demo_1"]
    assert sorted(list_demos(path, "train") + list_demos(path, "valid")) == ["demo_0", "demo_1"]
    demo = read_demo(path, "demo_1")
    assert len(demo) == 9 and demo.attrs["operator"] == "test" and demo.rewards[-1] == 1 and demo.dones[-1] == 1
    assert demo.attrs["action_sources"] == "teleop"
    np.testing.assert_allclose(demo.actions, 0.1)
    args = read_env_args(path)
    assert args == json.loads(json.dumps(env_args)) and args["type"] == REAL_ENV_TYPE
    ds = SequenceDataset(path, ObsSpec(camera_names=("agentview",), image_size=16, n_obs_steps=2), horizon=4)
    assert len(ds) == 21 and ds[0]["rgb"].shape == (2, 1, 3, 16, 16) and ds[0]["actions"].shape == (4, 7)


def test_non_finite_samples_are_dropped_and_counted_and_the_episode_still_saves(tmp_path):
    path = tmp_path / "d.hdf5"
    rec = EpisodeRecorder(DemoFile(path, real_env_args("Lift", ["agentview"], 16, 20.0)), min_steps=2)
    rec.start()
    for t in range(10):
        action = np.full(7, 0.2)
        obs = _sample(100.0 + t * PERIOD)
        if t == 3:
            action[0] = np.nan
        if t == 5:
            action[6] = -np.inf
        if t == 7:
            obs["robot0_eef_pos"] = np.array([0.5, np.nan, 0.3])
        reason = rec.add(obs, action)
        assert (reason == "") == (t not in (3, 5, 7)), reason
    assert rec.add(_sample(100.0 + 8 * PERIOD), np.zeros(7)).startswith("out_of_order")  # time did not advance
    assert rec.skipped == {"nonfinite": 3, "out_of_order": 1}
    assert rec.stop() == "demo_0"
    demo = read_demo(path, "demo_0")
    assert len(demo) == 7 and np.all(np.isfinite(demo.actions)) and np.all(np.isfinite(demo.obs["robot0_eef_pos"]))
    np.testing.assert_allclose(demo.obs["timestamp"], 100.0 + np.array([0, 1, 2, 4, 6, 8, 9]) * PERIOD)


def test_recorder_refuses_out_of_order_commands_and_short_episodes(tmp_path):
    rec = EpisodeRecorder(DemoFile(tmp_path / "d.hdf5", real_env_args("Lift", [], 0, 20.0)), min_steps=2)
    with pytest.raises(RecorderStateError, match="not recording"):
        rec.stop()
    with pytest.raises(RecorderStateError, match="not recording"):
        rec.discard()
    rec.start()
    with pytest.raises(RecorderStateError, match="already recording"):
        rec.start()
    obs = _sample(1.0, cams=())
    rec.add(obs, np.zeros(7))
    with pytest.raises(RecorderStateError, match="min_steps=2"):
        rec.stop()
    assert rec.recording and rec.discard() == 1 and not rec.recording
    assert rec.add(obs, np.zeros(7)) == "not recording"  # idle: nothing is buffered
    assert rec.steps == 0


@pytest.mark.timeout(120)
def test_policy_trained_on_recorded_demos_runs_on_a_recorded_observation(tmp_path):
    """Record -> ``python -m d2ppo.train --data <file>`` unchanged -> the package's own builder and sampler."""
    from d2ppo.package import load_policy
    from d2ppo.train import main as train_main

    path = tmp_path / "demos.hdf5"
    rec = EpisodeRecorder(DemoFile(path, real_env_args("Lift", ["agentview"], 16, 20.0), valid_fraction=0))
    samples = []
    for _ in range(2):
        rec.start()
        for t in range(12):
            obs = _sample(100.0 + t * PERIOD)
            samples.append(obs)
            rec.add(obs, np.r_[np.full(6, 0.01 * t), 1.0])
        rec.stop()
    train_main(["--data", str(path), "--out", str(tmp_path / "run"), "--cameras", "agentview", "--image-size", "16",
                "--steps", "2", "--batch-size", "8", "--threads", "1"])
    policy = load_policy(tmp_path / "run" / "policy")
    assert policy.task == "RealPandaLift" and policy.card["obs"]["robot_base_pos"] == [0.0, 0.0, 0.0]
    builder = policy.obs_builder()
    chunk = policy.sampler()(builder(samples[-1]))  # a recorded observation is a raw policy observation
    assert chunk.shape == (policy.horizon, 7) and np.all(np.abs(chunk) <= 1.0)
