"""Teleop node: SpaceMouse / keyboard / scripted input -> 1-step chunks on ``/policy/action_chunk``. ROS plumbing only.

The controller (franka node or sim node) executes these chunks through the same executor and safety
envelope as a policy's, so teleoperation has no private path to the arm. Publishes every control tick,
with zero motion when there is no input (deadman), which also keeps the controller's watchdog fed.

Parameters (launch/teleop.yaml):
  source (str)            "spacemouse" | "keyboard" | "scripted"
  script (str)            scripted: JSON/YAML segment list, inline or a file path
  rate_hz (float)         control rate (20 Hz, the policies' rate)
  pos_gain, rot_gain (float)  action units per unit deflection (translation / rotation)
  deadzone (float)        device deflection treated as zero
  input_timeout (float)   s; deadman: no input event for this long -> zero motion
  axis_map (int[])        signed 1-based device axis per action axis (see d2ppo_teleop.mapping)
  keyboard_hold_s (float) s each key press holds its axis
  gripper_closed (bool)   initial gripper state
  stamp (str)             "now" (default): publish time on the node clock | "robot_state": newest /robot/*
                          stamp when fresh, else now. A 1-action chunk's action is due at its stamp and
                          the executor drops it once more than late_tolerance (one period) overdue at its
                          next tick; an older robot-state stamp uses up part of that tolerance (measured
                          with franky-sim: dropped actions), so "now" is the default for the real arm.
  diagnostics_period (float) s of wall time between /diagnostics messages
"""

from __future__ import annotations

import sys
import time

import rclpy
from d2ppo_control import ActionChunk
from d2ppo_control.ros_conversions import chunk_to_msg, diagnostic_status, stamp_to_sec
from d2ppo_control.ros_params import refuse_undeclared_parameters
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped
from rclpy.clock import Clock, ClockType
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from sensor_msgs.msg import JointState
from trajectory_msgs.msg import JointTrajectory

from d2ppo_teleop.mapping import GRIPPER_CLOSED, TeleopInput, TeleopMapper, choose_stamp
from d2ppo_teleop.sources import TeleopDeviceError, make_source

STAMP_MODES = ("robot_state", "now")


class TeleopNode(Node):
    def __init__(self):
        super().__init__("teleop")
        self.declare_parameter("source", "spacemouse")
        self.declare_parameter("script", "")
        self.declare_parameter("rate_hz", 20.0)
        self.declare_parameter("pos_gain", 0.3)
        self.declare_parameter("rot_gain", 0.1)
        self.declare_parameter("deadzone", 0.05)
        self.declare_parameter("input_timeout", 0.25)
        self.declare_parameter("axis_map", [1, 2, 3, 4, 5, 6])
        self.declare_parameter("keyboard_hold_s", 0.3)
        self.declare_parameter("gripper_closed", False)
        self.declare_parameter("stamp", "now")
        self.declare_parameter("diagnostics_period", 1.0)
        refuse_undeclared_parameters(self)  # before opening the input device
        param = lambda name: self.get_parameter(name).value  # noqa: E731

        self.stamp_mode = param("stamp")
        if self.stamp_mode not in STAMP_MODES:
            raise ValueError(f"parameter 'stamp' must be one of {STAMP_MODES}, got {self.stamp_mode!r}")
        self.period = 1.0 / float(param("rate_hz"))
        self.mapper = TeleopMapper(
            pos_gain=param("pos_gain"), rot_gain=param("rot_gain"), deadzone=param("deadzone"),
            input_timeout=param("input_timeout"), axis_map=param("axis_map"), gripper_closed=param("gripper_closed"),
        )
        self.source = make_source(param("source"), param("script"), param("keyboard_hold_s"))
        self._state_stamp: float | None = None
        self._last_stamp: float | None = None
        self.stats = {"chunks": 0, "deadman_ticks": 0, "device_errors": 0}
        self._last_error = ""

        self.create_subscription(JointState, "robot/joint_states", self._on_state, 5)
        self.create_subscription(PoseStamped, "robot/ee_pose", self._on_state, 5)
        self.chunk_pub = self.create_publisher(JointTrajectory, "policy/action_chunk", 10)
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_timer(self.period, self._on_tick)  # node clock: sim time when use_sim_time
        self.create_timer(param("diagnostics_period"), self._publish_diagnostics,
                          clock=Clock(clock_type=ClockType.STEADY_TIME))
        self.get_logger().info(f"{self.source.description} -> policy/action_chunk at {1.0 / self.period:g} Hz")

    def _on_state(self, msg) -> None:
        stamp = stamp_to_sec(msg.header.stamp)
        if self._state_stamp is None or stamp > self._state_stamp:
            self._state_stamp = stamp

    def _on_tick(self) -> None:
        mono = time.monotonic()
        try:
            inp = self.source.read(mono)
        except Exception as e:  # noqa: BLE001 - a device failing mid-run: hold still, report, keep ticking
            self.stats["device_errors"] += 1
            self._last_error = f"{type(e).__name__}: {e}"
            self.get_logger().error(f"{self.source.description}: {self._last_error}", throttle_duration_sec=2.0)
            inp = TeleopInput.idle()
        action = self.mapper.action(inp, mono)
        self.stats["deadman_ticks"] += int(self.mapper.deadman_active)
        now = self.get_clock().now().nanoseconds * 1e-9
        state_stamp = self._state_stamp if self.stamp_mode == "robot_state" else None
        stamp = choose_stamp(now, state_stamp, self._last_stamp, max_state_age=0.5 * self.period)
        self._last_stamp = stamp
        self.chunk_pub.publish(
            chunk_to_msg(ActionChunk(stamp=stamp, period=self.period, actions=action[None], source="teleop"))
        )
        self.stats["chunks"] += 1

    def _publish_diagnostics(self) -> None:
        level = 2 if self._last_error else 0
        text = self._last_error or ("no input (zero motion)" if self.mapper.deadman_active else "teleoperating")
        values = {
            "source": self.source.description,
            "gripper": "closed" if self.mapper.gripper == GRIPPER_CLOSED else "open",
            "stamp_mode": self.stamp_mode,
            **self.stats,
        }
        msg = DiagnosticArray()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.status = [diagnostic_status(f"{self.get_name()}: teleop", level, text, values)]
        self.diag_pub.publish(msg)

    def destroy_node(self) -> None:
        if hasattr(self, "source"):  # unset if __init__ raised; rclpy.shutdown() still destroys the node
            self.source.close()
        super().destroy_node()


def main(args: list[str] | None = None) -> None:
    rclpy.init(args=args if args is not None else sys.argv)
    node = None
    try:
        node = TeleopNode()
        rclpy.spin(node)
    except (ValueError, TeleopDeviceError) as e:  # bad parameters, missing device
        print(f"teleop: {e}", file=sys.stderr)
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
