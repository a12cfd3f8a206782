"""Forward kinematics and joint limits of the Panda / FR3 arm, for checking a joint target before moving there.

The controller never plans in joint space; it only needs to know where a joint target (the home pose) puts
the tool, so the envelope can refuse a home pose outside the box or the orientation cone. Franka's
published kinematics (modified Denavit-Hartenberg, Craig's convention, identical for Panda and FR3), with
the Franka Hand's default end-effector frame (``F_T_EE``: 0.1034 m along the flange z axis, rotated -45°
about it) — the frame franky reports as the end-effector pose.
"""

from __future__ import annotations

import numpy as np

#: (a, d, alpha) per joint, metres / radians (Franka's documentation, "Robot and interface specifications").
_DH = (
    (0.0, 0.333, 0.0),
    (0.0, 0.0, -np.pi / 2),
    (0.0, 0.316, np.pi / 2),
    (0.0825, 0.0, np.pi / 2),
    (-0.0825, 0.384, -np.pi / 2),
    (0.0, 0.0, np.pi / 2),
    (0.088, 0.0, np.pi / 2),
)
FLANGE_D = 0.107
HAND_TCP_D = 0.1034
HAND_YAW = -np.pi / 4

#: rad: the joint limits both the Panda (FER) and the FR3 accept (the intersection of their datasheets).
JOINT_LIMITS_LOW = np.array([-2.7437, -1.7628, -2.8973, -3.0421, -2.8065, 0.5445, -2.8973])
JOINT_LIMITS_HIGH = np.array([2.7437, 1.7628, 2.8973, -0.1518, 2.8065, 3.7525, 2.8973])


def _mdh(a: float, d: float, alpha: float, theta: float) -> np.ndarray:
    """Rot_x(alpha) Trans_x(a) Rot_z(theta) Trans_z(d) as a 4x4 matrix."""
    ca, sa, ct, st = np.cos(alpha), np.sin(alpha), np.cos(theta), np.sin(theta)
    return np.array(
        [
            [ct, -st, 0.0, a],
            [st * ca, ct * ca, -sa, -d * sa],
            [st * sa, ct * sa, ca, d * ca],
            [0.0, 0.0, 0.0, 1.0],
        ]
    )


def _matrix_to_quat(m: np.ndarray) -> np.ndarray:
    """3x3 rotation matrix -> ``[x, y, z, w]`` with w >= 0."""
    w = np.sqrt(max(0.0, 1.0 + m[0, 0] + m[1, 1] + m[2, 2])) / 2.0
    x = np.sqrt(max(0.0, 1.0 + m[0, 0] - m[1, 1] - m[2, 2])) / 2.0
    y = np.sqrt(max(0.0, 1.0 - m[0, 0] + m[1, 1] - m[2, 2])) / 2.0
    z = np.sqrt(max(0.0, 1.0 - m[0, 0] - m[1, 1] + m[2, 2])) / 2.0
    x = np.copysign(x, m[2, 1] - m[1, 2])
    y = np.copysign(y, m[0, 2] - m[2, 0])
    z = np.copysign(z, m[1, 0] - m[0, 1])
    q = np.array([x, y, z, w])
    return q / np.linalg.norm(q)


def forward_kinematics(joints: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """End-effector pose for joint angles ``[7]`` rad: ``(pos [3] m, quat [4] xyzw)`` in ``panda_link0``."""
    q = np.asarray(joints, dtype=np.float64).reshape(7)
    t = np.eye(4)
    for (a, d, alpha), theta in zip(_DH, q):
        t = t @ _mdh(a, d, alpha, theta)
    t = t @ _mdh(0.0, FLANGE_D, 0.0, 0.0) @ _mdh(0.0, HAND_TCP_D, 0.0, HAND_YAW)
    return t[:3, 3].copy(), _matrix_to_quat(t[:3, :3])
