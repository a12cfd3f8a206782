"""The action chunk: what a policy hands to the executor of a robot (real or simulated).

A chunk is a short open-loop plan of ``T`` actions (D²PPO: horizon 4, all 4 executed) computed from one
observation. It carries its own timing so the executor can run action ``i`` at ``stamp + i * period`` and
drop the actions whose time has passed by the time the chunk arrives (inference latency).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Names of the 7 action dimensions, in order; also the ``joint_names`` of the ROS message.
#: robosuite OSC_POSE delta: position (x, y, z), axis-angle rotation (roll, pitch, yaw), gripper.
JOINT_NAMES: tuple[str, ...] = ("x", "y", "z", "roll", "pitch", "yaw", "gripper")
ACTION_DIM = len(JOINT_NAMES)
#: Who may produce chunks; a chunk message names its source in ``header.frame_id`` and a controller executes
#: only the active source's chunks (``source`` parameter of the franka and sim nodes).
SOURCES: tuple[str, ...] = ("policy", "teleop")


@dataclass(frozen=True)
class ActionChunk:
    """A time-stamped sequence of normalised OSC_POSE delta actions.

    Attributes:
        stamp: seconds; time of the newest observation the chunk was computed from (ROS or sim time).
        period: seconds between consecutive actions (1 / control rate), > 0.
        actions: float64 ``[T, 7]``; robosuite OSC_POSE delta convention normalised to [-1, 1]
            (full scale = 0.05 m and 0.5 rad per step in the base frame); gripper > 0 closes.
        source: who produced it ("policy", "teleop"; "" when unknown), carried in ``header.frame_id``.
    """

    stamp: float
    period: float
    actions: np.ndarray
    source: str = ""

    def __post_init__(self) -> None:
        actions = np.array(self.actions, dtype=np.float64)  # own copy: the chunk is immutable
        if actions.ndim != 2 or actions.shape[1] != ACTION_DIM or actions.shape[0] < 1:
            raise ValueError(f"ActionChunk.actions must have shape [T>=1, {ACTION_DIM}], got {actions.shape}")
        if not (np.isfinite(self.period) and self.period > 0.0):
            raise ValueError(f"ActionChunk.period must be a positive number of seconds, got {self.period}")
        if not np.isfinite(self.stamp):
            raise ValueError(f"ActionChunk.stamp must be finite, got {self.stamp}")
        actions.setflags(write=False)
        object.__setattr__(self, "actions", actions)
        object.__setattr__(self, "stamp", float(self.stamp))
        object.__setattr__(self, "period", float(self.period))

    def __len__(self) -> int:
        return int(self.actions.shape[0])

    def time_of(self, i: int) -> float:
        """Seconds at which action ``i`` is due: ``stamp + i * period``."""
        return self.stamp + i * self.period

    @property
    def end_time(self) -> float:
        """Seconds at which the last action is due."""
        return self.time_of(len(self) - 1)

    def is_finite(self) -> bool:
        return bool(np.isfinite(self.actions).all())
