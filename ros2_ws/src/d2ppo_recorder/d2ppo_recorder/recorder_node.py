"""Recorder node: cameras + robot state + executed actions -> robomimic HDF5 demos. ROS plumbing only.

Services (std_srvs/Trigger): ``~/start`` begins an episode, ``~/stop`` saves it as the next demo
(durable on return), ``~/discard`` drops it. See :mod:`d2ppo_recorder.episode` for what one sample is.

Parameters (launch/recorder.yaml):
  output (str, required)   HDF5 file; demos are appended to it
  append (bool)            false: start a new file, replacing an existing one
  task (str)               env_name = Real<robot_model><task>, e.g. RealPandaLift
  robot_model (str)        "Panda" | "FR3"
  robot_ip (str)           stored in env_args for provenance
  camera_names (str[])     cameras to record (the policy's camera names)
  image_size (int)         square size images are stored at (the policy's, 96); 0 = native size
  control_rate_hz (float)  the controller's rate (period of multi-action chunks)
  late_tolerance (float)   s an action may be overdue and still count as executed; <= 0: one period
                           (set it like the franka node's late_tolerance)
  max_obs_age (float)      s; a sample whose input is older is skipped and counted
  min_steps (int)          shorter episodes are not saved
  valid_fraction (float)   train/valid mask split rewritten after each save
  image_reliability (str)  "best_effort" | "reliable"
  diagnostics_period (float) s of wall time between /diagnostics messages
"""

from __future__ import annotations

import datetime
import sys
from functools import partial

import rclpy
from d2ppo_control.ros_conversions import ChunkMessageError, chunk_from_msg, diagnostic_status, stamp_to_sec
from d2ppo_inference.policy_runner import LatestObservations, camera_input
from d2ppo_inference.robot_state import ARM_JOINT_NAMES, finger_positions
from d2ppo_inference.ros_messages import ee_pose_from_msg, image_to_array
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.clock import Clock, ClockType
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image, JointState
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from d2ppo_recorder.episode import (
    CommandedActions,
    EpisodeRecorder,
    RecorderStateError,
    RobotJoints,
    make_sample,
    real_env_args,
)


class RecorderNode(Node):
    def __init__(self):
        super().__init__("recorder")
        flexible = ParameterDescriptor(dynamic_typing=True)
        self.declare_parameter("output", "")
        self.declare_parameter("append", True)
        self.declare_parameter("task", "Lift")
        self.declare_parameter("robot_model", "Panda")
        self.declare_parameter("robot_ip", "")
        self.declare_parameter("camera_names", None, flexible)
        self.declare_parameter("image_size", 96)
        self.declare_parameter("control_rate_hz", 20.0)
        self.declare_parameter("late_tolerance", -1.0)
        self.declare_parameter("max_obs_age", 0.2)
        self.declare_parameter("min_steps", 1)
        self.declare_parameter("valid_fraction", 0.1)
        self.declare_parameter("image_reliability", "best_effort")
        self.declare_parameter("diagnostics_period", 1.0)
        param = lambda name: self.get_parameter(name).value  # noqa: E731

        output = param("output")
        if not output:
            raise ValueError("parameter 'output' (the HDF5 file to record into) is required")
        cameras = [str(c) for c in (param("camera_names") or [])]
        self.period = 1.0 / float(param("control_rate_hz"))
        self.image_size = int(param("image_size"))
        self.max_obs_age = float(param("max_obs_age"))
        self.task = param("task")

        from d2ppo.data.robomimic_hdf5 import RobomimicWriter

        env_args = real_env_args(self.task, cameras, self.image_size, 1.0 / self.period,
                                 robot_ip=param("robot_ip"), robot_model=param("robot_model"))
        self.output = output
        self.episodes = EpisodeRecorder(RobomimicWriter(output, env_args, append=param("append")),
                                        min_steps=param("min_steps"), valid_fraction=param("valid_fraction"))
        self.inputs = LatestObservations(cameras)
        self.joints = RobotJoints()
        late = float(param("late_tolerance"))
        self.actions = CommandedActions(self.period, late_tolerance=late if late > 0 else None)
        self.bad_chunks = 0

        reliability = {"best_effort": ReliabilityPolicy.BEST_EFFORT, "reliable": ReliabilityPolicy.RELIABLE}
        image_qos = QoSProfile(depth=1, reliability=reliability[param("image_reliability")])
        for cam in cameras:
            self.create_subscription(Image, camera_input(cam), partial(self._on_image, cam), image_qos)
        self.create_subscription(JointState, "robot/joint_states", self._on_joint_states, 5)
        self.create_subscription(PoseStamped, "robot/ee_pose", self._on_ee_pose, 5)
        self.create_subscription(JointTrajectory, "policy/action_chunk", self._on_chunk, 10)
        self.create_service(Trigger, "~/start", self._on_start)
        self.create_service(Trigger, "~/stop", self._on_stop)
        self.create_service(Trigger, "~/discard", self._on_discard)
        # Later actions of multi-action (policy) chunks fall due between chunk arrivals.
        self.create_timer(0.5 * self.period, self._record_due)
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_timer(param("diagnostics_period"), self._publish_diagnostics,
                          clock=Clock(clock_type=ClockType.STEADY_TIME))
        self.get_logger().info(
            f"recording {env_args['env_name']} into {output} (cameras {cameras}, images "
            f"{self.image_size or 'native'}px); call {self.get_fully_qualified_name()}/start"
        )

    # --- inputs -----------------------------------------------------------------------------------------
    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _on_image(self, camera: str, msg: Image) -> None:
        try:
            image = image_to_array(msg)
        except ValueError as e:
            self.get_logger().warn(f"{camera_input(camera)}: {e}", throttle_duration_sec=5.0)
            return
        self.inputs.set_image(camera, stamp_to_sec(msg.header.stamp), image)

    def _on_joint_states(self, msg: JointState) -> None:
        stamp = stamp_to_sec(msg.header.stamp)
        fingers = finger_positions(msg.name, msg.position)
        if fingers is not None:
            self.inputs.set_fingers(stamp, *fingers)
        names = list(msg.name)
        if all(n in names for n in ARM_JOINT_NAMES):
            self.joints.set(stamp, [msg.position[names.index(n)] for n in ARM_JOINT_NAMES])

    def _on_ee_pose(self, msg: PoseStamped) -> None:
        self.inputs.set_ee_pose(stamp_to_sec(msg.header.stamp), *ee_pose_from_msg(msg))

    def _on_chunk(self, msg: JointTrajectory) -> None:
        try:
            chunk = chunk_from_msg(msg, default_period=self.period)
        except (ChunkMessageError, ValueError) as e:
            self.bad_chunks += 1
            self.get_logger().warn(f"ignored action chunk: {e}", throttle_duration_sec=5.0)
            return
        self.actions.submit(chunk, self._now())
        self._record_due()

    def _record_due(self) -> None:
        now = self._now()
        for due, action in self.actions.pop_due(now):
            if not self.episodes.recording:
                continue
            obs, reason = make_sample(self.inputs, self.joints, due, now, self.max_obs_age, self.image_size)
            if obs is None:
                self.episodes.skip(reason)
                self.get_logger().warn(f"sample skipped: {reason}", throttle_duration_sec=2.0)
            else:
                self.episodes.add(obs, action)

    # --- services -----------------------------------------------------------------------------------------
    def _on_start(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        def start() -> str:
            self.episodes.start()
            return f"recording demo_{len(self.episodes.writer)}"

        return self._run(response, start)

    def _on_stop(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        def stop() -> str:
            steps = self.episodes.steps
            attrs = {
                "recorded_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "control_rate_hz": 1.0 / self.period,
                "skipped_samples": int(sum(self.episodes.skipped.values())),
            }
            name = self.episodes.stop(attrs)
            self.episodes.skipped.clear()
            return f"saved {name} ({steps} steps) to {self.output}"

        return self._run(response, stop)

    def _on_discard(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        return self._run(response, lambda: f"discarded {self.episodes.discard()} steps")

    def _run(self, response: Trigger.Response, action) -> Trigger.Response:
        try:
            response.message = action()
            response.success = True
            self.get_logger().info(response.message)
        except RecorderStateError as e:
            response.success, response.message = False, str(e)
            self.get_logger().warn(response.message)
        self._publish_diagnostics()
        return response

    def _publish_diagnostics(self) -> None:
        values = {
            "output": self.output,
            "recording": self.episodes.recording,
            "steps": self.episodes.steps,
            "demos_saved_this_run": len(self.episodes.saved),
            "demos_in_file": len(self.episodes.writer),
            "bad_chunks": self.bad_chunks,
            "actions_dropped_late": self.actions.dropped,
            **{f"skipped_{k}": v for k, v in self.episodes.skipped.items()},
        }
        skipped = sum(self.episodes.skipped.values())
        level = 1 if skipped else 0
        text = ("recording" if self.episodes.recording else "idle") + (f", {skipped} samples skipped" if skipped else "")
        msg = DiagnosticArray()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.status = [diagnostic_status(f"{self.get_name()}: recorder", level, text, values)]
        self.diag_pub.publish(msg)


def main(args: list[str] | None = None) -> None:
    rclpy.init(args=args if args is not None else sys.argv)
    node = None
    try:
        node = RecorderNode()
        rclpy.spin(node)
    except ValueError as e:  # bad parameters
        print(f"recorder: {e}", file=sys.stderr)
        sys.exit(2)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            if node.episodes.recording:
                node.get_logger().warn(f"shutting down: episode in progress ({node.episodes.steps} steps) not saved")
            node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()


if __name__ == "__main__":
    main()
