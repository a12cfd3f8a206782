"""Recorder logic without ROS: action timing, sample assembly, durable demos that training reads."""

from __future__ import annotations

import json

import numpy as np
import pytest
from d2ppo.data.dataset import SequenceDataset
from d2ppo.data.robomimic_hdf5 import RobomimicWriter, list_demos, read_demo, read_env_args
from d2ppo.obs import ObsSpec
from d2ppo_control import ActionChunk
from d2ppo_inference.policy_runner import LatestObservations
from d2ppo_recorder.episode import (
    REAL_ENV_TYPE,
    CommandedActions,
    EpisodeRecorder,
    RecorderStateError,
    RobotJoints,
    make_sample,
    real_env_args,
)

PERIOD = 0.05


def _chunk(stamp, n=1, value=0.1):
    return ActionChunk(stamp=stamp, period=PERIOD, actions=np.full((n, 7), value) + np.arange(n)[:, None] * 0.01)


def test_one_action_teleop_chunk_is_executed_on_arrival():
    acts = CommandedActions(PERIOD)
    acts.submit(_chunk(10.0), now=10.002)
    due = acts.pop_due(10.002)
    assert len(due) == 1 and due[0][0] == 10.0
    assert acts.pop_due(10.1) == []


def test_policy_chunk_actions_fall_due_one_period_apart_and_a_newer_chunk_replaces_the_rest():
    acts = CommandedActions(PERIOD)
    acts.submit(_chunk(10.0, n=4), now=10.01)
    assert [d for d, _ in acts.pop_due(10.01)] == [10.0]
    assert [d for d, _ in acts.pop_due(10.03)] == [10.05]  # within half a period of its time
    acts.submit(_chunk(10.06, n=4, value=0.5), now=10.07)
    due = acts.pop_due(10.07)
    assert [d for d, _ in due] == [10.06] and due[0][1][0] == pytest.approx(0.5)
    assert acts.submit(_chunk(10.06, n=4), now=10.08) == 0  # not newer: ignored


def test_late_actions_are_dropped_like_the_executor_does():
    acts = CommandedActions(PERIOD)
    acts.submit(_chunk(10.0, n=4), now=10.12)
    assert [d for d, _ in acts.pop_due(10.12)] == [10.1]  # 10.0 and 10.05 are more than a period late
    assert acts.dropped == 2


def _inputs(now, cams=("agentview",), image_shape=(40, 50)):
    inputs = LatestObservations(cams)
    for c in cams:
        inputs.set_image(c, now - 0.03, np.full((*image_shape, 3), 77, np.uint8))
    inputs.set_ee_pose(now - 0.01, [0.5, 0.1, 0.3], [1.0, 0.0, 0.0, 0.0])
    inputs.set_fingers(now - 0.01, 0.03, 0.03)
    joints = RobotJoints()
    joints.set(now - 0.01, np.arange(7) * 0.1)
    return inputs, joints


def test_sample_uses_robomimic_names_resized_images_and_keeps_input_stamps():
    inputs, joints = _inputs(100.0)
    obs, reason = make_sample(inputs, joints, due=99.99, now=100.0, max_obs_age=0.2, image_size=16)
    assert reason == ""
    assert obs["agentview_image"].shape == (16, 16, 3) and obs["agentview_image"].dtype == np.uint8
    np.testing.assert_allclose(obs["robot0_eef_pos"], [0.5, 0.1, 0.3])
    np.testing.assert_allclose(obs["robot0_eef_quat"], [1, 0, 0, 0])
    np.testing.assert_allclose(obs["robot0_gripper_qpos"], [0.03, -0.03])
    np.testing.assert_allclose(obs["robot0_joint_pos"], np.arange(7) * 0.1)
    assert obs["timestamp"] == 99.99 and obs["agentview_stamp"] == pytest.approx(99.97)
    assert obs["robot0_eef_stamp"] == pytest.approx(99.99) and obs["robot0_joint_stamp"] == pytest.approx(99.99)
    native, _ = make_sample(inputs, joints, due=99.99, now=100.0, max_obs_age=0.2, image_size=0)
    assert native["agentview_image"].shape == (40, 50, 3)


def test_sample_is_skipped_when_an_input_is_missing_or_stale():
    inputs, joints = _inputs(100.0)
    _, reason = make_sample(inputs, joints, due=100.5, now=100.5, max_obs_age=0.2, image_size=16)
    assert reason.startswith("stale cameras/agentview/image_raw")
    _, reason = make_sample(LatestObservations(["agentview"]), RobotJoints(), 1.0, 1.0, 0.2, 16)
    assert reason.startswith("missing") and "robot/joint_states" in reason


def test_episodes_become_demos_that_sequence_dataset_reads(tmp_path):
    path = tmp_path / "demos.hdf5"
    env_args = real_env_args("Lift", ["agentview"], 16, 20.0, robot_ip="172.16.0.2")
    rec = EpisodeRecorder(RobomimicWriter(path, env_args), min_steps=3)
    for episode, n in enumerate((12, 9)):
        rec.start()
        for t in range(n):
            inputs, joints = _inputs(100.0 + t * PERIOD)
            obs, _ = make_sample(inputs, joints, 100.0 + t * PERIOD, 100.0 + t * PERIOD, 0.2, 16)
            rec.add(obs, np.full(7, 0.1 * episode))
        assert rec.stop({"operator": "test"}) == f"demo_{episode}"
    assert list_demos(path) == ["demo_0", "demo_1"]
    assert sorted(list_demos(path, "train") + list_demos(path, "valid")) == ["demo_0", "demo_1"]
    demo = read_demo(path, "demo_1")
    assert len(demo) == 9 and demo.attrs["operator"] == "test" and demo.rewards[-1] == 1 and demo.dones[-1] == 1
    np.testing.assert_allclose(demo.actions, 0.1)
    args = read_env_args(path)
    assert args == json.loads(json.dumps(env_args)) and args["type"] == REAL_ENV_TYPE
    ds = SequenceDataset(path, ObsSpec(camera_names=("agentview",), image_size=16, n_obs_steps=2), horizon=4)
    assert len(ds) == 21 and ds[0]["rgb"].shape == (2, 1, 3, 16, 16) and ds[0]["actions"].shape == (4, 7)


def test_recorder_refuses_out_of_order_commands_and_short_episodes(tmp_path):
    rec = EpisodeRecorder(RobomimicWriter(tmp_path / "d.hdf5", real_env_args("Lift", [], 0, 20.0)), min_steps=2)
    with pytest.raises(RecorderStateError, match="not recording"):
        rec.stop()
    with pytest.raises(RecorderStateError, match="not recording"):
        rec.discard()
    rec.start()
    with pytest.raises(RecorderStateError, match="already recording"):
        rec.start()
    inputs, joints = _inputs(1.0, cams=())
    obs, _ = make_sample(inputs, joints, 1.0, 1.0, 0.2, 0)
    rec.add(obs, np.zeros(7))
    with pytest.raises(RecorderStateError, match="min_steps=2"):
        rec.stop()
    assert rec.recording and rec.discard() == 1 and not rec.recording
    rec.add(obs, np.zeros(7))  # idle: nothing is buffered
    assert rec.steps == 0


@pytest.mark.timeout(120)
def test_policy_trained_on_recorded_demos_runs_on_a_recorded_observation(tmp_path):
    """Record -> ``python -m d2ppo.train --data <file>`` unchanged -> the package's own builder and sampler."""
    from d2ppo.package import load_policy
    from d2ppo.train import main as train_main

    path = tmp_path / "demos.hdf5"
    rec = EpisodeRecorder(RobomimicWriter(path, real_env_args("Lift", ["agentview"], 16, 20.0)), valid_fraction=0)
    samples = []
    for _ in range(2):
        rec.start()
        for t in range(12):
            inputs, joints = _inputs(100.0 + t * PERIOD)
            obs, _ = make_sample(inputs, joints, 100.0 + t * PERIOD, 100.0 + t * PERIOD, 0.2, 16)
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
