"""Recording demos through the real node processes: playback camera + scripted teleop + recorder over DDS.

The test process stands in for the arm (publishes /robot/joint_states and /robot/ee_pose) and for the
controller's output side (executes the teleop chunks with the controllers' own ChunkExecutor and
SafetyEnvelope and publishes each action sent on /controller/executed), and listens to what the nodes
publish, so every recorded value can be traced back to a published message.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from d2ppo.data.dataset import SequenceDataset
from d2ppo.data.robomimic_hdf5 import list_demos, read_demo, read_env_args, validate_file
from d2ppo.obs import PROPRIO_KEYS, ObsSpec

pytestmark = [pytest.mark.ros]

CAMERA = "agentview"
IMAGE_SIZE = 32
ARM_JOINTS = [f"panda_joint{i}" for i in range(1, 8)]
FINGERS = ["panda_finger_joint1", "panda_finger_joint2"]


class FakeArmState:
    """Publishes a moving end-effector pose and joint states at 50 Hz and remembers every stamp's values."""

    def __init__(self, test_node, rate_hz: float = 50.0):
        from geometry_msgs.msg import PoseStamped
        from sensor_msgs.msg import JointState

        self.node = test_node.node
        self.pose_pub = self.node.create_publisher(PoseStamped, "/robot/ee_pose", 10)
        self.joint_pub = self.node.create_publisher(JointState, "/robot/joint_states", 10)
        self.published: dict[float, dict] = {}
        self.latest: tuple[np.ndarray, np.ndarray] | None = None  # (pos, quat) last published
        self._k = 0
        self.node.create_timer(1.0 / rate_hz, self._publish)

    def _publish(self) -> None:
        from d2ppo_control.ros_conversions import sec_to_stamp, stamp_to_sec
        from geometry_msgs.msg import PoseStamped
        from sensor_msgs.msg import JointState

        self._k += 1
        stamp = sec_to_stamp(self.node.get_clock().now().nanoseconds * 1e-9)
        t = stamp_to_sec(stamp)
        pos = [0.4 + 1e-4 * self._k, 0.0, 0.3]
        quat = [1.0, 0.0, 0.0, 0.0]
        joints = [0.01 * self._k + i for i in range(7)]
        fingers = [0.02, 0.02]
        pose = PoseStamped()
        pose.header.stamp = stamp
        pose.header.frame_id = "panda_link0"
        pose.pose.position.x, pose.pose.position.y, pose.pose.position.z = pos
        o = pose.pose.orientation
        o.x, o.y, o.z, o.w = quat
        js = JointState()
        js.header.stamp = stamp
        js.name = ARM_JOINTS + FINGERS
        js.position = joints + fingers
        self.pose_pub.publish(pose)
        self.joint_pub.publish(js)
        self.published[t] = {"pos": pos, "quat": quat, "joints": joints, "fingers": fingers}
        self.latest = (np.array(pos), np.array(quat))


class FakeController:
    """The output side of the franka / sim node: chunks from /policy/action_chunk go through the controllers'
    own ``ChunkExecutor`` and ``SafetyEnvelope`` at the control rate, and every action sent to the "arm" is
    published on /controller/executed (``executed_msg``: after the envelope, stamped when sent) and remembered.
    """

    def __init__(self, test_node, arm: FakeArmState, limits=None, period: float = 0.05):
        from d2ppo_control import ChunkExecutor, SafetyEnvelope, SafetyLimits
        from trajectory_msgs.msg import JointTrajectory

        self.node = test_node.node
        self.arm = arm
        self.period = period
        self.executor = ChunkExecutor(SafetyEnvelope(limits or SafetyLimits()), period, late_tolerance=2 * period)
        self.pub = self.node.create_publisher(JointTrajectory, "/controller/executed", 50)
        self.executed: dict[float, tuple[np.ndarray, str]] = {}  # stamp (s) -> (action [7], source)
        self.node.create_subscription(JointTrajectory, "/policy/action_chunk", self._on_chunk, 50)
        self.node.create_timer(period, self._tick)

    def _now(self) -> float:
        from d2ppo_control.ros_conversions import sec_to_stamp, stamp_to_sec

        return stamp_to_sec(sec_to_stamp(self.node.get_clock().now().nanoseconds * 1e-9))

    def _on_chunk(self, msg) -> None:
        from d2ppo_control.ros_conversions import chunk_from_msg

        self.executor.submit(chunk_from_msg(msg, default_period=self.period), self._now())

    def _tick(self) -> None:
        from d2ppo_control.ros_conversions import executed_msg

        if self.arm.latest is None:
            return
        now = self._now()
        cmd = self.executor.tick(now, *self.arm.latest)
        if cmd.is_move:
            self.pub.publish(executed_msg(cmd.action, now, cmd.source))
            self.executed[now] = (np.array(cmd.action), cmd.source)


def _collect(test_node, msg_type, topic, qos=10):
    """Subscribe and return the list the received messages are appended to."""
    got = []
    test_node.node.create_subscription(msg_type, topic, got.append, qos)
    return got


@pytest.mark.timeout(120)
def test_recorded_demos_train_without_conversion_and_trace_back_to_published_messages(
    spawn, test_node, tmp_path, make_playback_file
):
    from d2ppo_control import SafetyLimits
    from d2ppo_control.ros_conversions import stamp_to_sec
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image
    from std_srvs.srv import Trigger
    from trajectory_msgs.msg import JointTrajectory

    playback = tmp_path / "playback.hdf5"
    make_playback_file(playback, CAMERA, n_frames=20)
    out = tmp_path / "demos.hdf5"
    motion = [0.5, 0.0, -0.5, 0.0, 0.0, 0.0]
    script = [{"duration": 0.2, "motion": motion, "toggle_gripper": True}, {"duration": 600.0, "motion": motion}]

    images = _collect(test_node, Image, f"/cameras/{CAMERA}/image_raw",
                      QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE))
    chunks = _collect(test_node, JointTrajectory, "/policy/action_chunk", 50)
    arm = FakeArmState(test_node)
    # A tight step limit, so that every teleop action is clipped: the file must hold what was executed.
    controller = FakeController(test_node, arm, SafetyLimits(max_translation_per_step=0.005))
    spawn("d2ppo_camera.camera_node", {"source": "playback", "camera_names": [CAMERA],
                                       "playback_files": [str(playback)], "fps": 30.0},
          param_files=["launch/cameras.yaml"])
    spawn("d2ppo_teleop.teleop_node", {"source": "scripted", "script": json.dumps(script), "pos_gain": 0.3,
                                       "deadzone": 0.0}, param_files=["launch/teleop.yaml"])
    recorder = spawn("d2ppo_recorder.recorder_node", {"output": str(out), "camera_names": [CAMERA],
                                                       "image_size": IMAGE_SIZE, "task": "Lift",
                                                       "robot_ip": "172.16.0.2", "max_obs_age": 0.5},
                     param_files=["launch/recorder.yaml"])
    assert test_node.spin_until(lambda: len(images) > 5 and len(chunks) > 5 and len(controller.executed) > 5, 40), (
        f"nodes not publishing (images {len(images)}, chunks {len(chunks)}, executed {len(controller.executed)}); "
        f"recorder log:\n{recorder.output()}"
    )

    lengths = []
    for seconds in (2.0, 1.0):
        start = test_node.call(Trigger, "/recorder/start")
        assert start.success, start.message
        test_node.spin_for(seconds)
        stop = test_node.call(Trigger, "/recorder/stop")
        assert stop.success, stop.message
        lengths.append(int(stop.message.split("(")[1].split(" ")[0]))
    idle_discard = test_node.call(Trigger, "/recorder/discard")
    assert not idle_discard.success and "not recording" in idle_discard.message

    # The file is a robomimic file training reads as is.
    validate_file(out, obs_keys=[f"{CAMERA}_image", *PROPRIO_KEYS, "robot0_joint_pos", "timestamp"], action_dim=7)
    assert list_demos(out) == ["demo_0", "demo_1"]
    env_args = read_env_args(out)
    assert env_args["env_name"] == "RealPandaLift" and env_args["type"] == 4
    assert env_args["env_kwargs"]["robot_ip"] == "172.16.0.2" and env_args["env_kwargs"]["control_freq"] == 20.0
    assert list_demos(out, "train") and list_demos(out, "valid")
    spec = ObsSpec(camera_names=(CAMERA,), image_size=IMAGE_SIZE, n_obs_steps=2)
    ds = SequenceDataset(out, spec, horizon=4)
    assert len(ds) == sum(lengths)
    item = ds[len(ds) // 2]
    assert item["rgb"].shape == (2, 1, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert item["state"].shape == (2, 9) and item["actions"].shape == (4, 7)

    published_images = {stamp_to_sec(m.header.stamp): m.data[0] for m in images}
    commanded = [0.15, 0.0, -0.15, 0.0, 0.0, 0.0, 1.0]  # teleop: gain 0.3 x motion, gripper toggled closed
    assert all(np.allclose(m.points[0].positions, commanded) for m in chunks[-5:])
    # What the envelope let through: the step scaled down to 5 mm, direction and gripper kept.
    executed = [np.sqrt(0.5) * 0.1, 0.0, -np.sqrt(0.5) * 0.1, 0.0, 0.0, 0.0, 1.0]
    for name, n in zip(("demo_0", "demo_1"), lengths):
        demo = read_demo(out, name)
        assert len(demo) == n and n >= 10, f"{name}: {n} samples"
        ts = demo.obs["timestamp"]
        assert np.all(np.diff(ts) > 0), "sample times must increase"
        assert 0.03 < np.median(np.diff(ts)) < 0.08, "one sample per 20 Hz executed action"
        # Every sample is an action the controller published on /controller/executed, with its stamp, as sent:
        # the clipped action, not the commanded one.
        for t, action in zip(ts, demo.actions):
            sent, _ = controller.executed[float(t)]
            np.testing.assert_allclose(action, sent, atol=1e-6)
        np.testing.assert_allclose(demo.actions, np.tile(executed, (n, 1)), atol=1e-6)
        # Images: each sample used a frame that was published with that stamp, captured at or before the action
        # was sent, resized, stamps non-decreasing.
        cam_stamps = demo.obs[f"{CAMERA}_stamp"]
        assert np.all(np.diff(cam_stamps) >= 0) and np.all(cam_stamps <= ts)
        assert demo.obs[f"{CAMERA}_image"].shape == (n, IMAGE_SIZE, IMAGE_SIZE, 3)
        for s, img in zip(cam_stamps, demo.obs[f"{CAMERA}_image"]):
            assert float(s) in published_images, "recorded image stamp was never published"
            assert int(img[0, 0, 0]) == published_images[float(s)], "recorded image is not the published frame"
        assert np.all(ts - cam_stamps < 0.5)
        # Robot state: exactly what the arm published with the recorded stamp (at or before the action), in
        # robomimic names.
        assert np.all(demo.obs["robot0_eef_stamp"] <= ts) and np.all(demo.obs["robot0_joint_stamp"] <= ts)
        for i, s in enumerate(demo.obs["robot0_eef_stamp"]):
            sent = arm.published[float(s)]
            np.testing.assert_allclose(demo.obs["robot0_eef_pos"][i], sent["pos"])
            np.testing.assert_allclose(demo.obs["robot0_eef_quat"][i], sent["quat"])
        for i, s in enumerate(demo.obs["robot0_joint_stamp"]):
            sent = arm.published[float(s)]
            np.testing.assert_allclose(demo.obs["robot0_joint_pos"][i], sent["joints"])
            np.testing.assert_allclose(demo.obs["robot0_gripper_qpos"][i], [0.02, -0.02])  # robosuite signs
    assert read_demo(out, "demo_1").obs["timestamp"][0] > read_demo(out, "demo_0").obs["timestamp"][-1]


@pytest.mark.timeout(90)
def test_recorder_killed_mid_episode_leaves_earlier_episodes_readable(spawn, test_node, tmp_path):
    from d2ppo_control.ros_conversions import executed_msg
    from d2ppo_inference.ros_messages import image_msg
    from sensor_msgs.msg import Image
    from std_srvs.srv import Trigger
    from trajectory_msgs.msg import JointTrajectory

    out = tmp_path / "demos.hdf5"
    arm = FakeArmState(test_node)
    image_pub = test_node.node.create_publisher(Image, f"/cameras/{CAMERA}/image_raw", 2)
    executed_pub = test_node.node.create_publisher(JointTrajectory, "/controller/executed", 10)
    frame = np.full((24, 24, 3), 90, np.uint8)

    def publish_inputs():
        now = test_node.node.get_clock().now().nanoseconds * 1e-9
        image_pub.publish(image_msg(frame, now, "cam"))
        executed_pub.publish(executed_msg(np.full(7, 0.1), now, "teleop"))

    test_node.node.create_timer(0.05, publish_inputs)
    recorder = spawn("d2ppo_recorder.recorder_node", {"output": str(out), "camera_names": [CAMERA],
                                                       "image_size": 16, "max_obs_age": 0.5})
    assert test_node.call(Trigger, "/recorder/start").success
    test_node.spin_for(1.0)
    stop = test_node.call(Trigger, "/recorder/stop")
    assert stop.success and "demo_0" in stop.message, stop.message
    assert test_node.call(Trigger, "/recorder/start").success
    test_node.spin_for(0.7)
    recorder.kill()
    assert arm.published  # the fake arm really was publishing

    validate_file(out, obs_keys=[f"{CAMERA}_image", *PROPRIO_KEYS], action_dim=7)
    assert list_demos(out) == ["demo_0"]
    demo = read_demo(out, "demo_0")
    assert len(demo) >= 5 and demo.obs[f"{CAMERA}_image"].shape[1:] == (16, 16, 3)
    np.testing.assert_allclose(demo.actions, 0.1)
