"""Scripted pick(-and-place) experts for robosuite Lift, PickPlaceCan and NutAssemblySquare with a Panda.

They read the true object pose from the simulator (they are experts, not policies) and emit
7-D OSC_POSE delta actions in [-1, 1] at 20 Hz: (dx, dy, dz) x 0.05 m, (droll, dpitch, dyaw)
x 0.5 rad as an axis-angle in the robot base frame, gripper -1 open / +1 close.

Phase machine: move above the grasp point while turning the gripper to a grasp yaw, descend, close,
lift; for Can and Square also carry to the target, lower, open and move up. Gaussian action noise and
slightly randomised speeds make the demonstrations diverse; callers keep only successful ones.

Square (``NutAssemblyExpert``) grasps the nut by its handle (the ``handle_site``, 54 mm from the nut's
centre along its x axis) with the fingers closing across the handle, and during the carry steers the
*nut's* centre, not the gripper, over the square peg while turning the gripper until the nut's square
hole is aligned with the peg (4-fold symmetry: at most 45°). Geometry (robosuite's square-nut.xml and
pegs_arena.xml): the hole is 45.5 mm wide, the peg 32 mm, so a centred nut clears the peg by 6.8 mm per
side when aligned. ``make_expert(task)`` picks the expert for a task.
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


# Gripper pointing straight down; the fingers close along the end-effector site's x axis, which is world x at
# yaw = 0 (measured: fingertip to fingertip is the site frame's x axis, tips 11 mm below the site).
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
    grasp_yaw_offset_rad: float = 0.0  # gripper yaw minus object yaw at the grasp (Square: close across the handle)
    pos_gain: float = 1.0  # action = gain * error / 0.05 m
    rot_gain: float = 1.0
    max_pos_action: float = 1.0  # cap on the translation action's norm (speed)
    lower_z_cap: float | None = None  # cap on the vertical action alone while lowering (None: the norm cap)
    lower_max_steps: int = 30  # release after this many lowering steps even if not down yet
    place_tol_m: float = 0.015  # xy error below which the carry ends and lowering starts
    settle_m: float = 1.0  # ... once the object moves less than this per step (1 m: no check)


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
SQUARE_CONFIG = ExpertConfig(
    hover_m=0.06,
    grasp_dz_m=0.0,  # the handle's mid-height (it is 20 mm thick; the nut rests 10 mm above the table)
    lift_m=0.0,
    close_steps=10,
    carry_z_m=1.02,  # nut 60 mm clear of the peg's top (z 0.95 m)
    place_z_m=0.86,  # nut centre at release; success needs it below 0.87 m (table 0.82 m + 0.05 m)
    retreat_m=0.10,  # success also needs the gripper > ~69 mm from the nut's centre
    yaw_symmetry_rad=np.pi,  # a handle can be gripped from either side
    grasp_yaw_offset_rad=np.pi / 2,  # the handle runs along the nut's x axis; the fingers close along y
    lower_z_cap=0.5,
    lower_max_steps=60,
    place_tol_m=0.004,  # of the 6.8 mm clearance
    settle_m=0.001,
)

# Square peg (pegs_arena.xml): a 32 mm box 0.2 m tall, its body frame at mid-height.
PEG_HALF_HEIGHT_M = 0.1
# Square nut (square-nut.xml): the handle runs from 29 to 79 mm along the nut's x axis, its site at 54 mm.
HANDLE_GRASP_OFFSET_M = 0.008
NUT_HALF_THICKNESS_M = 0.01


EXPERT_TASKS = ("Lift", "PickPlaceCan", "NutAssemblySquare")


def make_expert(task: str, noise: float = 0.1, config: ExpertConfig | None = None) -> PickPlaceExpert:
    """The scripted expert of a robosuite task (``Lift``, ``PickPlaceCan``, ``NutAssemblySquare``)."""
    if task == "NutAssemblySquare":
        return NutAssemblyExpert(noise=noise, config=config)
    if task in ("Lift", "PickPlaceCan"):
        return PickPlaceExpert(task, noise=noise, config=config)
    raise ValueError(f"no scripted expert for {task!r} (have {', '.join(EXPERT_TASKS)})")


class PickPlaceExpert:
    """Phase-machine expert. ``reset(env, rng)`` at episode start, then ``act(env) -> [7]`` each step.

    Reads the object pose and the end-effector site pose straight from the sim.
    """

    TASKS: tuple[str, ...] = ("Lift", "PickPlaceCan")

    def __init__(self, task: str, noise: float = 0.1, config: ExpertConfig | None = None, speed_jitter: float = 0.2):
        if task not in self.TASKS:
            raise ValueError(f"no scripted expert for {task!r} in {type(self).__name__} (have {', '.join(self.TASKS)})")
        self.task = task
        self.noise = float(noise)
        self.base_config = config or self._default_config(task)
        self.speed_jitter = float(speed_jitter)

    @staticmethod
    def _default_config(task: str) -> ExpertConfig:
        return LIFT_CONFIG if task == "Lift" else CAN_CONFIG

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

    def _grasp_point(self, env) -> np.ndarray:
        """Where the end-effector site closes on the object (world, metres)."""
        obj_pos, _ = self._object_pose(env)
        return obj_pos + np.array([0.0, 0.0, self.cfg.grasp_dz_m])

    def _carry_xy(self, env) -> np.ndarray:
        """End-effector xy that puts the carried object over its target (world, metres)."""
        return self._place_target(env)[:2]

    def _steer_carry(self, env) -> None:
        """Update ``R_des`` while carrying (Can: keep the grasp orientation)."""

    def _close_xy(self, eef_pos: np.ndarray, grasp_point: np.ndarray) -> np.ndarray:
        """Where the gripper holds still while it closes: where the descent ended (Lift, Can)."""
        return eef_pos[:2].copy()

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
        self._prev_obj_pos = None
        eef_pos, eef_rot = self._eef_pose(env)
        self.grasp_xy: np.ndarray | None = None
        self.grasp_z: float | None = None
        obj_pos, obj_rot = self._object_pose(env)
        cur_yaw = float(np.arctan2(eef_rot[1, 0], eef_rot[0, 0]))
        if c.yaw_symmetry_rad:
            obj_yaw = float(np.arctan2(obj_rot[1, 0], obj_rot[0, 0])) + c.grasp_yaw_offset_rad
            k = np.round(_wrap(cur_yaw - obj_yaw) / c.yaw_symmetry_rad)
            self.yaw = _wrap(obj_yaw + k * c.yaw_symmetry_rad)
        else:
            self.yaw = cur_yaw
        self.R_des = _rotz(self.yaw) @ _DOWN

    def _goto(self, env, target: np.ndarray, gripper: float, z_cap: float | None = None) -> tuple[np.ndarray, float]:
        """Proportional step toward ``target`` (world, metres) and ``R_des``; returns (action [7], distance m).

        ``z_cap``: cap the vertical action on its own (|a_z| <= z_cap) and the horizontal one by
        ``max_pos_action``, so a slow descent does not squeeze out the horizontal correction.
        """
        eef_pos, eef_rot = self._eef_pose(env)
        err = target - eef_pos
        base = self._base_rot(env)
        a_world = self.cfg.pos_gain * err / POS_SCALE_M
        if z_cap is None:
            n = np.linalg.norm(a_world)
            if n > self.cfg.max_pos_action:
                a_world *= self.cfg.max_pos_action / n
        else:
            n = np.linalg.norm(a_world[:2])
            if n > self.cfg.max_pos_action:
                a_world[:2] *= self.cfg.max_pos_action / n
            a_world[2] = np.clip(a_world[2], -z_cap, z_cap)
        a_pos = base.T @ a_world
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
        eef_pos, eef_rot = self._eef_pose(env)
        grasp_point = self._grasp_point(env)
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
                self.grasp_xy = self._close_xy(eef_pos, grasp_point)
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
            self._steer_carry(env)
            xy = self._carry_xy(env)
            action, _ = self._goto(env, np.r_[xy, c.carry_z_m], 1.0)
            settled = self._settled(env)
            if (np.linalg.norm(xy - eef_pos[:2]) < c.place_tol_m and self._aligned(env) and settled) or self.phase_steps > 80:
                self._next("lower")
        elif p == "lower":
            self._steer_carry(env)
            xy = self._carry_xy(env)
            action, _ = self._goto(env, np.r_[xy, self._lower_z(env)], 1.0, z_cap=c.lower_z_cap)
            if self._lowered(env) or self.phase_steps > c.lower_max_steps:
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

    # --- placing (Can: the end effector's height decides; Square overrides with the nut's) ----------------------
    def _aligned(self, env) -> bool:
        return True

    def _settled(self, env) -> bool:
        """The carried object has (nearly) stopped: OSC_POSE lags, so an arm still moving at the end of the carry
        overshoots the target by centimetres while it lowers. Moved < ``settle_m`` since the last call."""
        pos, _ = self._object_pose(env)
        prev, self._prev_obj_pos = getattr(self, "_prev_obj_pos", None), pos
        return prev is not None and float(np.linalg.norm(pos[:2] - prev[:2])) < self.cfg.settle_m

    def _lower_z(self, env) -> float:
        return self.cfg.place_z_m

    def _lowered(self, env) -> bool:
        eef_pos, _ = self._eef_pose(env)
        return abs(eef_pos[2] - self.cfg.place_z_m) < 0.015


class NutAssemblyExpert(PickPlaceExpert):
    """Square nut onto the square peg (robosuite ``NutAssemblySquare``): grasp the handle, carry the nut's
    centre over the peg while aligning its hole with the peg, lower, release, move up.

    ``place_z_m`` is the height of the nut's centre (not the gripper's) at release; ``carry_z_m`` is the
    gripper's height while carrying.
    """

    TASKS = ("NutAssemblySquare",)

    def __init__(self, task: str = "NutAssemblySquare", noise: float = 0.1, config: ExpertConfig | None = None,
                 speed_jitter: float = 0.2):
        super().__init__(task, noise=noise, config=config, speed_jitter=speed_jitter)

    @staticmethod
    def _default_config(task: str) -> ExpertConfig:
        return SQUARE_CONFIG

    def _object_pose(self, env) -> tuple[np.ndarray, np.ndarray]:
        body = env.obj_body_id["SquareNut"]
        return np.array(env.sim.data.body_xpos[body]), np.array(env.sim.data.body_xmat[body]).reshape(3, 3)

    def _peg(self, env) -> tuple[np.ndarray, float]:
        body = env.peg1_body_id  # peg1 is the square one
        rot = np.array(env.sim.data.body_xmat[body]).reshape(3, 3)
        return np.array(env.sim.data.body_xpos[body]), float(np.arctan2(rot[1, 0], rot[0, 0]))

    def _grasp_point(self, env) -> np.ndarray:
        # 8 mm beyond the handle site, toward the handle's end: with the fingers (~20 mm wide pads, 80 mm apart
        # when open) centred on the site, a few mm of error toward the nut put a finger on top of the nut's wall
        # (its outer face is 10 mm from the site) and the grasp failed.
        site = env.sim.model.site_name2id(env.nuts[env.nut_id].important_sites["handle"])
        _, rot = self._object_pose(env)
        handle = np.array(env.sim.data.site_xpos[site])
        return handle + HANDLE_GRASP_OFFSET_M * rot[:, 0] + np.array([0.0, 0.0, self.cfg.grasp_dz_m])

    def reset(self, env, rng: np.random.Generator) -> None:
        super().reset(env, rng)
        self.target_nut_yaw: float | None = None  # chosen when the carry starts

    def _nut_yaw(self, env) -> float:
        _, rot = self._object_pose(env)
        return float(np.arctan2(rot[1, 0], rot[0, 0]))

    def _wrist_angle(self, env) -> tuple[float, float, float]:
        """(joint 7 angle, lower limit, upper limit), radians."""
        robot = env.robots[0]
        joint = env.sim.model.joint_name2id(robot.robot_joints[-1])
        lo, hi = env.sim.model.jnt_range[joint]
        return float(env.sim.data.qpos[robot._ref_joint_pos_indexes[-1]]), float(lo), float(hi)

    def _choose_nut_yaw(self, env) -> float:
        """The nut yaw to place at: aligned with the peg (4 choices, π/2 apart), the handle not pointing away
        from the robot, the smallest turn the wrist can make.

        Why: with the handle pointing away (+x), the gripper must be 54 mm beyond the peg, ~0.86 m from the
        shoulder, at the edge of the Panda's reach: the arm stalls 2-3 cm short and the nut sits on the peg's top.
        The wrist (joint 7, ±2.90 rad) turns by about minus the gripper's yaw change, so turns that would take it
        within 0.2 rad of a limit are not considered.
        """
        nut_yaw = self._nut_yaw(env)
        _, peg_yaw = self._peg(env)
        q = np.pi / 2
        e = float((peg_yaw - nut_yaw + q / 2) % q - q / 2)
        q7, lo, hi = self._wrist_angle(env)
        turns = [e + k * q for k in (-2, -1, 0, 1, 2) if abs(e + k * q) <= 3 * np.pi / 4 + 1e-6]
        feasible = [d for d in turns if lo + 0.2 <= q7 - d <= hi - 0.2] or turns
        # handle direction after the turn; cos > 0.5: within ±60° of pointing away from the robot (+x)
        good = [d for d in feasible if np.cos(nut_yaw + d) <= 0.5] or feasible
        return nut_yaw + min(good, key=abs)

    def _yaw_error(self, env) -> float:
        """Target nut yaw minus nut yaw (radians, wrapped to [-π, π)); before the carry, the smallest turn that
        aligns the nut's square hole with the peg ([-π/4, π/4))."""
        if self.target_nut_yaw is None:
            _, peg_yaw = self._peg(env)
            q = np.pi / 2
            return float((peg_yaw - self._nut_yaw(env) + q / 2) % q - q / 2)
        return _wrap(self.target_nut_yaw - self._nut_yaw(env))

    def _steer_carry(self, env) -> None:
        # The nut turns with the gripper (rigid grasp): turn the gripper by the nut's remaining misalignment,
        # at most 0.5 rad ahead (a target near π away would make the axis-angle error's direction ambiguous).
        if self.target_nut_yaw is None:
            self.target_nut_yaw = self._choose_nut_yaw(env)
        _, eef_rot = self._eef_pose(env)
        eef_yaw = float(np.arctan2(eef_rot[1, 0], eef_rot[0, 0]))
        self.R_des = _rotz(eef_yaw + float(np.clip(self._yaw_error(env), -0.5, 0.5))) @ _DOWN

    def _close_xy(self, eef_pos: np.ndarray, grasp_point: np.ndarray) -> np.ndarray:
        # The handle ends ~17 mm beyond the grasp point and a noisy descent can end ~1 cm off it: close on the
        # grasp point itself, not where the descent ended.
        return grasp_point[:2].copy()

    def _carry_xy(self, env) -> np.ndarray:
        # Steer the nut's centre, measured each step, over the peg: gripper target = peg + (gripper - nut).
        nut_pos, _ = self._object_pose(env)
        eef_pos, _ = self._eef_pose(env)
        peg_pos, _ = self._peg(env)
        return peg_pos[:2] + (eef_pos[:2] - nut_pos[:2])

    def _aligned(self, env) -> bool:
        return abs(self._yaw_error(env)) < 0.05

    def _lower_z(self, env) -> float:
        # Above the peg's top, descend only while the nut's centre is within the clearance of the peg's axis;
        # otherwise hold the nut 20 mm above the top (never below where it is) while the horizontal correction
        # catches up. Once the nut is around the peg, the peg keeps it centred: keep going down.
        nut_pos, _ = self._object_pose(env)
        eef_pos, _ = self._eef_pose(env)
        peg_pos, _ = self._peg(env)
        peg_top = peg_pos[2] + PEG_HALF_HEIGHT_M
        nut_z = self.cfg.place_z_m
        if nut_pos[2] - NUT_HALF_THICKNESS_M > peg_top - 0.005 and self._off_axis(env) > self.cfg.place_tol_m:
            nut_z = max(nut_pos[2], peg_top + 0.02)
        return nut_z + (eef_pos[2] - nut_pos[2])

    def _off_axis(self, env) -> float:
        """Largest of the nut centre's x and y offsets from the peg's axis, metres (the hole and peg are squares
        aligned with the world axes once the nut is turned to the peg's yaw, which is 0)."""
        nut_pos, _ = self._object_pose(env)
        peg_pos, _ = self._peg(env)
        return float(np.max(np.abs(nut_pos[:2] - peg_pos[:2])))

    def _lowered(self, env) -> bool:
        nut_pos, _ = self._object_pose(env)
        return nut_pos[2] < self.cfg.place_z_m + 0.005
