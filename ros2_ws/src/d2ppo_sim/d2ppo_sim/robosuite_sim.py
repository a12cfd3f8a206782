"""A robosuite task seen through the robot's ROS conventions. No ROS in here.

The env is built by the training workspace's one factory (``d2ppo.envs.robosuite_env.make_env``)
with the policy card's env_args, render profile, cameras and image size, so the sim renders the
pixels the policy was trained on. Observations are converted to what the real drivers publish:
end effector in ``panda_link0`` (robosuite reports it in its world frame), fingers as two
positive joint positions, images upright.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

os.environ.setdefault("MUJOCO_GL", "egl")  # EGL and OSMesa render equally fast on CPU; EGL needs no X server

from d2ppo.obs import image_key  # noqa: E402
from d2ppo_inference.robot_state import BasePose, fingers_from_gripper_qpos  # noqa: E402

DEFAULT_CAMERAS = ("agentview", "robot0_eye_in_hand")


@dataclass(frozen=True)
class SimTask:
    """Which env the sim builds and what it renders."""

    task: str = "Lift"
    env_args: dict | None = None  # robomimic env_args; None -> d2ppo's default for the task
    render_profile: str = "fast"
    camera_names: tuple[str, ...] = DEFAULT_CAMERAS
    image_size: int = 96  # pixels, square

    @classmethod
    def from_policy(cls, policy) -> SimTask:
        """The task a policy package was trained on (``d2ppo.package.PolicyPackage``)."""
        return cls(
            task=policy.task,
            env_args=policy.env_args,
            render_profile=policy.render_profile,
            camera_names=tuple(policy.spec.camera_names),
            image_size=int(policy.spec.image_size),
        )

    def resolved_env_args(self) -> dict:
        if self.env_args is not None:
            return self.env_args
        from d2ppo.envs.robosuite_env import default_env_args

        return default_env_args(self.task, self.camera_names, self.image_size)


@dataclass
class SimObservation:
    """One control tick's sensor readings, in the conventions of the real drivers."""

    images: dict[str, np.ndarray]  # camera -> uint8 [H, W, 3] upright RGB
    arm_positions: np.ndarray  # [7] rad, panda_joint1..7
    arm_velocities: np.ndarray  # [7] rad/s
    fingers: tuple[float, float]  # metres, panda_finger_joint1..2, both >= 0
    ee_pos: np.ndarray  # [3] metres in panda_link0
    ee_quat: np.ndarray  # [4] xyzw in panda_link0
    raw: dict[str, np.ndarray] = field(repr=False, default_factory=dict)  # robosuite raw obs (world frame)


def _mat_to_quat_xyzw(m: np.ndarray) -> np.ndarray:
    from robosuite.utils.transform_utils import mat2quat

    return np.asarray(mat2quat(np.asarray(m, dtype=np.float64)), dtype=np.float64)


class RobosuiteSim:
    """One robosuite env, stepped one control tick (1 / control_freq s of physics) at a time.

    Args:
        task: what to build and render.
        seed: robosuite seed; the same seed gives the same episode sequence (DESIGN.md).
    """

    def __init__(self, task: SimTask, seed: int | None = None):
        from d2ppo.envs.robosuite_env import make_env

        self.task = task
        self.camera_names = tuple(task.camera_names)
        self.env = make_env(
            task.resolved_env_args(),
            seed=seed,
            render_profile=task.render_profile,
            camera_names=self.camera_names,
            image_size=task.image_size,
        )
        robot = self.env.robots[0]
        self.period = 1.0 / float(self.env.control_freq)
        # robosuite's world frame -> panda_link0: the Lift base sits at (-0.56, 0, 0.912) m.
        self.base = BasePose(pos=np.array(robot.base_pos, dtype=np.float64), quat=_mat_to_quat_xyzw(robot.base_ori))
        self._robot = robot
        self._raw: dict[str, np.ndarray] = {}

    def reset(self) -> None:
        """New episode (soft reset: same model and GL context, 10-100x faster than a hard reset)."""
        self._set_obs(self.env.reset())

    def _set_obs(self, obs) -> None:
        from d2ppo.envs.robosuite_env import raw_obs

        self._raw = raw_obs(obs, self.camera_names)

    def observation(self) -> SimObservation:
        raw = self._raw
        if not raw:
            raise RuntimeError("RobosuiteSim.observation() before reset()")
        ee_pos, ee_quat = self.base.to_base(raw["robot0_eef_pos"], raw["robot0_eef_quat"])
        return SimObservation(
            images={cam: raw[image_key(cam)] for cam in self.camera_names},
            arm_positions=np.asarray(self._robot._joint_positions, dtype=np.float64),
            arm_velocities=np.asarray(self._robot._joint_velocities, dtype=np.float64),
            fingers=fingers_from_gripper_qpos(raw["robot0_gripper_qpos"]),
            ee_pos=ee_pos,
            ee_quat=ee_quat,
            raw=raw,
        )

    def step(self, action: Sequence[float]) -> None:
        """Apply one normalised OSC_POSE delta action [7] for one control period."""
        obs, _, _, _ = self.env.step(np.asarray(action, dtype=np.float64))
        self._set_obs(obs)

    def success(self) -> bool:
        from d2ppo.envs.robosuite_env import is_success

        return is_success(self.env)

    def render(self, camera: str = "agentview", size: int = 256) -> np.ndarray:
        """An upright uint8 [size, size, 3] frame for videos, independent of the policy's cameras."""
        from d2ppo.envs.robosuite_env import render_frame

        return render_frame(self.env, camera, size)

    def close(self) -> None:
        self.env.close()
