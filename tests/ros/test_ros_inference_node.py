"""The inference node as a separate process over real DDS: this test publishes camera images and
robot state like the drivers do and checks the action chunks, /diagnostics and /policy/enable."""

from __future__ import annotations

import time

import numpy as np
import pytest
from d2ppo_bringup.graph import NodeSpec

pytestmark = [pytest.mark.ros, pytest.mark.timeout(120)]


def inference_spec(policy, **params) -> NodeSpec:
    return NodeSpec(
        package="d2ppo_inference",
        executable="inference_node",
        module="d2ppo_inference.inference_node",
        name="inference",
        params={"policy": str(policy), "image_reliability": "reliable", **params},
    )


class Driver:
    """Publishes what the camera node and franka node publish; collects chunks and diagnostics."""

    def __init__(self, node):
        from d2ppo_control.ros_conversions import chunk_from_msg
        from diagnostic_msgs.msg import DiagnosticArray
        from geometry_msgs.msg import PoseStamped
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image, JointState
        from trajectory_msgs.msg import JointTrajectory

        self.node = node
        self.image_pub = node.create_publisher(
            Image, "cameras/agentview/image_raw", QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)
        )
        self.joint_pub = node.create_publisher(JointState, "robot/joint_states", 5)
        self.ee_pub = node.create_publisher(PoseStamped, "robot/ee_pose", 5)
        self.chunk_msgs: list = []
        self.diagnostics: list = []
        self.chunk_from_msg = chunk_from_msg
        node.create_subscription(JointTrajectory, "policy/action_chunk", self.chunk_msgs.append, 10)
        node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 10)
        self.image = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)

    def _on_diag(self, msg):
        self.diagnostics.extend(s for s in msg.status if s.name.endswith("policy"))

    def wait_matched(self, timeout: float = 60.0) -> None:
        ok = self.node.spin_until(
            lambda: (
                self.node.count_subscribers("robot/ee_pose") > 0
                and self.node.count_publishers("policy/action_chunk") > 0
            ),
            timeout,
        )
        assert ok, "inference node did not come up"

    def now(self) -> float:
        return self.node.get_clock().now().nanoseconds * 1e-9

    def publish(self, state_stamp: float, image_stamp: float) -> None:
        from d2ppo_inference.ros_messages import ee_pose_msg, image_msg, joint_state_msg

        self.image_pub.publish(image_msg(self.image, image_stamp, "agentview_color_optical_frame"))
        self.joint_pub.publish(joint_state_msg(np.zeros(7), (0.02, 0.02), state_stamp))
        self.ee_pub.publish(ee_pose_msg([0.45, 0.0, 0.1], [1.0, 0.0, 0.0, 0.0], state_stamp))

    def stream(self, seconds: float, rate_hz: float = 30.0) -> list[float]:
        """Publish fresh observations (image 5 ms newer than the state) for ``seconds``; returns all stamps."""
        stamps = []
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            t = self.now()
            self.publish(t, t + 0.005)
            stamps += [t, t + 0.005]
            self.node.spin_for(1.0 / rate_hz)
        return stamps

    def values(self, status) -> dict[str, str]:
        return {kv.key: kv.value for kv in status.values}


@pytest.fixture
def driver(test_node):
    return Driver(test_node)


def test_publishes_stamped_chunks_from_images_and_state(start_node, driver, tiny_policy):
    node = start_node(inference_spec(tiny_policy, max_obs_age=1.0))
    driver.wait_matched()
    stamps = driver.stream(2.0)
    driver.node.spin_until(lambda: len(driver.chunk_msgs) >= 2, 10.0)
    assert len(driver.chunk_msgs) >= 2, "\n".join(node.lines[-20:])
    for msg in driver.chunk_msgs:
        assert list(msg.joint_names) == ["x", "y", "z", "roll", "pitch", "yaw", "gripper"]
        assert len(msg.points) == 4 and all(len(p.positions) == 7 for p in msg.points)
        chunk = driver.chunk_from_msg(msg)
        assert chunk.period == pytest.approx(0.05)
        assert np.all(np.abs(chunk.actions) <= 1.0)
        # Stamped with the newest observation the node had: an image or a state stamp that was sent.
        assert min(abs(chunk.stamp - s) for s in stamps) < 1e-6

    # One observation set, then nothing: the next chunk carries exactly that set's newest stamp.
    driver.chunk_msgs.clear()
    driver.node.spin_for(1.5)  # let the previous stream go stale... and the runner restart its history
    driver.chunk_msgs.clear()
    t = driver.now()
    driver.publish(t, t + 0.01)
    assert driver.node.spin_until(lambda: driver.chunk_msgs, 10.0), "no chunk for a single fresh observation"
    assert driver.chunk_from_msg(driver.chunk_msgs[0]).stamp == pytest.approx(t + 0.01, abs=1e-6)


def test_stale_observations_skip_ticks_visibly_in_diagnostics(start_node, driver, tiny_policy):
    start_node(inference_spec(tiny_policy, max_obs_age=0.15, diagnostics_period=0.2))
    driver.wait_matched()
    driver.stream(1.0)
    assert driver.node.spin_until(lambda: driver.chunk_msgs, 10.0)
    driver.diagnostics.clear()
    # Stop publishing: observations age past max_obs_age and ticks are skipped.
    assert driver.node.spin_until(lambda: any("stale" in s.message for s in driver.diagnostics), 5.0), [
        s.message for s in driver.diagnostics
    ]
    status = next(s for s in driver.diagnostics if "stale" in s.message)
    values = driver.values(status)
    assert status.level == b"\x01"  # WARN
    assert int(values["skipped_ticks"]) > 0 and values["last_skip_reason"].startswith("stale")
    assert float(values["inference_p50_ms"]) > 0.0 and "inference_p99_ms" in values
    n_chunks = len(driver.chunk_msgs)
    driver.node.spin_for(0.5)
    assert len(driver.chunk_msgs) == n_chunks, "published chunks from stale observations"


def test_disabling_the_policy_stops_chunks_until_reenabled(start_node, driver, tiny_policy):
    from std_srvs.srv import SetBool

    start_node(inference_spec(tiny_policy, max_obs_age=1.0))
    driver.wait_matched()
    client = driver.node.create_client(SetBool, "policy/enable")
    assert client.wait_for_service(timeout_sec=10.0)

    def call(enable: bool):
        future = client.call_async(SetBool.Request(data=enable))
        assert driver.node.spin_until(future.done, 10.0)
        assert future.result().success

    driver.stream(1.0)
    assert driver.node.spin_until(lambda: driver.chunk_msgs, 10.0)
    call(False)
    driver.node.spin_for(0.3)  # a chunk already in flight may still arrive
    driver.chunk_msgs.clear()
    driver.stream(1.5)
    assert driver.chunk_msgs == [], "published while disabled"
    call(True)
    driver.stream(1.0)
    assert driver.node.spin_until(lambda: driver.chunk_msgs, 10.0), "no chunks after re-enabling"
