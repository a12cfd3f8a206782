"""Inference node: camera images + robot state -> /policy/action_chunk. ROS plumbing only.

The policy logic (observation history, replanning, staleness) is ``PolicyRunner``.

Parameters:
  policy (str, required)    policy package folder
  backend (str)             "auto" (ONNX when the package ships policy.onnx, else torch) | "torch" | "onnx"
  rate_hz (float)           control rate; 0 -> the policy card's (20 Hz)
  replan (str)              "chunk" (every act_steps ticks) | "tick" (every tick)
  max_obs_age (float)       seconds; older inputs skip the tick (reported in /diagnostics)
  start_enabled (bool)      publish chunks from the start (sim) or wait for /policy/enable (robot)
  trigger (str)             "frame": tick when every policy camera has a frame newer than the last tick's
                            (the robot: obs->chunk latency = inference + transport; a timer only watches
                            for starvation); "timer": tick at rate_hz on the node clock;
                            "observation": tick once per complete observation set sharing one
                            stamp, as the lock-step sim publishes them, so no tick races /clock
  lead (int)                pipelining: plan the next chunk this many actions before the current one runs
                            out; -1 = from the measured obs->chunk latency (see PolicyRunner)
  seam (str)                "replace" | "ensemble" | "inpaint": how a new chunk meets the previous one
                            (the controller must run the same value; inpaint conditions here)
  image_reliability (str)   "best_effort" (matches any camera driver) | "reliable"
  seed (int)                >= 0 seeds torch/numpy so sampled chunks repeat (sim evaluation)
  torch_threads (int)       intra-op threads of the torch sampler; 0 = torch's default (one per core)
  onnx_threads (int), onnx_spin (bool)   ONNX Runtime intra-op threads and busy-waiting
  diagnostics_period (float) seconds of wall time between /diagnostics messages
"""

from __future__ import annotations

import sys
import time
from functools import partial
from pathlib import Path

import rclpy
from d2ppo_control.ros_conversions import chunk_to_msg, diagnostic_status, stamp_to_sec
from d2ppo_control.ros_params import refuse_undeclared_parameters
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped
from rclpy.clock import Clock, ClockType
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image, JointState
from std_srvs.srv import SetBool
from trajectory_msgs.msg import JointTrajectory

from d2ppo_inference.policy_runner import EE_POSE_INPUT, JOINT_STATES_INPUT, PolicyRunner, camera_input
from d2ppo_inference.robot_state import finger_positions
from d2ppo_inference.ros_messages import ee_pose_from_msg, image_to_array

TRIGGERS = ("frame", "timer", "observation")
OK, WARN = 0, 1  # diagnostic_msgs/DiagnosticStatus levels


class InferenceNode(Node):
    def __init__(self):
        super().__init__("inference")
        self.declare_parameter("policy", "")
        self.declare_parameter("backend", "auto")
        self.declare_parameter("rate_hz", 0.0)
        self.declare_parameter("replan", "chunk")
        self.declare_parameter("max_obs_age", 0.2)
        self.declare_parameter("start_enabled", True)
        self.declare_parameter("trigger", "timer")
        self.declare_parameter("lead", 0)
        self.declare_parameter("seam", "replace")
        self.declare_parameter("image_reliability", "best_effort")
        self.declare_parameter("seed", -1)
        # One thread by default: on the 2-core dev machine under load, 2 threads made a 64-wide policy's
        # sample take 76 ms p50 / 293 ms p90 (OpenMP threads spinning against other processes) vs
        # 1.4 ms / 23 ms with one; the paper-size policy 392 ms vs 45 ms p50.
        self.declare_parameter("torch_threads", 1)
        # ONNX Runtime: intra-op threads and whether idle workers busy-wait. One thread without spinning keeps
        # the other core free for the camera / sim process (measured on 2 loaded cores: 4.4 ms p50 with one
        # thread vs 6.2 ms with two spinning); raise it on a robot PC with cores to spare.
        self.declare_parameter("onnx_threads", 1)
        self.declare_parameter("onnx_spin", False)
        self.declare_parameter("diagnostics_period", 1.0)
        refuse_undeclared_parameters(self)  # before importing torch and loading the policy
        param = lambda name: self.get_parameter(name).value  # noqa: E731

        policy_path = param("policy")
        if not policy_path:
            raise ValueError("parameter 'policy' (path to a policy package folder) is required")
        self.trigger = param("trigger")
        if self.trigger not in TRIGGERS:
            raise ValueError(f"parameter 'trigger' must be one of {TRIGGERS}, got {self.trigger!r}")
        if param("seed") >= 0:
            _seed_everything(int(param("seed")))
        if param("torch_threads") > 0:
            import torch

            torch.set_num_threads(int(param("torch_threads")))

        from d2ppo.package import load_policy

        self.policy_path = policy_path
        policy = load_policy(policy_path)
        rate_hz = param("rate_hz") or float(policy.control_rate_hz)
        backend = param("backend")
        if backend == "auto":
            backend = "onnx" if (Path(policy_path) / "policy.onnx").is_file() else "torch"
        if self.trigger == "frame" and not policy.spec.camera_names:
            raise ValueError(f"trigger 'frame' needs a policy with cameras; {policy_path} has none (use 'timer')")
        self.runner = PolicyRunner(
            policy,
            backend=backend,
            replan=param("replan"),
            max_obs_age=param("max_obs_age"),
            period=1.0 / rate_hz,
            lead=int(param("lead")),
            seam=param("seam"),
            sampler_options={"threads": int(param("onnx_threads")), "spin": bool(param("onnx_spin"))}
            if backend == "onnx"
            else None,
        )
        self._frames_used: dict[str, float] = {}  # camera -> stamp of the frame the last tick used
        self._last_tick_wall: float | None = None
        self.starved_checks = 0
        self.obs = self.runner.observation_inputs()
        self.enabled = bool(param("start_enabled"))
        self._last_sync_stamp: float | None = None
        self._last_skip_kind = ""

        reliability = {"best_effort": ReliabilityPolicy.BEST_EFFORT, "reliable": ReliabilityPolicy.RELIABLE}
        image_qos = QoSProfile(depth=1, reliability=reliability[param("image_reliability")])
        self._subs = [
            self.create_subscription(Image, camera_input(cam), partial(self._on_image, cam), image_qos)
            for cam in policy.spec.camera_names
        ]
        self._subs.append(self.create_subscription(JointState, JOINT_STATES_INPUT, self._on_joint_states, 5))
        self._subs.append(self.create_subscription(PoseStamped, EE_POSE_INPUT, self._on_ee_pose, 5))
        self.chunk_pub = self.create_publisher(JointTrajectory, "policy/action_chunk", 10)
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_service(SetBool, "policy/enable", self._on_enable)
        if self.trigger == "timer":
            self.create_timer(self.runner.period, self._on_timer)  # node clock: sim time if use_sim_time
        elif self.trigger == "frame":
            # frames drive the ticks; this timer only notices when they stop coming
            self.create_timer(self.runner.period, self._watch_starvation, clock=Clock(clock_type=ClockType.STEADY_TIME))
        # Diagnostics on wall time, so they keep flowing when sim time or the inputs stall.
        self.create_timer(
            param("diagnostics_period"), self._publish_diagnostics, clock=Clock(clock_type=ClockType.STEADY_TIME)
        )
        self.get_logger().info(
            f"policy {policy_path} (task {policy.task}, cameras {list(policy.spec.camera_names)}), "
            f"{rate_hz:g} Hz, replan={self.runner.replan}, trigger={self.trigger}, backend={self.runner.backend}, "
            f"enabled={self.enabled}"
        )

    # --- inputs -----------------------------------------------------------------------------
    def _on_image(self, camera: str, msg: Image) -> None:
        try:
            image = image_to_array(msg)
        except ValueError as e:
            self.get_logger().warn(f"{camera_input(camera)}: {e}", throttle_duration_sec=5.0)
            return
        self.obs.set_image(camera, stamp_to_sec(msg.header.stamp), image, msg.header.stamp)
        if self.trigger == "frame":
            self._on_frame()
        else:
            self._on_observation()

    def _on_joint_states(self, msg: JointState) -> None:
        fingers = finger_positions(msg.name, msg.position)
        if fingers is None:
            self.get_logger().warn("joint_states without panda_finger_joint1/2", throttle_duration_sec=5.0)
            return
        self.obs.set_fingers(stamp_to_sec(msg.header.stamp), *fingers, raw_stamp=msg.header.stamp)
        self._on_observation()

    def _on_ee_pose(self, msg: PoseStamped) -> None:
        self.obs.set_ee_pose(stamp_to_sec(msg.header.stamp), *ee_pose_from_msg(msg), raw_stamp=msg.header.stamp)
        self._on_observation()

    def _on_observation(self) -> None:
        if self.trigger != "observation":
            return
        stamp = self.obs.synchronized_stamp()
        if stamp is None or (self._last_sync_stamp is not None and stamp <= self._last_sync_stamp):
            return  # incomplete set, or a republished one already handled
        self._last_sync_stamp = stamp
        self._tick(now=stamp)

    def _on_timer(self) -> None:
        self._tick(now=self.get_clock().now().nanoseconds * 1e-9)

    def _on_frame(self) -> None:
        """Frame trigger: tick once every policy camera has a frame newer than the ones the last tick used."""
        frames = self.obs.camera_stamps()
        if len(frames) < len(self.obs.camera_names):
            return
        if any(frames[c] <= self._frames_used.get(c, -float("inf")) for c in frames):
            return
        self._frames_used = frames
        self._last_tick_wall = time.monotonic()
        self._tick(now=self.get_clock().now().nanoseconds * 1e-9)

    def _watch_starvation(self) -> None:
        """Frame trigger: count control periods in which no frame set arrived (reported in /diagnostics)."""
        if not self.enabled or self._last_tick_wall is None:
            return
        if time.monotonic() - self._last_tick_wall > 2.0 * self.runner.period:
            self.starved_checks += 1

    # --- control tick -------------------------------------------------------------------------
    def _tick(self, now: float) -> None:
        if not self.enabled:
            return
        result = self.runner.tick(self.obs, now)
        if result.chunk is not None:
            # the chunk carries its frame's stamp exactly (integer Time end to end, no float round trip)
            self.chunk_pub.publish(chunk_to_msg(result.chunk, frame_id="policy", stamp=result.stamp_msg))
        kind = result.skip_reason.split(" ", 1)[0] if result.skip_reason else ""
        if kind and kind != self._last_skip_kind:
            # The first skip of a kind ("missing", "stale") is reported at once; repeats go out with
            # the periodic status, so a stalled camera does not flood the log at 20 Hz.
            self.get_logger().warn(f"skipped tick: {result.skip_reason}")
            self._last_skip_kind = kind
            self._publish_diagnostics()
        self._last_skip_kind = kind

    def _on_enable(self, request: SetBool.Request, response: SetBool.Response) -> SetBool.Response:
        if request.data and not self.enabled:
            self.runner.reset()  # the history from before the pause is stale
        self.enabled = bool(request.data)
        response.success = True
        response.message = "enabled" if self.enabled else "disabled"
        self.get_logger().info(f"policy {response.message}")
        self._publish_diagnostics()
        return response

    def _publish_diagnostics(self) -> None:
        stats = self.runner.stats()
        if not self.enabled:
            level, message = OK, "disabled"
        elif self._last_skip_kind:
            level, message = WARN, f"skipping ticks: {stats['last_skip_reason']}"
        elif stats["chunks"] == 0:
            level, message = WARN, "waiting for observations"
        else:
            level, message = OK, "publishing chunks"
        values = {"enabled": self.enabled, "trigger": self.trigger, "policy": self.policy_path, **stats}
        if self.trigger == "frame":
            values["starved_periods"] = self.starved_checks
        msg = DiagnosticArray()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.status = [diagnostic_status(f"{self.get_name()}: policy", level, message, values)]
        self.diag_pub.publish(msg)


def _seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    np.random.seed(seed)
    torch.manual_seed(seed)


def main(args: list[str] | None = None) -> None:
    rclpy.init(args=args if args is not None else sys.argv)
    node = None
    try:
        node = InferenceNode()
        rclpy.spin(node)
    except ValueError as e:  # bad parameters or an invalid policy package (PolicyPackageError)
        print(f"inference: {e}", file=sys.stderr)
        sys.exit(2)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()


if __name__ == "__main__":
    main()
