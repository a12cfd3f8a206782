"""robosuite's closed-loop OSC_POSE response as a reference model, so a real arm moves like the sim arm did.

What robosuite 1.5 does with one delta action (``controllers/parts/arm/osc.py``, ``goal_update_mode="achieved"``,
control 20 Hz, physics 500 Hz, kp 150, damping ratio 1): at the control step the goal is set to the *measured*
pose + delta; then for 25 physics steps the controller applies ``F = Λ (kp·(goal − x) − kd·ẋ)``, i.e. (with Λ the
operational-space inertia) a unit-mass critically damped spring towards the goal. The next action moves the goal
again from wherever the arm got to, so the arm never reaches a goal while actions keep coming. Measured in robosuite
(Lift, no cameras): four actions of +0.5 in x (goal 25 mm ahead each) moved the end effector 19 mm by the 4th
tick and it came to rest at 25 mm; twenty moved it 119.7 mm by the 20th tick (6.3-6.4 mm per step in steady state,
not the nominal 25 mm) and it came to rest at 129 mm.

:class:`OscResponse` integrates the same law on a model state (pose, velocity) instead of the arm: each control
step the goal is the *model* pose + delta, and ``substeps`` explicit steps of ``dt`` integrate
``ẍ = kp·(goal − x) − kd·ẋ`` (translation, base frame) and ``ω̇ = kp_rot·e − kd_rot·ω`` with ``e = axis·sin(angle)`` of the rotation from the current to the goal
orientation (robosuite's ``orientation_error``, base frame). The model pose
after the step is what the arm should be at one control period later: the franka controller sends it to franky as
the target (``ControllerConfig.response: robosuite``) instead of "previous target + full delta".

Calibration (``python -m d2ppo_franka.parity --calibrate``: least squares of the model against robosuite's measured
responses to steps of ±x, ±y, ±z at 0.5 for 4 and 20 actions, x at full scale, a ramp, and rotations about x, y and
z at 0.1-0.9). With robosuite's nominal gains (kp 150, kd 2·√150 = 24.5) the model runs up to 10 mm ahead of
robosuite's arm after 20 steps: the simulated arm is slower than its controller's spring (joint damping, armature and
friction the OSC does not cancel). The fitted gains below reproduce the translations to 2.3 mm RMS (nominal 3.5 mm)
and the rotations to 45 mrad RMS (nominal 97; what is left is robosuite's cross-axis coupling, e.g. 82 mrad about
other axes while it rolls about x, which a decoupled model does not have). Parity figures: the README of d2ppo_franka.

Units: metres, radians, seconds; quaternions ``[x, y, z, w]``; base frame (``panda_link0``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from d2ppo_control.osc import axis_angle_to_quat, quat_multiply, quat_normalize

#: robosuite's physics rate (Lift: model timestep 0.002 s) and the policy's control rate.
PHYSICS_DT = 0.002
CONTROL_PERIOD = 0.05


@dataclass(frozen=True)
class OscGains:
    """Gains of the emulated OSC, per unit mass: ``ẍ = kp·(goal − x) − kd·ẋ`` (1/s², 1/s).

    The defaults are fitted to robosuite 1.5.2's Panda (``--calibrate``); robosuite's own nominal values are
    ``OscGains.nominal()`` (kp 150, critically damped).
    """

    kp: float = 81.9
    kd: float = 14.0
    kp_rot: float = 78.2
    kd_rot: float = 16.0
    #: m/s and rad/s: speeds the emulated arm does not exceed. robosuite's arm saturates in rotation (its wrist
    #: torques are clipped at 12 Nm): at 0.45 rad per step it turned 62 mrad per step where the linear spring
    #: gives 104. No translational limit showed up to full scale (0.05 m per step).
    max_speed: float = float("inf")
    max_angular_speed: float = 1.4
    #: seconds per integration step (robosuite's physics step) and integration steps per control period.
    dt: float = PHYSICS_DT
    substeps: int = 25

    def __post_init__(self) -> None:
        for name in ("kp", "kd", "kp_rot", "kd_rot", "max_speed", "max_angular_speed", "dt"):
            value = float(getattr(self, name))
            if not (value > 0.0 and (np.isfinite(value) or name.startswith("max_"))):
                raise ValueError(f"OscGains.{name} must be a positive number, got {getattr(self, name)!r}")
        if int(self.substeps) < 1:
            raise ValueError(f"OscGains.substeps must be >= 1, got {self.substeps}")
        # explicit integration of a stiff spring: stable only while dt is small against its time constants
        if max(self.kd, self.kd_rot) * self.dt >= 1.0 or max(self.kp, self.kp_rot) * self.dt**2 >= 1.0:
            raise ValueError(f"OscGains: dt {self.dt} s is too coarse for kp/kd {self}")

    @classmethod
    def nominal(cls) -> OscGains:
        """robosuite's configured gains: kp 150, damping ratio 1 (kd = 2·√kp)."""
        kd = 2.0 * np.sqrt(150.0)
        return cls(kp=150.0, kd=kd, kp_rot=150.0, kd_rot=kd, max_speed=float("inf"), max_angular_speed=float("inf"))

    @property
    def period(self) -> float:
        """Seconds of motion one step integrates (robosuite: 25 × 2 ms = one 20 Hz control period)."""
        return self.dt * self.substeps


class OscResponse:
    """Pose and velocity of an emulated robosuite arm, advanced one control step per delta.

    Args:
        pos: ``[3]`` m, start position (the model starts at rest).
        quat: ``[4]`` xyzw, start orientation.
        gains: the emulated controller.
    """

    def __init__(self, pos: np.ndarray, quat: np.ndarray, gains: OscGains | None = None):
        self.gains = gains or OscGains()
        self.reset(pos, quat)

    def reset(self, pos: np.ndarray, quat: np.ndarray) -> None:
        """Put the model at rest at ``pos``/``quat``."""
        self.pos = np.array(pos, dtype=np.float64).reshape(3)
        self.quat = quat_normalize(np.asarray(quat, dtype=np.float64).reshape(4))
        self.stop()

    def stop(self) -> None:
        """Zero the velocities, keeping the pose (the arm is held where the model is)."""
        self.vel = np.zeros(3)
        self.ang_vel = np.zeros(3)

    def hold_position(self, pos: np.ndarray) -> None:
        """Put the translation at rest at ``pos`` (the orientation part keeps moving)."""
        self.pos = np.array(pos, dtype=np.float64).reshape(3)
        self.vel = np.zeros(3)

    def hold_orientation(self, quat: np.ndarray) -> None:
        """Put the rotation at rest at ``quat`` (the translation part keeps moving)."""
        self.quat = quat_normalize(np.asarray(quat, dtype=np.float64).reshape(4))
        self.ang_vel = np.zeros(3)

    @property
    def at_rest(self) -> bool:
        """True when both velocities are exactly zero (after reset/stop/holds): a zero delta leaves it still."""
        return not (np.any(self.vel) or np.any(self.ang_vel))

    @property
    def speed(self) -> float:
        """m/s, translational speed of the model."""
        return float(np.linalg.norm(self.vel))

    @property
    def angular_speed(self) -> float:
        """rad/s."""
        return float(np.linalg.norm(self.ang_vel))

    def step(self, delta_pos: np.ndarray, delta_rot: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One control step: goal = model pose + delta (robosuite's "achieved" goal update, the model standing in
        for the measured pose), then ``substeps`` integration steps of the spring towards it.

        Args:
            delta_pos: ``[3]`` m, base-frame translation (a scaled OSC_POSE action).
            delta_rot: ``[3]`` rad, base-frame rotation vector, applied on the left like robosuite.
        Returns:
            ``(pos [3], quat [4] xyzw)``: the model pose after the step (copies).
        """
        g = self.gains
        goal_pos = self.pos + np.asarray(delta_pos, dtype=np.float64).reshape(3)
        goal_quat = quat_normalize(
            quat_multiply(axis_angle_to_quat(np.asarray(delta_rot, dtype=np.float64)), self.quat)
        )
        pos, vel, quat, ang_vel = self.pos, self.vel, self.quat, self.ang_vel
        for _ in range(g.substeps):
            # semi-implicit Euler, like MuJoCo's default integrator: velocity first, then position with it
            vel = _capped(vel + (g.kp * (goal_pos - pos) - g.kd * vel) * g.dt, g.max_speed)
            pos = pos + vel * g.dt
            err = _orientation_error(goal_quat, quat)
            ang_vel = _capped(ang_vel + (g.kp_rot * err - g.kd_rot * ang_vel) * g.dt, g.max_angular_speed)
            quat = quat_normalize(quat_multiply(axis_angle_to_quat(ang_vel * g.dt), quat))
        if quat[3] < 0.0:
            quat = -quat  # canonical hemisphere, like delta_to_target
        self.pos, self.vel, self.quat, self.ang_vel = pos, vel, quat, ang_vel
        return self.pos.copy(), self.quat.copy()

    def step_action(
        self, action: np.ndarray, pos_scale: float = 0.05, rot_scale: float = 0.5
    ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`step` for a normalised OSC_POSE action ``[>=6]`` (clipped to [-1, 1] like robosuite)."""
        a = np.clip(np.asarray(action, dtype=np.float64)[:6], -1.0, 1.0)
        return self.step(a[:3] * pos_scale, a[3:6] * rot_scale)

    def rollout(
        self, actions: np.ndarray, pos_scale: float = 0.05, rot_scale: float = 0.5
    ) -> tuple[np.ndarray, np.ndarray]:
        """Poses after each of ``actions`` ``[N, >=6]`` (normalised), from the current state.

        Returns:
            ``(pos [N + 1, 3], quat [N + 1, 4])``: row 0 is the pose before the first action.
        """
        pos, quat = [self.pos.copy()], [self.quat.copy()]
        for a in np.asarray(actions, dtype=np.float64):
            p, q = self.step_action(a, pos_scale, rot_scale)
            pos.append(p)
            quat.append(q)
        return np.array(pos), np.array(quat)


def _conjugate(q: np.ndarray) -> np.ndarray:
    return np.array([-q[0], -q[1], -q[2], q[3]])


def _capped(v: np.ndarray, limit: float) -> np.ndarray:
    n = float(np.linalg.norm(v))
    return v * (limit / n) if n > limit else v


def _orientation_error(goal: np.ndarray, current: np.ndarray) -> np.ndarray:
    """robosuite's ``orientation_error``: ``axis · sin(angle)`` of the base-frame rotation from ``current`` to
    ``goal`` (the vee of the skew part of ``R_goal R_currentᵀ``); for ``q = goal ⊗ current⁻¹`` that is
    ``2·w·(x, y, z)``."""
    d = quat_multiply(goal, _conjugate(current))
    return 2.0 * d[3] * d[:3]
