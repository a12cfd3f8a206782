"""Recorder node: cameras + robot state + the controller's executed actions -> robomimic HDF5 demos. ROS
plumbing only.

Subscribes to the camera images, ``robot/joint_states``, ``robot/ee_pose`` and ``controller/executed`` (the
actions the franka or sim node sent to the arm; one sample each, see :mod:`d2ppo_recorder.episode`).

Services (std_srvs/Trigger): ``~/start`` begins an episode, ``~/stop`` saves it as the next demo
(durable on return), ``~/discard`` drops it.

Failures never take the node down: a save that fails (disk full, permissions, ...) answers ``~/stop`` with
success=false and the reason, leaves the file with exactly the demos it had (each save writes a new file
version and renames it over the output, see :mod:`d2ppo_recorder.demo_file`), and shows as ERROR in
``/diagnostics`` (``write_errors``, ``last_write_error``) until a save succeeds. The failed episode's samples
are kept: ``~/stop`` again retries the save once the cause is fixed; ``~/discard`` or ``~/start`` drops them.

Parameters (launch/recorder.yaml):
  output (str, required)   HDF5 file; demos are appended to it
  append (bool)            false: start a new file, replacing an existing one
  task (str)               env_name = Real<robot_model><task>, e.g. RealPandaLift
  robot_model (str)        "Panda" | "FR3"
  robot_ip (str)           stored in env_args for provenance
  camera_names (str[])     cameras to record (the policy's camera names)
  image_size (int)         square size images are stored at (the policy's, 96); 0 = native size
  control_rate_hz (float)  the controller's rate (stored in env_args as control_freq)
  max_obs_age (float)      s; a sample whose newest input at the action's time is older is skipped and counted
  min_steps (int)          shorter episodes are not saved
  valid_fraction (float)   train/valid mask split rewritten after each save
  image_reliability (str)  "best_effort" | "reliable"
  diagnostics_period (float) s of wall time between /diagnostics messages
"""

from __future__ import annotations

import datetime
import sys
from functools import partial, wraps

import rclpy
from d2ppo_control.ros_conversions import ChunkMessageError, diagnostic_status, executed_from_msg, stamp_to_sec
from d2ppo_control.ros_params import refuse_undeclared_parameters
from d2ppo_inference.policy_runner import camera_input
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

from d2ppo_recorder.demo_file import DemoFile, DemoWriteError
from d2ppo_recorder.episode import EpisodeRecorder, InputHistory, RecorderStateError, make_sample, real_env_args

#: Seconds of input history kept beyond max_obs_age: how late an executed message may reach the recorder and
#: still be paired with the inputs of its time.
HISTORY_MARGIN_S = 1.0


def _guarded(callback):
    """Run a subscription callback so that an unexpected exception is logged and counted, not fatal (an
    exception escaping a callback ends rclpy.spin, and with it the episode in memory)."""

    @wraps(callback)
    def run(self, *args):
        try:
            callback(self, *args)
        except Exception as e:  # reported in /diagnostics (callback_errors)
            self.callback_errors += 1
            self.get_logger().error(f"{callback.__name__}: {type(e).__name__}: {e}", throttle_duration_sec=5.0)

    return run


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
        self.declare_parameter("max_obs_age", 0.2)
        self.declare_parameter("min_steps", 1)
        self.declare_parameter("valid_fraction", 0.1)
        self.declare_parameter("image_reliability", "best_effort")
        self.declare_parameter("diagnostics_period", 1.0)
        refuse_undeclared_parameters(self)  # before opening the output file
        param = lambda name: self.get_parameter(name).value  # noqa: E731

        output = param("output")
        if not output:
            raise ValueError("parameter 'output' (the HDF5 file to record into) is required")
        cameras = [str(c) for c in (param("camera_names") or [])]
        self.period = 1.0 / float(param("control_rate_hz"))
        self.image_size = int(param("image_size"))
        self.max_obs_age = float(param("max_obs_age"))
        self.task = param("task")

        env_args = real_env_args(
            self.task,
            cameras,
            self.image_size,
            1.0 / self.period,
            robot_ip=param("robot_ip"),
            robot_model=param("robot_model"),
        )
        self.output = output
        demo_file = DemoFile(output, env_args, append=param("append"), valid_fraction=param("valid_fraction"))
        for p in demo_file.removed_temp_files:
            self.get_logger().warning(f"removed {p}, left by an interrupted save")
        self.episodes = EpisodeRecorder(demo_file, min_steps=param("min_steps"))
        self.history = InputHistory(cameras, keep_s=self.max_obs_age + HISTORY_MARGIN_S, image_size=self.image_size)
        self.bad_executed = 0
        self.callback_errors = 0

        reliability = {"best_effort": ReliabilityPolicy.BEST_EFFORT, "reliable": ReliabilityPolicy.RELIABLE}
        image_qos = QoSProfile(depth=1, reliability=reliability[param("image_reliability")])
        for cam in cameras:
            self.create_subscription(Image, camera_input(cam), partial(self._on_image, cam), image_qos)
        self.create_subscription(JointState, "robot/joint_states", self._on_joint_states, 5)
        self.create_subscription(PoseStamped, "robot/ee_pose", self._on_ee_pose, 5)
        self.create_subscription(JointTrajectory, "controller/executed", self._on_executed, 50)
        self.create_service(Trigger, "~/start", self._on_start)
        self.create_service(Trigger, "~/stop", self._on_stop)
        self.create_service(Trigger, "~/discard", self._on_discard)
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_timer(
            param("diagnostics_period"), self._publish_diagnostics, clock=Clock(clock_type=ClockType.STEADY_TIME)
        )
        self.get_logger().info(
            f"recording {env_args['env_name']} into {output} (cameras {cameras}, images "
            f"{self.image_size or 'native'}px); call {self.get_fully_qualified_name()}/start"
        )

    # --- inputs -----------------------------------------------------------------------------------------
    @_guarded
    def _on_image(self, camera: str, msg: Image) -> None:
        try:
            image = image_to_array(msg)
        except ValueError as e:
            self.get_logger().warning(f"{camera_input(camera)}: {e}", throttle_duration_sec=5.0)
            return
        self.history.set_image(camera, stamp_to_sec(msg.header.stamp), image)

    @_guarded
    def _on_joint_states(self, msg: JointState) -> None:
        stamp = stamp_to_sec(msg.header.stamp)
        fingers = finger_positions(msg.name, msg.position)
        if fingers is not None:
            self.history.set_fingers(stamp, *fingers)
        names = list(msg.name)
        if all(n in names for n in ARM_JOINT_NAMES):
            self.history.set_arm_joints(stamp, [msg.position[names.index(n)] for n in ARM_JOINT_NAMES])

    @_guarded
    def _on_ee_pose(self, msg: PoseStamped) -> None:
        self.history.set_ee_pose(stamp_to_sec(msg.header.stamp), *ee_pose_from_msg(msg))

    @_guarded
    def _on_executed(self, msg: JointTrajectory) -> None:
        try:
            stamp, action, source = executed_from_msg(msg)
        except (ChunkMessageError, ValueError) as e:
            self.bad_executed += 1
            self.get_logger().warning(f"ignored controller/executed message: {e}", throttle_duration_sec=5.0)
            return
        if not self.episodes.recording:
            return
        obs, reason = make_sample(self.history, stamp, self.max_obs_age)
        if obs is None:
            self.episodes.skip(reason)
        else:
            reason = self.episodes.add(obs, action, source)
        if reason:
            self.get_logger().warning(f"sample skipped: {reason}", throttle_duration_sec=2.0)

    # --- services -----------------------------------------------------------------------------------------
    def _on_start(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        def start() -> str:
            dropped = self.episodes.start()
            note = f" (dropped the unsaved episode of {dropped} steps)" if dropped else ""
            return f"recording demo_{self.episodes.demo_file.next_index}{note}"

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
            self.get_logger().warning(response.message)
        except DemoWriteError as e:
            response.success, response.message = False, str(e)
            self.get_logger().error(response.message)
        except Exception as e:  # a service must answer, and the node must stay up
            self.callback_errors += 1
            response.success, response.message = False, f"{type(e).__name__}: {e}"
            self.get_logger().error(response.message)
        self._publish_diagnostics()
        return response

    def _publish_diagnostics(self) -> None:
        values = {
            "output": self.output,
            "recording": self.episodes.recording,
            "steps": self.episodes.steps,
            "unsaved_steps": self.episodes.steps if self.episodes.unsaved else 0,
            "demos_saved_this_run": len(self.episodes.saved),
            "demos_in_file": len(self.episodes.demo_file),
            "write_errors": self.episodes.write_errors,
            "last_write_error": self.episodes.last_write_error,
            "bad_executed_messages": self.bad_executed,
            "callback_errors": self.callback_errors,
            **{f"skipped_{k}": v for k, v in self.episodes.skipped.items()},
        }
        skipped = sum(self.episodes.skipped.values())
        text = ("recording" if self.episodes.recording else "idle") + (
            f", {skipped} samples skipped" if skipped else ""
        )
        if self.episodes.last_write_error:
            level, text = 2, f"{text}; the last save failed: {self.episodes.last_write_error}"
        else:
            level = 1 if skipped or self.callback_errors else 0
        msg = DiagnosticArray()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.status = [diagnostic_status(f"{self.get_name()}: recorder", level, text, values)]
        self.diag_pub.publish(msg)


def main(args: list[str] | None = None) -> None:
    rclpy.init(args=args if args is not None else sys.argv)
    node = None
    try:
        try:
            node = RecorderNode()
        except (ValueError, OSError, DemoWriteError) as e:  # bad parameters (DatasetFormatError too), no output
            print(f"recorder: {e}", file=sys.stderr)
            sys.exit(2)
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            if node.episodes.steps:
                node.get_logger().warning(f"shutting down: episode of {node.episodes.steps} steps not saved")
            node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()


if __name__ == "__main__":
    main()
