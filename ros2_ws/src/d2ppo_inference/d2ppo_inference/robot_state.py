"""The robot's ROS state <-> the policy's raw observation (robomimic key names).

ROS drivers (franka node, sim node) publish the end effector in ``panda_link0`` and the fingers
as two positive joint positions (each half the gripper width, as franka_ros2 does). The policy
was trained on robosuite observations: ``robot0_eef_pos`` in robosuite's *world* frame and
``robot0_gripper_qpos`` as robosuite's finger joint positions, where ``finger_joint2`` is
negative (its range is [-0.04, 0] m). The sim node and the inference node both go through this
module, so a policy sees the same numbers from the sim as it saw in training and from the real arm.

Quaternions are (x, y, z, w) throughout, as in robosuite observations and geometry_msgs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

ARM_JOINT_NAMES: tuple[str, ...] = tuple(f"panda_joint{i}" for i in range(1, 8))
FINGER_JOINT_NAMES: tuple[str, ...] = ("panda_finger_joint1", "panda_finger_joint2")
BASE_FRAME = "panda_link0"


def quat_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product a * b of (x, y, z, w) quaternions."""
    ax, ay, az, aw = a
    bx, by, bz, bw = b
    return np.array(
        [
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
            aw * bw - ax * bx - ay * by - az * bz,
        ]
    )


def quat_conj(q: np.ndarray) -> np.ndarray:
    return np.array([-q[0], -q[1], -q[2], q[3]])


def quat_rotate(q: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Rotate vector v [3] by unit quaternion q (x, y, z, w)."""
    qv = np.array([v[0], v[1], v[2], 0.0])
    return quat_mul(quat_mul(q, qv), quat_conj(q))[:3]


@dataclass(frozen=True)
class BasePose:
    """Pose of the robot base (``panda_link0``) in the policy's training world frame.

    robosuite's Lift puts the Panda base at about (-0.56, 0, 0.91) m; a policy card stores it as
    ``obs.robot_base_pos`` (and optionally ``obs.robot_base_quat``) so the inference node can
    map the real robot's base-frame pose back into the frame the policy was trained in.
    """

    pos: np.ndarray = field(default_factory=lambda: np.zeros(3))  # metres
    quat: np.ndarray = field(default_factory=lambda: np.array([0.0, 0.0, 0.0, 1.0]))  # (x, y, z, w)

    @classmethod
    def from_card(cls, card: dict) -> BasePose:
        obs = card.get("obs", {}) or {}
        pos = np.asarray(obs.get("robot_base_pos", (0.0, 0.0, 0.0)), dtype=np.float64).reshape(3)
        quat = np.asarray(obs.get("robot_base_quat", (0.0, 0.0, 0.0, 1.0)), dtype=np.float64).reshape(4)
        return cls(pos=pos, quat=quat / np.linalg.norm(quat))

    def to_base(self, pos_world: Sequence[float], quat_world: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
        """World-frame pose -> pose in ``panda_link0`` (metres, xyzw)."""
        inv = quat_conj(self.quat)
        pos = quat_rotate(inv, np.asarray(pos_world, dtype=np.float64) - self.pos)
        return pos, quat_mul(inv, np.asarray(quat_world, dtype=np.float64))

    def to_world(self, pos_base: Sequence[float], quat_base: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
        """Pose in ``panda_link0`` -> world frame of the training data (metres, xyzw)."""
        pos = quat_rotate(self.quat, np.asarray(pos_base, dtype=np.float64)) + self.pos
        return pos, quat_mul(self.quat, np.asarray(quat_base, dtype=np.float64))


def gripper_qpos_from_fingers(finger1: float, finger2: float) -> np.ndarray:
    """ROS finger joint positions (both >= 0, metres) -> robosuite ``robot0_gripper_qpos`` [2]."""
    return np.array([finger1, -finger2], dtype=np.float64)


def fingers_from_gripper_qpos(gripper_qpos: Sequence[float]) -> tuple[float, float]:
    """robosuite ``robot0_gripper_qpos`` [2] -> ROS finger joint positions (both >= 0, metres)."""
    return float(gripper_qpos[0]), float(-gripper_qpos[1])


def finger_positions(names: Sequence[str], positions: Sequence[float]) -> tuple[float, float] | None:
    """Pick the two finger joints out of a JointState's names/positions; None if absent."""
    try:
        i1 = list(names).index(FINGER_JOINT_NAMES[0])
        i2 = list(names).index(FINGER_JOINT_NAMES[1])
    except ValueError:
        return None
    return float(positions[i1]), float(positions[i2])
