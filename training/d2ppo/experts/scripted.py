"""Scripted pick(-and-place) experts for robosuite Lift and PickPlaceCan with a Panda.

They read the true object pose from the simulator (they are experts, not policies) and emit
7-D OSC_POSE delta actions in [-1, 1] at 20 Hz: (dx, dy, dz) x 0.05 m, (droll, dpitch, dyaw)
x 0.5 rad as an axis-angle in the robot base frame, gripper -1 open / +1 close.

Phase machine: move above the object while turning the gripper to a grasp yaw, descend, close,
lift; for Can also carry to the target bin, lower, open and move up. Gaussian action noise and
slightly randomised speeds make the demonstrations diverse; callers keep only successful ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# robosuite's default Panda OSC_POSE output limits at |action| = 1 (DESIGN.md).
POS_SCALE_M = 0.05
ROT_SCALE_RAD = 0.5


def _rotz(yaw: float) -> np.ndarray:
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


# Gripper pointing straight down, fingers' closing axis along world y when yaw = 0.
_DOWN = np.diag([1.0, -1.0, -1.0])


def _rotation_to_axis_angle(R: np.ndarray) -> np.ndarray:
    """Rotation matrix -> axis * angle (radians), angle in [0, pi]."""
    cos = np.clip((np.trace(R) - 1.0) / 2.0, -1.0, 1.0)
    angle = np.arccos(cos)
    if angle < 1e-6:
        return np.zeros(3)
    if np.pi - angle < 1e-4:  # near pi: axis from the symmetric part
        axis = np.sqrt(np.maximum((np.diag(R) + 1.0) / 2.0, 0.0))
        i = int(np.argmax(axis))
        axis[(i + 1) % 3] = np.copysign(axis[(i + 1) % 3], R[i, (i + 1) % 3])
        axis[(i + 2) % 3] = np.copysign(axis[(i + 2) % 3], R[i, (i + 2) % 3])
        return axis / np.linalg.norm(axis) * angle
    axis = np.array([R[2, 1] - R[1, 2], R[0, 2] - R[2, 0], R[1, 0] - R[0, 1]]) / (2.0 * np.sin(angle))
    return axis * angle


def _quat_xyzw_to_mat(q: np.ndarray) -> np.ndarray:
    x, y, z, w = np.asarray(q, dtype=np.float64) / np.linalg.norm(q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def _wrap(a: float) -> float:
    return (a + np.pi) % (2 * np.pi) - np.pi


@dataclass
class ExpertConfig:
    """Tunables of the phase machine (metres, radians, env steps)."""

    hover_m: float = 0.08  # height above the grasp point before descending
    grasp_dz_m: float = 0.0  # grasp point relative to the object's centre
    lift_m: float = 0.15  # lift height above the grasp point (Lift succeeds at +0.04)
    close_steps: int = 8  # gripper needs ~6 steps to close on a 4-5 cm object at 20 Hz
    open_steps: int = 8
    carry_z_m: float | None = None  # absolute carry height (Can); None -> no place phase
    place_z_m: float | None = None  # absolute eef height at release (Can)
    retreat_m: float = 0.12
    yaw_symmetry_rad: float | None = np.pi / 2  # object symmetry for the grasp yaw (None: keep yaw)
    pos_gain: float = 1.0  # action = gain * error / 0.05 m
    rot_gain: float = 1.0
    max_pos_action: float = 1.0  # cap on the translation action's norm (speed)


LIFT_CONFIG = ExpertConfig()
CAN_CONFIG = ExpertConfig(
    hover_m=0.10,
    grasp_dz_m=0.01,
    lift_m=0.0,
    carry_z_m=1.05,
    place_z_m=0.98,
    yaw_symmetry_rad=None,
    close_steps=10,
)


class PickPlaceExpert:
    """Phase-machine expert. ``reset(env, rng)`` at episode start, then ``act(env) -> [7]`` each step.

    Reads the object pose and the end-effector site pose straight from the sim.
    """

    def __init__(self, task: str, noise: float = 0.1, config: ExpertConfig | None = None, speed_jitter: float = 0.2):
        if task not in ("Lift", "PickPlaceCan"):
            raise ValueError(f"no scripted expert for {task!r} (have Lift, PickPlaceCan)")
        self.task = task
        self.noise = float(noise)
        self.base_config = config or (LIFT_CONFIG if task == "Lift" else CAN_CONFIG)
        self.speed_jitter = float(speed_jitter)

    # --- sim access -------------------------------------------------------------------------
    def _object_pose(self, env) -> tuple[np.ndarray, np.ndarray]:
        if self.task == "Lift":
            body = env.cube_body_id
        else:
            body = env.obj_body_id["Can"]
        pos = np.array(env.sim.data.body_xpos[body])
        rot = np.array(env.sim.data.body_xmat[body]).reshape(3, 3)
        return pos, rot

    def _eef_pose(self, env) -> tuple[np.ndarray, np.ndarray]:
        site = env.robots[0].eef_site_id["right"]
        return np.array(env.sim.data.site_xpos[site]), np.array(env.sim.data.site_xmat[site]).reshape(3, 3)

    def _base_rot(self, env) -> np.ndarray:
        ctrl = env.robots[0].part_controllers["right"]
        return np.array(ctrl.origin_ori) if getattr(ctrl, "origin_ori", None) is not None else np.eye(3)

    def _place_target(self, env) -> np.ndarray:
        return np.array(env.target_bin_placements[env.object_to_id["can"]])

    # --- episode ------------------------------------------------------------------------------
    def reset(self, env, rng: np.random.Generator) -> None:
        c = self.base_config
        j = lambda: 1.0 + rng.uniform(-self.speed_jitter, self.speed_jitter)  # noqa: E731
        self.cfg = ExpertConfig(**{**c.__dict__})
        self.cfg.pos_gain = c.pos_gain * j()
        self.cfg.rot_gain = c.rot_gain * j()
        self.cfg.max_pos_action = min(1.0, c.max_pos_action * j())
        self.rng = rng
        self.phase = "approach"
        self.phase_steps = 0
        eef_pos, eef_rot = self._eef_pose(env)
        self.grasp_xy: np.ndarray | None = None
        self.grasp_z: float | None = None
        obj_pos, obj_rot = self._object_pose(env)
        cur_yaw = float(np.arctan2(eef_rot[1, 0], eef_rot[0, 0]))
        if c.yaw_symmetry_rad:
            obj_yaw = float(np.arctan2(obj_rot[1, 0], obj_rot[0, 0]))
            k = np.round(_wrap(cur_yaw - obj_yaw) / c.yaw_symmetry_rad)
            self.yaw = _wrap(obj_yaw + k * c.yaw_symmetry_rad)
        else:
            self.yaw = cur_yaw
        self.R_des = _rotz(self.yaw) @ _DOWN

    def _goto(self, env, target: np.ndarray, gripper: float) -> tuple[np.ndarray, float]:
        eef_pos, eef_rot = self._eef_pose(env)
        err = target - eef_pos
        base = self._base_rot(env)
        a_pos = self.cfg.pos_gain * (base.T @ err) / POS_SCALE_M
        n = np.linalg.norm(a_pos)
        if n > self.cfg.max_pos_action:
            a_pos *= self.cfg.max_pos_action / n
        rot_err = _rotation_to_axis_angle(self.R_des @ eef_rot.T)
        a_rot = np.clip(self.cfg.rot_gain * (base.T @ rot_err) / ROT_SCALE_RAD, -1.0, 1.0)
        action = np.concatenate([a_pos, a_rot, [gripper]])
        return action, float(np.linalg.norm(err))

    def _next(self, phase: str) -> None:
        self.phase = phase
        self.phase_steps = 0

    def act(self, env) -> np.ndarray:
        """The next action (noise included), float64 [7] in [-1, 1]."""
        c = self.cfg
        obj_pos, _ = self._object_pose(env)
        eef_pos, eef_rot = self._eef_pose(env)
        grasp_point = obj_pos + np.array([0.0, 0.0, c.grasp_dz_m])
        self.phase_steps += 1
        p = self.phase
        if p == "approach":
            target = grasp_point + np.array([0.0, 0.0, c.hover_m])
            action, dist = self._goto(env, target, -1.0)
            rot_err = np.linalg.norm(_rotation_to_axis_angle(self.R_des @ eef_rot.T))
            xy_err = np.linalg.norm(target[:2] - eef_pos[:2])
            if (xy_err < 0.01 and dist < 0.025 and rot_err < 0.1) or self.phase_steps > 60:
                self._next("descend")
        elif p == "descend":
            action, dist = self._goto(env, grasp_point, -1.0)
            if dist < 0.01 or self.phase_steps > 30:
                self.grasp_xy = eef_pos[:2].copy()
                self.grasp_z = float(eef_pos[2])
                self._next("close")
        elif p == "close":
            action, _ = self._goto(env, np.r_[self.grasp_xy, self.grasp_z], 1.0)
            if self.phase_steps >= c.close_steps:
                self._next("lift")
        elif p == "lift":
            z = c.carry_z_m if c.carry_z_m is not None else self.grasp_z + c.lift_m
            action, dist = self._goto(env, np.r_[self.grasp_xy, z], 1.0)
            if c.carry_z_m is not None and abs(eef_pos[2] - z) < 0.03:
                self._next("carry")
        elif p == "carry":
            place = self._place_target(env)
            action, _ = self._goto(env, np.r_[place[:2], c.carry_z_m], 1.0)
            if np.linalg.norm(place[:2] - eef_pos[:2]) < 0.015 or self.phase_steps > 80:
                self._next("lower")
        elif p == "lower":
            place = self._place_target(env)
            action, _ = self._goto(env, np.r_[place[:2], c.place_z_m], 1.0)
            if abs(eef_pos[2] - c.place_z_m) < 0.015 or self.phase_steps > 30:
                self.release_pos = eef_pos.copy()
                self._next("release")
        elif p == "release":
            action, _ = self._goto(env, self.release_pos, -1.0)
            if self.phase_steps >= c.open_steps:
                self._next("retreat")
        elif p == "retreat":
            action, _ = self._goto(env, self.release_pos + np.array([0.0, 0.0, c.retreat_m]), -1.0)
        else:
            raise RuntimeError(f"unknown phase {p}")
        if self.noise > 0:
            action = action + self.rng.normal(0.0, self.noise, size=action.shape)
        return np.clip(action, -1.0, 1.0)
