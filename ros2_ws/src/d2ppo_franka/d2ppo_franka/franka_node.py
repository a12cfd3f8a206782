"""ROS 2 node for a Franka arm through franky: ROS plumbing only; the logic is FrankaController.

Topics (relative, so a namespace or remapping moves them):
    sub  policy/action_chunk   trajectory_msgs/JointTrajectory  chunks to execute
    pub  robot/joint_states    sensor_msgs/JointState           panda_joint1..7, panda_finger_joint1..2
    pub  robot/ee_pose         geometry_msgs/PoseStamped         end effector in panda_link0
    pub  controller/executed   trajectory_msgs/JointTrajectory  each action actually sent (after the envelope)
    pub  diagnostics           diagnostic_msgs/DiagnosticArray   executor/safety counters, reflexes, connection,
                                                                 enabled / disabled_reason, active_source
Services:
    controller/enable (std_srvs/SetBool)  the operator's switch: true (re)starts execution (recovering a
                                          faulted robot first), false holds still and ignores chunks
    controller/home   (std_srvs/Trigger)  joint motion to home_joints; refused unless enabled and not faulted
    controller/stop   (std_srvs/Trigger)  stop now and disable
Parameter ``source`` ("policy" | "teleop", settable at run time: ``python -m d2ppo_bringup.ctl source teleop``)
selects whose chunks are executed (a chunk names its source in header.frame_id).

Parameters: launch/franka.yaml (robot, rates, gripper, home) and launch/safety.yaml (``safety.*``).
Run: ``franka_node --ros-args --params-file launch/franka.yaml --params-file launch/safety.yaml``.
"""

from __future__ import annotations

import dataclasses
import math

import rclpy
from d2ppo_control.ros_conversions import (
    ChunkMessageError,
    chunk_from_msg,
    diagnostic_status,
    executed_msg,
    sec_to_stamp,
)
from d2ppo_control.ros_params import UnknownParameterError, refuse_undeclared_parameters
from d2ppo_control.safety import SafetyLimits
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from sensor_msgs.msg import JointState
from std_srvs.srv import SetBool, Trigger
from trajectory_msgs.msg import JointTrajectory

from d2ppo_franka.arm import FrankyArm
from d2ppo_franka.controller import ControllerConfig, FrankaController

ARM_JOINTS = tuple(f"joint{i}" for i in range(1, 8))
FINGER_JOINTS = ("finger_joint1", "finger_joint2")

#: Node parameters besides ControllerConfig's and ``safety.*`` (name: default).
NODE_DEFAULTS = {
    "robot_ip": "172.16.0.2",
    "realtime": True,
    "relative_dynamics_factor": 0.15,
    "use_gripper": True,
    "gripper_speed": 0.1,
    "grasp_force": 20.0,
    "state_rate_hz": 50.0,
    "diagnostics_rate_hz": 2.0,
    "frame_id": "panda_link0",
    "joint_prefix": "panda_",
}


def _coerce(value, like):
    """Parameter value -> the type of the dataclass default (YAML ints where floats are meant, lists)."""
    if isinstance(like, bool):
        return bool(value)
    if isinstance(like, float):
        return float(value)
    if isinstance(like, int):
        return int(value)
    if isinstance(like, tuple):
        return tuple(float(v) for v in value)
    return value


class FrankaNode(Node):
    def __init__(self, **kwargs):
        super().__init__("franka_node", **kwargs)
        any_type = ParameterDescriptor(dynamic_typing=True)

        def param(name, default):
            value = list(default) if isinstance(default, tuple) else default
            self.declare_parameter(name, value, any_type)
            return _coerce(self.get_parameter(name).value, default)

        node_params = {k: param(k, v) for k, v in NODE_DEFAULTS.items()}
        config = ControllerConfig(**{f.name: param(f.name, f.default) for f in dataclasses.fields(ControllerConfig)})
        defaults = SafetyLimits()
        limits = SafetyLimits.from_dict(
            {name: param(f"safety.{name}", getattr(defaults, name)) for name in SafetyLimits.field_names()}
        )
        refuse_undeclared_parameters(self)  # before connecting: a misspelt key must not fall back to a default
        self.frame_id = node_params["frame_id"]
        prefix = node_params["joint_prefix"]
        self.joint_names = [prefix + j for j in ARM_JOINTS + FINGER_JOINTS]

        arm = FrankyArm(
            node_params["robot_ip"],
            realtime=node_params["realtime"],
            relative_dynamics_factor=node_params["relative_dynamics_factor"],
            use_gripper=node_params["use_gripper"],
            gripper_speed=node_params["gripper_speed"],
            grasp_force=node_params["grasp_force"],
        )
        self.controller = FrankaController(arm, limits, config)
        self.get_logger().info(
            f"franka node: robot {arm.robot_ip} (realtime={arm.realtime}, dynamics {arm.relative_dynamics_factor}), "
            f"control {config.control_rate_hz} Hz, safety {limits.to_dict()}"
        )

        self.create_subscription(JointTrajectory, "policy/action_chunk", self._on_chunk, 10)
        self.executed_pub = self.create_publisher(JointTrajectory, "controller/executed", 10)
        self.joint_pub = self.create_publisher(JointState, "robot/joint_states", 10)
        self.pose_pub = self.create_publisher(PoseStamped, "robot/ee_pose", 10)
        self.diag_pub = self.create_publisher(DiagnosticArray, "diagnostics", 10)
        self.create_service(SetBool, "controller/enable", self._on_enable)
        self.create_service(Trigger, "controller/home", self._on_home)
        self.create_service(Trigger, "controller/stop", self._on_stop)
        self.bad_messages = 0
        self._auto_disables = 0
        self.add_on_set_parameters_callback(self._on_set_parameters)

        self.controller.step(self._now())  # connect right away rather than one period later
        self.create_timer(config.period, self._on_control_tick)
        self.create_timer(1.0 / node_params["state_rate_hz"], self._publish_state)
        self.create_timer(1.0 / node_params["diagnostics_rate_hz"], self._publish_diagnostics)

    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    # -- callbacks ---------------------------------------------------------------------------------------
    def _on_chunk(self, msg: JointTrajectory) -> None:
        try:
            chunk = chunk_from_msg(msg, default_period=self.controller.config.period)
        except (ChunkMessageError, ValueError) as e:
            self.bad_messages += 1
            self.get_logger().warning(f"rejected action chunk message: {e}", throttle_duration_sec=1.0)
            return
        self.controller.submit_chunk(chunk, self._now())

    def _on_set_parameters(self, params) -> SetParametersResult:
        """Run-time parameter changes: only ``source`` may change while the node runs."""
        for p in params:
            if p.name != "source":
                return SetParametersResult(
                    successful=False, reason=f"{p.name} is read at start only; change the file and restart the node"
                )
            if p.name == "source":
                try:
                    self.controller.set_source(str(p.value))
                except ValueError as e:
                    return SetParametersResult(successful=False, reason=str(e))
                self.get_logger().info(f"chunk source: {p.value} (the other source's chunks are dropped)")
        return SetParametersResult(successful=True)

    def _on_control_tick(self) -> None:
        ctrl = self.controller
        before = ctrl.counters.reflexes
        now = self._now()
        cmd = ctrl.step(now)
        if ctrl.last_executed is not None:
            self.executed_pub.publish(executed_msg(ctrl.last_executed, now, cmd.source))
        if ctrl.counters.reflexes != before:
            self.get_logger().error(f"reflex: {ctrl.last_error}; controller disabled ({ctrl.disabled_reason})")
        if ctrl.counters.auto_disables != self._auto_disables:
            self._auto_disables = ctrl.counters.auto_disables
            self.get_logger().warning(f"controller disabled itself: {ctrl.disabled_reason}; enable to resume")
            self._publish_diagnostics()
        if cmd.reason.startswith("rejected_"):
            self.get_logger().warning(f"action rejected by safety envelope: {cmd.reason}", throttle_duration_sec=1.0)

    def _on_enable(self, request: SetBool.Request, response: SetBool.Response) -> SetBool.Response:
        response.success, response.message = self.controller.set_enabled(request.data)
        self.get_logger().info(f"controller/enable {request.data}: {response.message}")
        self._publish_diagnostics()
        return response

    def _on_home(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        response.success, response.message = self.controller.home()
        self.get_logger().info(f"controller/home: {response.message}")
        return response

    def _on_stop(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        response.success, response.message = self.controller.stop()
        self.get_logger().info(f"controller/stop: {response.message}")
        self._publish_diagnostics()
        return response

    # -- publishers --------------------------------------------------------------------------------------
    def _publish_state(self) -> None:
        ctrl = self.controller
        if not ctrl.arm.connected or ctrl.busy:  # the worker owns the arm while it connects or recovers
            return
        try:
            state = ctrl.arm.read_state()
        except Exception:  # noqa: BLE001 - the control tick handles and reports arm errors
            return
        stamp = self.get_clock().now().to_msg()
        js = JointState()
        js.header.stamp = stamp
        js.name = self.joint_names
        half = state.finger_width / 2.0 if math.isfinite(state.finger_width) else 0.0
        js.position = [float(v) for v in state.joint_positions] + [half, half]
        js.velocity = [float(v) for v in state.joint_velocities] + [0.0, 0.0]
        self.joint_pub.publish(js)
        pose = PoseStamped()
        pose.header.stamp = stamp
        pose.header.frame_id = self.frame_id
        p, q = state.ee_pos, state.ee_quat
        pose.pose.position.x, pose.pose.position.y, pose.pose.position.z = (float(v) for v in p)
        o = pose.pose.orientation
        o.x, o.y, o.z, o.w = (float(v) for v in q)
        self.pose_pub.publish(pose)

    def _publish_diagnostics(self) -> None:
        level, message, values = self.controller.diagnostics()
        values["bad_chunk_messages"] = self.bad_messages
        arr = DiagnosticArray()
        arr.header.stamp = sec_to_stamp(self._now())
        arr.status = [diagnostic_status(f"{self.get_fully_qualified_name()}: controller", level, message, values)]
        self.diag_pub.publish(arr)


def main(args=None) -> None:
    rclpy.init(args=args)
    node = None
    try:
        node = FrankaNode()
        rclpy.spin(node)
    except UnknownParameterError as e:
        raise SystemExit(f"franka: {e}") from None  # exit status 1, the message on stderr
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            # Leave the arm stopped rather than let the dying control thread end in a communication reflex.
            node.controller.wait_idle(5.0)
            arm = node.controller.arm
            if arm.connected and not node.controller.busy:
                try:
                    arm.stop()
                except Exception:  # noqa: BLE001 - best effort while shutting down
                    pass
            arm.close()
            node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()


if __name__ == "__main__":
    main()
