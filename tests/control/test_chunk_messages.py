"""ActionChunk <-> trajectory_msgs/JointTrajectory and the diagnostics helper (real ROS message types)."""

import numpy as np
import pytest

pytest.importorskip("trajectory_msgs.msg")

from d2ppo_control.chunk import JOINT_NAMES, ActionChunk  # noqa: E402
from d2ppo_control.ros_conversions import (  # noqa: E402
    ChunkMessageError,
    chunk_from_msg,
    chunk_to_msg,
    diagnostic_status,
    diagnostic_values,
    sec_to_stamp,
    stamp_to_sec,
)
from rclpy.serialization import deserialize_message, serialize_message  # noqa: E402
from trajectory_msgs.msg import JointTrajectory  # noqa: E402


def sample_chunk() -> ActionChunk:
    rng = np.random.default_rng(0)
    return ActionChunk(stamp=1732650000.123456789, period=0.05, actions=rng.uniform(-1, 1, (4, 7)))


def test_chunk_round_trips_through_a_serialized_message():
    chunk = sample_chunk()
    msg = chunk_to_msg(chunk, frame_id="panda_link0")
    wire = deserialize_message(serialize_message(msg), JointTrajectory)
    back = chunk_from_msg(wire)
    assert back.stamp == pytest.approx(chunk.stamp, abs=1e-9)
    assert back.period == pytest.approx(0.05, abs=1e-9)
    np.testing.assert_array_equal(back.actions, chunk.actions)  # float64 on the wire: exact


def test_message_layout_follows_the_contract():
    msg = chunk_to_msg(sample_chunk())
    assert tuple(msg.joint_names) == JOINT_NAMES
    assert [p.time_from_start.nanosec for p in msg.points] == [0, 50_000_000, 100_000_000, 150_000_000]
    assert stamp_to_sec(msg.header.stamp) == pytest.approx(1732650000.123456789, abs=1e-9)


def test_wrong_joint_names_are_refused_with_the_expected_names():
    msg = chunk_to_msg(sample_chunk())
    msg.joint_names = ["x", "y", "z", "rx", "ry", "rz", "gripper"]
    with pytest.raises(ChunkMessageError, match="joint_names must be"):
        chunk_from_msg(msg)


def test_non_uniform_spacing_is_refused():
    msg = chunk_to_msg(sample_chunk())
    msg.points[2].time_from_start.nanosec = 120_000_000
    with pytest.raises(ChunkMessageError, match="not uniform"):
        chunk_from_msg(msg)


def test_wrong_position_count_and_empty_chunk_are_refused():
    msg = chunk_to_msg(sample_chunk())
    msg.points[1].positions = [0.0] * 6
    with pytest.raises(ChunkMessageError, match="point 1 has 6 positions"):
        chunk_from_msg(msg)
    msg.points = []
    with pytest.raises(ChunkMessageError, match="no points"):
        chunk_from_msg(msg)


def test_one_point_chunk_needs_a_default_period():
    chunk = ActionChunk(stamp=5.0, period=0.05, actions=np.zeros((1, 7)))
    msg = chunk_to_msg(chunk)
    with pytest.raises(ChunkMessageError, match="period unknown"):
        chunk_from_msg(msg)
    assert chunk_from_msg(msg, default_period=0.05).period == 0.05


def test_nan_passes_conversion_so_the_executor_can_count_it():
    actions = np.zeros((2, 7))
    actions[1, 3] = np.nan
    back = chunk_from_msg(chunk_to_msg(ActionChunk(stamp=1.0, period=0.05, actions=actions)))
    assert not back.is_finite()


def test_first_point_offset_shifts_the_stamp():
    msg = chunk_to_msg(sample_chunk())
    for p in msg.points:
        p.time_from_start.nanosec += 10_000_000
    assert chunk_from_msg(msg).stamp == pytest.approx(1732650000.133456789, abs=1e-9)


def test_sec_to_stamp_round_trip():
    assert stamp_to_sec(sec_to_stamp(12.5)) == 12.5
    assert sec_to_stamp(-1.0).sec == 0


def test_diagnostic_status_carries_level_and_values():
    st = diagnostic_status("franka/executor", 1, "watchdog", {"watchdog_trips": 2, "age": 0.1234567})
    assert st.level == b"\x01" and st.name == "franka/executor"
    assert diagnostic_values(st) == {"watchdog_trips": "2", "age": "0.123457"}
