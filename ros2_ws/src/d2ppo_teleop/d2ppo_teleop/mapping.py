"""Operator input -> one normalised OSC_POSE delta action, the same 7-D action a policy outputs.

The teleop node publishes these actions as 1-step action chunks, so a teleoperated arm goes through
the controller's executor and safety envelope exactly like a policy-driven one, and the recorder
stores exactly what a policy has to learn to output.

Action layout (DESIGN.md): ``[x, y, z, roll, pitch, yaw, gripper]`` in [-1, 1]; full scale is
0.05 m and 0.5 rad per step in the robot base frame; gripper +1 closes, -1 opens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

GRIPPER_OPEN = -1.0
GRIPPER_CLOSED = 1.0


@dataclass(frozen=True)
class TeleopInput:
    """What an input device reports at one moment.

    Attributes:
        motion: ``[6]`` in [-1, 1], device axes (x, y, z, roll, pitch, yaw) before the axis map.
        toggles: gripper-toggle presses since the previous read.
        last_active: seconds (monotonic clock of the source) of the newest input event that holds
            ``motion``; None if there was none. Older than the deadman timeout -> zero motion.
    """

    motion: np.ndarray
    toggles: int = 0
    last_active: float | None = None

    @staticmethod
    def idle() -> TeleopInput:
        return TeleopInput(motion=np.zeros(6))


def parse_axis_map(axis_map: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Signed 1-based device-axis indices -> (index [6], sign [6]).

    ``axis_map[i] = s * (j + 1)`` makes action axis ``i`` = ``s *`` device axis ``j``; e.g.
    ``[-2, 1, 3, -5, 4, 6]`` maps device +y to action -x and device +x to action +y (an operator
    standing at the robot's side). Each device axis must be used exactly once.
    """
    m = [int(v) for v in axis_map]
    if len(m) != 6 or sorted(abs(v) for v in m) != [1, 2, 3, 4, 5, 6]:
        raise ValueError(f"axis_map must be a signed permutation of 1..6 (e.g. [1, 2, 3, 4, 5, 6]), got {m}")
    return np.array([abs(v) - 1 for v in m]), np.array([1.0 if v > 0 else -1.0 for v in m])


def apply_deadzone(values: np.ndarray, deadzone: float) -> np.ndarray:
    """Zero components with ``|v| <= deadzone`` and rescale the rest so the output is continuous in [-1, 1].

    A SpaceMouse at rest reports small non-zero values; without a deadzone the arm would creep.
    """
    mag = np.abs(values)
    scaled = np.clip((mag - deadzone) / max(1e-9, 1.0 - deadzone), 0.0, 1.0)
    return np.sign(values) * scaled


class TeleopMapper:
    """Turns :class:`TeleopInput` into actions; keeps the gripper state (toggled by button presses).

    Args:
        pos_gain: action units per unit of device deflection on x, y, z (0.3 -> 0.015 m per step
            at full deflection = 0.3 m/s at 20 Hz).
        rot_gain: the same for roll, pitch, yaw (0.1 -> 0.05 rad per step = 1 rad/s at 20 Hz).
        deadzone: device deflection treated as zero, [0, 1).
        input_timeout: seconds; deadman: without an input event for this long the motion is zero
            (a crashed or unplugged device must not keep the arm moving).
        axis_map: see :func:`parse_axis_map`.
        gripper_closed: initial gripper state.
    """

    def __init__(self, pos_gain: float = 0.3, rot_gain: float = 0.1, deadzone: float = 0.05,
                 input_timeout: float = 0.25, axis_map: Sequence[int] = (1, 2, 3, 4, 5, 6),
                 gripper_closed: bool = False):
        if not (0.0 <= deadzone < 1.0):
            raise ValueError(f"deadzone must be in [0, 1), got {deadzone}")
        if input_timeout <= 0.0:
            raise ValueError(f"input_timeout must be > 0 s, got {input_timeout}")
        self.gains = np.array([pos_gain] * 3 + [rot_gain] * 3, dtype=np.float64)
        self.deadzone = float(deadzone)
        self.input_timeout = float(input_timeout)
        self._index, self._sign = parse_axis_map(axis_map)
        self.gripper = GRIPPER_CLOSED if gripper_closed else GRIPPER_OPEN
        self.deadman_active = True  # True while the last action had its motion zeroed for lack of input

    def action(self, inp: TeleopInput, now: float) -> np.ndarray:
        """float64 ``[7]`` normalised OSC_POSE delta action for the tick at ``now`` (source clock, seconds)."""
        if inp.toggles % 2 == 1:
            self.gripper = GRIPPER_OPEN if self.gripper == GRIPPER_CLOSED else GRIPPER_CLOSED
        out = np.zeros(7, dtype=np.float64)
        out[6] = self.gripper
        motion = np.asarray(inp.motion, dtype=np.float64).reshape(6)
        fresh = inp.last_active is not None and now - inp.last_active <= self.input_timeout
        self.deadman_active = not fresh
        if fresh and np.all(np.isfinite(motion)):
            device = apply_deadzone(np.clip(motion, -1.0, 1.0), self.deadzone)
            out[:6] = np.clip(self._sign * device[self._index] * self.gains, -1.0, 1.0)
        return out


def choose_stamp(now: float, state_stamp: float | None, last_stamp: float | None, max_state_age: float) -> float:
    """``header.stamp`` of the next teleop chunk, seconds.

    The newest robot-state stamp (what the operator's command responds to), unless it is missing, no
    newer than the previous chunk's stamp (the executor ignores a chunk whose stamp does not increase)
    or older than ``max_state_age`` (the executor drops actions that are overdue by more than one
    period); then ``now``. The result always increases from chunk to chunk.
    """
    if state_stamp is not None and now - state_stamp <= max_state_age and (last_stamp is None or state_stamp > last_stamp):
        return state_stamp
    if last_stamp is not None and now <= last_stamp:
        return last_stamp + 1e-6
    return now
