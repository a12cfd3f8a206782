"""The safety envelope: the one gate every action passes before it reaches a robot (real or simulated).

Safety lives on the controller side, never in the policy (DESIGN.md). franky-sim enforces no limits at
all and a real arm only trips reflexes once something already went wrong, so the envelope checks each
action against limits the user sets in ``launch/safety.yaml``:

* non-finite values, a wrong shape or components outside [-1, 1] -> **rejected** (a broken policy or
  message; nothing sensible to execute);
* an end-effector target outside the workspace box -> **rejected** by default (``workspace_mode:
  reject``), so the robot holds and the rejection is counted; ``workspace_mode: clip`` instead clips the
  target onto the box (the policy can then slide along a wall) and counts ``clipped_workspace``;
* a step longer than ``max_translation_per_step`` or faster than ``max_velocity``, or a rotation larger
  than ``max_rotation_per_step`` or faster than ``max_angular_velocity`` -> **clipped**: scaled down along
  the same direction, counted. The motion the policy asked for keeps its direction, only its size is bounded;
* orientation (when the caller passes the orientation the delta applies to): the tool axis (the
  end-effector's z axis, pointing out of the gripper) must stay within ``max_tool_tilt`` of
  ``tool_axis_nominal`` (default: pointing down, ±45°). A rotation that would take the tool further out
  of that cone is dropped (``clipped_orientation``; the translation still runs); one that brings an
  outside tool back towards the cone is allowed;
* the box applies to the fingertips as well as the TCP: with the orientation known, the fingertips at
  ``±finger_half_span`` along the tool's y axis (the fingers' travel direction, fully open) must be inside
  it too, i.e. the TCP must stay inside the box shrunk by the fingers' reach along each axis.

Every outcome is counted by reason in :attr:`SafetyEnvelope.counters`; ``/diagnostics`` publishes them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from d2ppo_control.chunk import ACTION_DIM
from d2ppo_control.osc import axis_angle_to_quat, quat_multiply, quat_normalize, quat_to_matrix

ACCEPTED = "accepted"
CLIPPED = "clipped"
REJECTED = "rejected"

#: Every counter the envelope keeps; all start at 0 so diagnostics always show the full set.
COUNTER_NAMES = (
    "accepted",
    "clipped_translation",
    "clipped_rotation",
    "clipped_velocity",
    "clipped_workspace",
    "clipped_angular_velocity",
    "clipped_orientation",
    "rejected_non_finite",
    "rejected_bad_shape",
    "rejected_out_of_range",
    "rejected_workspace",
)

#: Normalised actions may exceed 1 by float rounding (e.g. after unnormalisation) but not by more.
_RANGE_EPS = 1e-6


@dataclass
class SafetyLimits:
    """Limits of the safety envelope; each field is a parameter under ``safety.`` in launch/safety.yaml.

    Positions are of the end-effector target in the robot base frame (``panda_link0``), metres.
    The default box is a conservative table-top workspace in front of a table-mounted Panda/FR3 (base on
    the table surface, z up): 0.25–0.75 m in front of the base, ±0.35 m sideways, 0.02–0.70 m above the
    base plane — it keeps the hand out of the robot's own column and off the table surface.
    """

    workspace_min: tuple[float, float, float] = (0.25, -0.35, 0.02)
    workspace_max: tuple[float, float, float] = (0.75, 0.35, 0.70)
    #: "reject" (hold, count ``rejected_workspace``) or "clip" (clip target onto the box).
    workspace_mode: str = "reject"
    #: metres per action; robosuite's full scale on one axis is 0.05 m.
    max_translation_per_step: float = 0.03
    #: radians per action; robosuite's full scale on one axis is 0.5 rad.
    max_rotation_per_step: float = 0.3
    #: m/s, step length / action period. 0.5 m/s at 20 Hz = 0.025 m per step.
    max_velocity: float = 0.5
    #: rad/s, rotation angle / action period. 1.0 rad/s at 20 Hz = 0.05 rad per step.
    max_angular_velocity: float = 1.0
    #: unit vector (base frame) the tool's z axis points along in the nominal orientation (default down).
    tool_axis_nominal: tuple[float, float, float] = (0.0, 0.0, -1.0)
    #: rad: largest angle between the tool's z axis and tool_axis_nominal (the orientation cone).
    max_tool_tilt: float = 0.785
    #: m: fingertip distance from the TCP along the tool's y axis with the gripper fully open (Franka Hand:
    #: 0.08 m opening); the box applies to both fingertips. 0 checks the TCP only.
    finger_half_span: float = 0.04
    #: seconds without a valid chunk after which the executor holds the robot.
    watchdog_timeout: float = 0.5
    #: franky reflex errors: recover_from_errors() attempts before the controller latches a hold.
    max_reflex_retries: int = 3
    #: metres per unit action and radians per unit action (robosuite Panda OSC_POSE output limits).
    pos_scale: float = 0.05
    rot_scale: float = 0.5

    def __post_init__(self) -> None:
        self.workspace_min = tuple(float(v) for v in self.workspace_min)
        self.workspace_max = tuple(float(v) for v in self.workspace_max)
        self.tool_axis_nominal = tuple(float(v) for v in self.tool_axis_nominal)
        problems = []
        axis = np.asarray(self.tool_axis_nominal)
        if axis.shape != (3,) or not np.isfinite(axis).all() or np.linalg.norm(axis) < 1e-6:
            problems.append(f"tool_axis_nominal must be a non-zero 3-vector, got {self.tool_axis_nominal}")
        else:
            self.tool_axis_nominal = tuple(float(v) for v in axis / np.linalg.norm(axis))
        self.max_tool_tilt = float(self.max_tool_tilt)
        if not (0.0 < self.max_tool_tilt <= np.pi):
            problems.append(f"max_tool_tilt must be in (0, pi] rad, got {self.max_tool_tilt}")
        self.finger_half_span = float(self.finger_half_span)
        if not (np.isfinite(self.finger_half_span) and self.finger_half_span >= 0.0):
            problems.append(f"finger_half_span must be >= 0 m, got {self.finger_half_span}")
        if len(self.workspace_min) != 3 or len(self.workspace_max) != 3:
            problems.append("workspace_min/workspace_max need 3 values (x, y, z)")
        elif not all(lo < hi for lo, hi in zip(self.workspace_min, self.workspace_max)):
            problems.append(f"workspace_min {self.workspace_min} must be below workspace_max {self.workspace_max}")
        if self.workspace_mode not in ("reject", "clip"):
            problems.append(f"workspace_mode must be 'reject' or 'clip', got {self.workspace_mode!r}")
        for name in (
            "max_translation_per_step",
            "max_rotation_per_step",
            "max_velocity",
            "max_angular_velocity",
            "watchdog_timeout",
            "pos_scale",
            "rot_scale",
        ):
            value = float(getattr(self, name))
            if not (np.isfinite(value) and value > 0.0):
                problems.append(f"{name} must be a positive number, got {getattr(self, name)!r}")
            setattr(self, name, value)
        if int(self.max_reflex_retries) < 0:
            problems.append(f"max_reflex_retries must be >= 0, got {self.max_reflex_retries}")
        self.max_reflex_retries = int(self.max_reflex_retries)
        if problems:
            raise ValueError("invalid safety limits: " + "; ".join(problems))

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SafetyLimits:
        """Limits from a flat mapping; unknown keys are an error (a typo must not silently disable a limit)."""
        unknown = sorted(set(values) - set(cls.field_names()))
        if unknown:
            raise ValueError(f"unknown safety parameter(s) {unknown}; known: {list(cls.field_names())}")
        return cls(**values)

    @classmethod
    def from_yaml(cls, path: str | Path) -> SafetyLimits:
        """Limits from a YAML file: a flat mapping, ``{safety: {...}}``, or a ROS 2 parameter file
        (``<node or /**>: {ros__parameters: {safety: {...}}}``) such as launch/safety.yaml."""
        import yaml  # only needed here; the core stays importable without it

        path = Path(path)
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping at the top level")
        for value in data.values():
            if isinstance(value, dict) and "ros__parameters" in value:
                data = value["ros__parameters"] or {}
                break
        if "safety" in data:
            data = data["safety"] or {}
        try:
            return cls.from_dict(data)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{path}: {e}") from e

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


@dataclass(frozen=True)
class SafetyDecision:
    """Outcome of :meth:`SafetyEnvelope.check` for one action.

    Attributes:
        status: "accepted", "clipped" or "rejected".
        action: ``[7]`` normalised action to execute (clipped where needed); None when rejected.
        reason: "" when accepted, otherwise the counter names that applied, comma separated.
        target_pos: ``[3]`` metres, end-effector target in the base frame; None when rejected.
        target_quat: ``[4]`` xyzw target orientation; None when rejected or no orientation was given.
    """

    status: str
    action: np.ndarray | None
    reason: str = ""
    target_pos: np.ndarray | None = None
    target_quat: np.ndarray | None = None

    @property
    def ok(self) -> bool:
        return self.status != REJECTED


@dataclass
class SafetyEnvelope:
    """Checks, clips or rejects single actions against :class:`SafetyLimits`; counts every outcome."""

    limits: SafetyLimits
    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTER_NAMES, 0))

    def _reject(self, reason: str) -> SafetyDecision:
        self.counters[reason] += 1
        return SafetyDecision(REJECTED, None, reason)

    def check(
        self, action: np.ndarray, ee_pos: np.ndarray, dt: float, ee_quat: np.ndarray | None = None
    ) -> SafetyDecision:
        """Check one action.

        Args:
            action: ``[7]`` normalised OSC_POSE delta (see :class:`~d2ppo_control.chunk.ActionChunk`).
            ee_pos: ``[3]`` metres, the base-frame end-effector position the delta is applied to.
            dt: seconds the step takes (the action period); used for the velocity limits.
            ee_quat: ``[4]`` xyzw, the base-frame orientation the delta is applied to. With it the
                orientation cone and the fingertips are checked too; controllers always pass it.
        """
        lim = self.limits
        a = np.asarray(action, dtype=np.float64)
        if a.shape != (ACTION_DIM,):
            return self._reject("rejected_bad_shape")
        if not np.isfinite(a).all():
            return self._reject("rejected_non_finite")
        if np.abs(a).max() > 1.0 + _RANGE_EPS:
            return self._reject("rejected_out_of_range")
        ee_pos = np.asarray(ee_pos, dtype=np.float64)
        if ee_pos.shape != (3,) or not np.isfinite(ee_pos).all():
            raise ValueError(f"ee_pos must be 3 finite metres, got {ee_pos}")  # a caller bug, not a policy fault
        a = np.clip(a, -1.0, 1.0)
        reasons: list[str] = []

        # Translation: bound the step length, then the speed; both keep the direction.
        step = a[:3] * lim.pos_scale
        length = float(np.linalg.norm(step))
        max_len = lim.max_translation_per_step
        if length > max_len * (1.0 + 1e-9):
            reasons.append("clipped_translation")
            step *= max_len / length
            length = max_len
        if dt > 0.0 and length > lim.max_velocity * dt * (1.0 + 1e-9):
            reasons.append("clipped_velocity")
            step *= lim.max_velocity * dt / length

        rot = a[3:6] * lim.rot_scale
        angle = float(np.linalg.norm(rot))
        if angle > lim.max_rotation_per_step * (1.0 + 1e-9):
            reasons.append("clipped_rotation")
            rot *= lim.max_rotation_per_step / angle
            angle = lim.max_rotation_per_step
        if dt > 0.0 and angle > lim.max_angular_velocity * dt * (1.0 + 1e-9):
            reasons.append("clipped_angular_velocity")
            rot *= lim.max_angular_velocity * dt / angle

        target_quat = None
        lo, hi = np.array(lim.workspace_min), np.array(lim.workspace_max)
        if ee_quat is not None:
            ee_quat = quat_normalize(np.asarray(ee_quat, dtype=np.float64))
            target_quat = quat_normalize(quat_multiply(axis_angle_to_quat(rot), ee_quat))
            if (
                np.any(rot)
                and self.tool_tilt(target_quat) > lim.max_tool_tilt
                and (self.tool_tilt(target_quat) > self.tool_tilt(ee_quat) + 1e-9)
            ):
                reasons.append("clipped_orientation")
                rot = np.zeros(3)
                target_quat = ee_quat
            lo, hi = self.tcp_box(target_quat)

        target = ee_pos + step
        if (target < lo).any() or (target > hi).any():
            if lim.workspace_mode == "reject":
                return self._reject("rejected_workspace")
            target = np.clip(target, lo, hi)
            step = target - ee_pos
            # From outside the box the clipped target can be far away: never turn that into a jump.
            if np.linalg.norm(step) > min(max_len, lim.max_velocity * dt if dt > 0.0 else max_len) * (1.0 + 1e-9):
                return self._reject("rejected_workspace")
            reasons.append("clipped_workspace")

        out = np.concatenate([step / lim.pos_scale, rot / lim.rot_scale, a[6:7]])
        if reasons:
            for r in reasons:
                self.counters[r] += 1
            return SafetyDecision(CLIPPED, out, ",".join(reasons), target, target_quat)
        self.counters["accepted"] += 1
        return SafetyDecision(ACCEPTED, out, "", target, target_quat)

    def tcp_box(self, quat_xyzw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(lo, hi) the TCP must stay within at this orientation: the fingertips at TCP ± finger_half_span · y_tool
        are inside the workspace box  <=>  the TCP is inside the box shrunk by finger_half_span · |y_tool|."""
        lim = self.limits
        reach = lim.finger_half_span * np.abs(quat_to_matrix(quat_xyzw)[:, 1])
        return np.array(lim.workspace_min) + reach, np.array(lim.workspace_max) - reach

    def pose_problem(self, pos: np.ndarray, quat_xyzw: np.ndarray, cone: bool = True) -> str | None:
        """Why an absolute end-effector pose is outside the envelope (TCP or a fingertip outside the box, tool
        outside the orientation cone), or None when it is inside. Counts nothing (for targets that do not
        come from chunks, e.g. the home pose)."""
        lim = self.limits
        tilt = self.tool_tilt(quat_xyzw)
        if cone and tilt > lim.max_tool_tilt:
            return f"tilts the tool {tilt:.3f} rad from tool_axis_nominal (max_tool_tilt {lim.max_tool_tilt})"
        pos = np.asarray(pos, dtype=np.float64)
        lo, hi = self.tcp_box(quat_xyzw)
        if (pos < lo).any() or (pos > hi).any():
            return f"puts the TCP or a fingertip outside the workspace box {lim.workspace_min}..{lim.workspace_max}"
        return None

    def pose_violation(self, pos: np.ndarray, quat_xyzw: np.ndarray) -> float:
        """How far a pose is outside the envelope: metres of the TCP/fingertips outside the box plus radians of
        tilt beyond the cone (0 inside). A step from outside may shrink this, never grow it."""
        lim = self.limits
        pos = np.asarray(pos, dtype=np.float64)
        lo, hi = self.tcp_box(quat_xyzw)
        outside = float(np.sum(np.maximum(lo - pos, 0.0)) + np.sum(np.maximum(pos - hi, 0.0)))
        return outside + max(0.0, self.tool_tilt(quat_xyzw) - lim.max_tool_tilt)

    def tool_tilt(self, quat_xyzw: np.ndarray) -> float:
        """Angle (rad) between the tool's z axis at orientation ``quat_xyzw`` and ``tool_axis_nominal``."""
        z = quat_to_matrix(quat_xyzw)[:, 2]
        return float(np.arccos(np.clip(float(np.dot(z, self.limits.tool_axis_nominal)), -1.0, 1.0)))

    def in_workspace(self, pos: np.ndarray) -> bool:
        pos = np.asarray(pos, dtype=np.float64)
        return bool(
            (pos >= np.array(self.limits.workspace_min)).all() and (pos <= np.array(self.limits.workspace_max)).all()
        )
