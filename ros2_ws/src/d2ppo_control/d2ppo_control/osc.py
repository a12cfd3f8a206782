"""robosuite OSC_POSE delta semantics, as pure functions, so a sim-trained action means the same motion
on the arm.

What robosuite 1.5's ``OperationalSpaceController`` does with a delta action (``controllers/parts/arm/osc.py``,
``input_type="delta"``, ``input_ref_frame="base"``, default ``goal_update_mode="achieved"``; output limits
from ``default_panda.json``: ±0.05 m, ±0.5 rad):

* ``scale_action``: clip each component to [-1, 1], multiply by the output limit;
* ``compute_goal_pos``: ``goal_pos = eef_pos_in_base + delta_pos`` — a translation in the base frame;
* ``compute_goal_ori``: ``goal_ori = R(axisangle(delta_rot)) @ eef_ori_in_base`` — the rotation is
  *left*-multiplied, i.e. it is applied about the base-frame axes, not the end-effector's.

Left multiplication has a useful consequence for deployment: robosuite's end-effector frame and franky's
``O_T_EE`` differ by a fixed rotation on the *right* (``R_franky = R_robosuite @ C``), and
``R_delta @ (R @ C) = (R_delta @ R) @ C``, so applying the delta to franky's own end-effector orientation
gives exactly the rotation the policy asked for. Quaternions are ``[x, y, z, w]`` everywhere here.
"""

from __future__ import annotations

import numpy as np

#: robosuite default Panda OSC_POSE output limits: metres / radians per step at full scale (action = 1).
POS_SCALE = 0.05
ROT_SCALE = 0.5


def quat_normalize(q: np.ndarray) -> np.ndarray:
    q = np.asarray(q, dtype=np.float64)
    n = np.linalg.norm(q)
    if not np.isfinite(n) or n < 1e-12:
        raise ValueError(f"quaternion {q} has no direction")
    return q / n


def quat_multiply(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product ``a ⊗ b`` of ``[x, y, z, w]`` quaternions (rotation ``b`` first, then ``a``)."""
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


def axis_angle_to_quat(rotvec: np.ndarray) -> np.ndarray:
    """Rotation vector (axis * angle, radians) ``[3]`` -> quaternion ``[x, y, z, w]``."""
    rotvec = np.asarray(rotvec, dtype=np.float64)
    angle = float(np.linalg.norm(rotvec))
    if angle < 1e-12:
        return np.array([0.0, 0.0, 0.0, 1.0])
    axis = rotvec / angle
    return np.concatenate([axis * np.sin(angle / 2.0), [np.cos(angle / 2.0)]])


def quat_to_axis_angle(q: np.ndarray) -> np.ndarray:
    """Quaternion ``[x, y, z, w]`` -> rotation vector ``[3]`` (radians), angle in [0, π]."""
    q = quat_normalize(q)
    if q[3] < 0.0:  # same rotation, shorter way round
        q = -q
    s = float(np.linalg.norm(q[:3]))
    if s < 1e-12:
        return np.zeros(3)
    angle = 2.0 * np.arctan2(s, q[3])
    return q[:3] / s * angle


def quat_to_matrix(q: np.ndarray) -> np.ndarray:
    x, y, z, w = quat_normalize(q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def delta_to_target(
    action: np.ndarray,
    ee_pos: np.ndarray,
    ee_quat_xyzw: np.ndarray,
    pos_scale: float = POS_SCALE,
    rot_scale: float = ROT_SCALE,
) -> tuple[np.ndarray, np.ndarray]:
    """Absolute end-effector target for one normalised OSC_POSE delta action (robosuite semantics).

    Args:
        action: ``[>=6]`` normalised delta (a 7th gripper component is ignored); clipped to [-1, 1]
            like robosuite's ``scale_action``.
        ee_pos: ``[3]`` metres, end-effector position in the robot base frame the delta is applied to.
        ee_quat_xyzw: ``[4]`` end-effector orientation in the base frame.
        pos_scale: metres per unit action (robosuite Panda default 0.05).
        rot_scale: radians per unit action (robosuite Panda default 0.5).

    Returns:
        ``(target_pos [3] metres, target_quat_xyzw [4])`` in the base frame.
    """
    a = np.clip(np.asarray(action, dtype=np.float64)[:6], -1.0, 1.0)
    target_pos = np.asarray(ee_pos, dtype=np.float64) + a[:3] * pos_scale
    dq = axis_angle_to_quat(a[3:6] * rot_scale)
    target_quat = quat_normalize(quat_multiply(dq, quat_normalize(ee_quat_xyzw)))  # base-frame rotation first
    if target_quat[3] < 0.0:
        target_quat = -target_quat  # canonical hemisphere, keeps published poses continuous
    return target_pos, target_quat


def target_to_delta(
    ee_pos: np.ndarray,
    ee_quat_xyzw: np.ndarray,
    target_pos: np.ndarray,
    target_quat_xyzw: np.ndarray,
    pos_scale: float = POS_SCALE,
    rot_scale: float = ROT_SCALE,
) -> np.ndarray:
    """Inverse of :func:`delta_to_target`: the normalised ``[6]`` delta that moves ``ee`` to ``target``.

    Not clipped, so a caller (e.g. a demo recorder) can see when a motion exceeds one step's full scale.
    """
    dpos = (np.asarray(target_pos, dtype=np.float64) - np.asarray(ee_pos, dtype=np.float64)) / pos_scale
    q = quat_normalize(ee_quat_xyzw)
    q_inv = np.array([-q[0], -q[1], -q[2], q[3]])
    drot = quat_to_axis_angle(quat_multiply(quat_normalize(target_quat_xyzw), q_inv)) / rot_scale
    return np.concatenate([dpos, drot])
