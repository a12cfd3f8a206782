"""The arm: a thin wrapper around franky (robot + gripper) with the few operations the controller needs.

Facts this wrapper is built around (DESIGN.md and measured against franky-sim / franka-sim here):

* ``import franky`` (never ``from franky import *``: it shadows the built-in ``Exception``);
  franky and pylibfranka cannot be imported into one process.
* ``Robot(host, realtime_config=RealtimeConfig.Ignore)`` on a machine without a realtime kernel, otherwise
  the connection raises ``RealtimeException``. Motions take floats.
* Every move is an absolute ``CartesianMotion`` with ``return_when_finished=False``: the motion keeps
  holding its target until the next one takes over seamlessly. With ``True`` the motion ends at the target
  and franky-sim's idle hold let the hand sag ~1 cm.
* An error of an asynchronous move surfaces at the next ``move()`` / ``join_motion()`` / ``poll_motion()``,
  so :meth:`FrankyArm.poll` is called every tick to notice reflexes promptly.
* ``robot.stop()`` stops within millimetres but leaves a "Move command preempted" error that the next move
  would raise; :meth:`FrankyArm.stop` consumes it with ``join_motion``.
* The gripper: a second asynchronous command while one is running blocked the client in franky-sim, so
  :meth:`FrankyArm.gripper_command` only starts a command when the previous one has finished.
* The gripper's width is a network round trip (~1.3 ms, unbounded when the gripper hangs): a thread of its
  own reads it every ``gripper_poll_period`` and :meth:`FrankyArm.read_state` takes the latest value, so
  the control tick never waits on the gripper. libfranka's Gripper is not thread-safe (a width read racing a
  grasp command ended in "ProtocolException: incorrect object size" here), so every gripper call holds
  ``_gripper_lock``; the tick only tries it briefly and starts its command on a later tick when it is taken.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import franky
import numpy as np


class ArmError(RuntimeError):
    """Base of the errors the controller handles; never a franky type, so the controller needs no franky."""


class ReflexError(ArmError):
    """The robot aborted a motion (libfranka ControlException / CommandException, e.g. a reflex)."""


class ConnectionLost(ArmError):
    """The network connection to the robot or gripper failed."""


#: franky's MotionPlannerException (Ruckig failed inside the control loop, e.g. "Motion planner failed with error
#: code -111") has no Python binding and reaches Python as a plain RuntimeError from the next poll/move/join. Like a
#: reflex it aborts the motion; left unhandled it killed the node once (teleop on franky-sim, 1 of 7 runs).
_REFLEX_TYPES = (franky.ControlException, franky.CommandException, RuntimeError)
_NETWORK_TYPES = (franky.NetworkException, franky.ProtocolException)


@dataclass(frozen=True)
class ArmState:
    """One reading of the arm.

    Attributes:
        joint_positions: ``[7]`` rad. joint_velocities: ``[7]`` rad/s.
        ee_pos: ``[3]`` m, end effector (franky ``O_T_EE``) in the base frame ``panda_link0``.
        ee_quat: ``[4]`` xyzw, end-effector orientation in the base frame.
        finger_width: m, distance between the fingers (each finger joint is half of it); nan without gripper.
        in_motion: whether a motion is active (a holding CartesianMotion counts).
    """

    joint_positions: np.ndarray
    joint_velocities: np.ndarray
    ee_pos: np.ndarray
    ee_quat: np.ndarray
    finger_width: float
    in_motion: bool


def _as_arm_error(e: BaseException) -> ArmError:
    if isinstance(e, ArmError):
        return e
    if isinstance(e, _NETWORK_TYPES):
        return ConnectionLost(f"{type(e).__name__}: {e}")
    return ReflexError(f"{type(e).__name__}: {e}")


class FrankyArm:
    """A Franka arm (and optionally its gripper) driven through franky."""

    def __init__(
        self,
        robot_ip: str,
        realtime: bool = True,
        relative_dynamics_factor: float = 0.15,
        use_gripper: bool = True,
        gripper_speed: float = 0.1,
        grasp_force: float = 20.0,
        gripper_poll_period: float = 0.05,
    ):
        """
        Args:
            robot_ip: FCI address of the robot (or a simulator's loopback address).
            realtime: False on a machine without a realtime kernel (CI): RealtimeConfig.Ignore.
            relative_dynamics_factor: (0, 1], scales franky's velocity/acceleration/jerk limits.
            gripper_speed: m/s for open/close. grasp_force: N.
            gripper_poll_period: s between gripper width reads (each is a network round trip, ~1.3 ms).
        """
        if not 0.0 < float(relative_dynamics_factor) <= 1.0:
            raise ValueError(f"relative_dynamics_factor must be in (0, 1], got {relative_dynamics_factor}")
        self.robot_ip = robot_ip
        self.realtime = bool(realtime)
        self.relative_dynamics_factor = float(relative_dynamics_factor)
        self.use_gripper = bool(use_gripper)
        self.gripper_speed = float(gripper_speed)
        self.grasp_force = float(grasp_force)
        self.gripper_poll_period = float(gripper_poll_period)
        self._robot: franky.Robot | None = None
        self._gripper: franky.Gripper | None = None
        self._gripper_future = None
        self._finger_width = float("nan")
        self._gripper_error: str = ""
        self._width_thread: threading.Thread | None = None
        self._gripper_lock = threading.Lock()
        self.max_finger_width = 0.08

    # -- connection --------------------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._robot is not None

    def connect(self) -> None:
        """Connect to the robot (and gripper); raises ConnectionLost on failure."""
        config = franky.RealtimeConfig.Enforce if self.realtime else franky.RealtimeConfig.Ignore
        try:
            robot = franky.Robot(self.robot_ip, realtime_config=config)
            robot.relative_dynamics_factor = self.relative_dynamics_factor
            if robot.has_errors:
                robot.recover_from_errors()
            gripper = None
            if self.use_gripper:
                gripper = franky.Gripper(self.robot_ip)
                self.max_finger_width = float(gripper.max_width) or 0.08
        except (*_REFLEX_TYPES, *_NETWORK_TYPES, franky.IncompatibleVersionException, franky.RealtimeException) as e:
            raise ConnectionLost(f"cannot connect to {self.robot_ip}: {type(e).__name__}: {e}") from e
        self._robot, self._gripper = robot, gripper
        self._gripper_error = ""
        if gripper is not None:
            self._width_thread = threading.Thread(
                target=self._poll_gripper_width, args=(gripper,), name="gripper-width", daemon=True
            )
            self._width_thread.start()

    def disconnect(self) -> None:
        self._robot = None
        self._gripper = None
        self._gripper_future = None

    def close(self, timeout: float = 2.0) -> None:
        """Disconnect and wait for the gripper-width thread to end (before the process exits: a thread left
        inside franky's C++ code while Python finalizes aborts the process)."""
        self.disconnect()
        if self._width_thread is not None:
            self._width_thread.join(timeout)

    def _poll_gripper_width(self, gripper) -> None:
        """Read the finger width every gripper_poll_period until this gripper is disconnected."""
        while self._gripper is gripper:
            try:
                with self._gripper_lock:
                    self._finger_width = float(gripper.width)
            except (*_NETWORK_TYPES, franky.GripperException) as e:
                self._gripper_error = f"gripper: {type(e).__name__}: {e}"
                return
            time.sleep(self.gripper_poll_period)

    def _require(self) -> franky.Robot:
        if self._robot is None:
            raise ConnectionLost("not connected")
        return self._robot

    # -- state -------------------------------------------------------------------------------------------
    def read_state(self) -> ArmState:
        robot = self._require()
        try:
            joints = robot.current_joint_state
            pose = robot.current_cartesian_state.pose.end_effector_pose
            in_motion = bool(robot.is_in_control)
        except (*_REFLEX_TYPES, *_NETWORK_TYPES) as e:
            raise _as_arm_error(e) from e
        if self._gripper_error:
            raise ConnectionLost(self._gripper_error)
        return ArmState(
            joint_positions=np.array(joints.position, dtype=np.float64).reshape(7),
            joint_velocities=np.array(joints.velocity, dtype=np.float64).reshape(7),
            ee_pos=np.array(pose.translation, dtype=np.float64).reshape(3),
            ee_quat=np.array(pose.quaternion, dtype=np.float64).reshape(4),
            finger_width=self._finger_width,
            in_motion=in_motion,
        )

    # -- motion ------------------------------------------------------------------------------------------
    def poll(self) -> bool:
        """Raise the error of the running motion, if any (ReflexError / ConnectionLost); True while moving."""
        robot = self._require()
        try:
            # poll_motion() only for its exception: measured with franky 2.0.0 it returns False while a
            # motion runs and True once it finished (the opposite of its docstring); is_in_control is
            # the reliable "moving" flag.
            robot.poll_motion()
            return bool(robot.is_in_control)
        except (*_REFLEX_TYPES, *_NETWORK_TYPES) as e:
            raise _as_arm_error(e) from e

    def move_to(self, pos: np.ndarray, quat_xyzw: np.ndarray) -> None:
        """Start (asynchronously) an absolute Cartesian motion to ``pos`` [3] m / ``quat_xyzw`` [4] in the
        base frame; it takes over from the running motion and holds the target once there."""
        robot = self._require()
        target = franky.Affine(
            np.asarray(pos, dtype=np.float64).reshape(3), np.asarray(quat_xyzw, dtype=np.float64).reshape(4)
        )
        motion = franky.CartesianMotion(target, franky.ReferenceType.Absolute, return_when_finished=False)
        try:
            robot.move(motion, asynchronous=True)
        except (*_REFLEX_TYPES, *_NETWORK_TYPES) as e:
            raise _as_arm_error(e) from e

    def stop(self) -> None:
        """Stop the running motion now (arm stops within millimetres) and swallow the preemption error."""
        robot = self._require()
        try:
            robot.stop()
            robot.join_motion(1.0)
        except _REFLEX_TYPES:
            pass  # "Move command preempted!" is the expected outcome of stop(); real reflexes show in has_errors
        except _NETWORK_TYPES as e:
            raise _as_arm_error(e) from e

    def move_joints(self, joint_positions: np.ndarray, dynamics_factor: float = 1.0, cancelled=None) -> bool:
        """Start (asynchronously) a joint motion that ends at ``joint_positions`` [7] rad; returns False when
        ``cancelled`` (a threading.Event) was set before the motion started (nothing started then).

        The control signal type must not change while a motion runs, so the running Cartesian motion is
        stopped first.
        """
        robot = self._require()
        self.stop()
        if cancelled is not None and cancelled.is_set():
            return False
        motion = franky.JointMotion(
            [float(v) for v in np.asarray(joint_positions).reshape(7)],
            relative_dynamics_factor=float(dynamics_factor),
        )
        try:
            robot.move(motion, asynchronous=True)
        except (*_REFLEX_TYPES, *_NETWORK_TYPES) as e:
            raise _as_arm_error(e) from e
        return True

    @property
    def has_errors(self) -> bool:
        robot = self._require()
        try:
            return bool(robot.has_errors)
        except _NETWORK_TYPES as e:
            raise _as_arm_error(e) from e

    def recover(self) -> bool:
        """franky's automatic error recovery; True when the robot reports no errors afterwards."""
        robot = self._require()
        try:
            ok = bool(robot.recover_from_errors())
            return ok and not robot.has_errors
        except _REFLEX_TYPES:
            return False
        except _NETWORK_TYPES as e:
            raise _as_arm_error(e) from e

    # -- gripper -----------------------------------------------------------------------------------------
    @property
    def gripper_busy(self) -> bool:
        return self._gripper_future is not None and not self._gripper_future.wait(0.0)

    def gripper_command(self, close: bool) -> bool:
        """Start closing (grasp whatever is there) or opening the gripper asynchronously.

        Returns False (nothing started) while the previous gripper command is still running.
        """
        gripper = self._gripper
        if gripper is None:
            return False
        if self.gripper_busy:
            return False
        if not self._gripper_lock.acquire(timeout=0.005):  # a width read is on the wire: next tick
            return False
        try:
            if close:
                # width 0 with a wide outer tolerance: grasp an object of any width, or close fully.
                self._gripper_future = gripper.grasp_async(
                    0.0, self.gripper_speed, self.grasp_force, 0.005, self.max_finger_width
                )
            else:
                self._gripper_future = gripper.move_async(self.max_finger_width, self.gripper_speed)
        except (*_NETWORK_TYPES, franky.GripperException, franky.CommandException) as e:
            raise ConnectionLost(f"gripper: {type(e).__name__}: {e}") from e
        finally:
            self._gripper_lock.release()
        return True
