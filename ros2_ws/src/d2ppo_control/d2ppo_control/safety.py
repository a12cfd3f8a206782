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
  than ``max_rotation_per_step`` -> **clipped**: scaled down along the same direction, counted. The motion
  the policy asked for keeps its direction, only its size is bounded.

Every outcome is counted by reason in :attr:`SafetyEnvelope.counters`; ``/diagnostics`` publishes them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from d2ppo_control.chunk import ACTION_DIM

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
        problems = []
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
    """

    status: str
    action: np.ndarray | None
    reason: str = ""
    target_pos: np.ndarray | None = None

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

    def check(self, action: np.ndarray, ee_pos: np.ndarray, dt: float) -> SafetyDecision:
        """Check one action.

        Args:
            action: ``[7]`` normalised OSC_POSE delta (see :class:`~d2ppo_control.chunk.ActionChunk`).
            ee_pos: ``[3]`` metres, the base-frame end-effector position the delta is applied to.
            dt: seconds the step takes (the action period); used for the velocity limit.
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

        target = ee_pos + step
        lo, hi = np.array(lim.workspace_min), np.array(lim.workspace_max)
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
            return SafetyDecision(CLIPPED, out, ",".join(reasons), target)
        self.counters["accepted"] += 1
        return SafetyDecision(ACCEPTED, out, "", target)

    def in_workspace(self, pos: np.ndarray) -> bool:
        pos = np.asarray(pos, dtype=np.float64)
        return bool(
            (pos >= np.array(self.limits.workspace_min)).all() and (pos <= np.array(self.limits.workspace_max)).all()
        )
