"""Robot-state and camera messages as the real drivers publish them, and back to arrays.

The sim node builds its messages here and the inference node reads them here, so "the sim
publishes exactly what the real drivers publish" is one set of functions, not two.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from d2ppo_control.ros_conversions import sec_to_stamp
from geometry_msgs.msg import PoseStamped
from sensor_msgs.msg import Image, JointState

from d2ppo_inference.robot_state import ARM_JOINT_NAMES, BASE_FRAME, FINGER_JOINT_NAMES


def camera_frame_id(camera: str) -> str:
    """Optical frame of a camera's colour stream, named like the RealSense driver's."""
    return f"{camera}_color_optical_frame"


def image_msg(image: np.ndarray, stamp: float, frame_id: str) -> Image:
    """uint8 [H, W, 3] upright RGB -> sensor_msgs/Image rgb8.

    ``data`` is assigned ``bytes``: assigning a numpy array is ~1000x slower with these wheels.
    """
    image = np.ascontiguousarray(image, dtype=np.uint8)
    h, w = image.shape[:2]
    msg = Image()
    msg.header.stamp = sec_to_stamp(stamp)
    msg.header.frame_id = frame_id
    msg.height, msg.width = h, w
    msg.encoding = "rgb8"
    msg.is_bigendian = 0
    msg.step = w * 3
    msg.data = image.tobytes()
    return msg


def image_to_array(msg: Image) -> np.ndarray:
    """sensor_msgs/Image rgb8 or bgr8 -> uint8 [H, W, 3] RGB (a view of the message buffer for rgb8)."""
    if msg.encoding not in ("rgb8", "bgr8"):
        raise ValueError(f"unsupported image encoding {msg.encoding!r}; expected rgb8")
    rows = np.frombuffer(msg.data, np.uint8).reshape(msg.height, msg.step)
    img = rows[:, : msg.width * 3].reshape(msg.height, msg.width, 3)
    return img[:, :, ::-1] if msg.encoding == "bgr8" else img


def ee_pose_msg(pos: Sequence[float], quat_xyzw: Sequence[float], stamp: float) -> PoseStamped:
    """End-effector pose in ``panda_link0`` (metres, xyzw quaternion)."""
    msg = PoseStamped()
    msg.header.stamp = sec_to_stamp(stamp)
    msg.header.frame_id = BASE_FRAME
    p, q = msg.pose.position, msg.pose.orientation
    p.x, p.y, p.z = (float(v) for v in pos)
    q.x, q.y, q.z, q.w = (float(v) for v in quat_xyzw)
    return msg


def ee_pose_from_msg(msg: PoseStamped) -> tuple[np.ndarray, np.ndarray]:
    """PoseStamped -> (position [3] m, quaternion [4] xyzw)."""
    p, q = msg.pose.position, msg.pose.orientation
    return np.array([p.x, p.y, p.z]), np.array([q.x, q.y, q.z, q.w])


def joint_state_msg(
    arm_positions: Sequence[float],
    fingers: Sequence[float],
    stamp: float,
    arm_velocities: Sequence[float] | None = None,
) -> JointState:
    """``panda_joint1..7`` (rad) + ``panda_finger_joint1..2`` (m, both >= 0), like franka_ros2."""
    msg = JointState()
    msg.header.stamp = sec_to_stamp(stamp)
    msg.name = [*ARM_JOINT_NAMES, *FINGER_JOINT_NAMES]
    msg.position = [float(v) for v in (*arm_positions, *fingers)]
    if arm_velocities is not None:
        msg.velocity = [float(v) for v in (*arm_velocities, 0.0, 0.0)]
    return msg
