"""Conversions between the plain-Python control types and ROS 2 messages (the only ROS imports here)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from builtin_interfaces.msg import Duration, Time
from diagnostic_msgs.msg import DiagnosticStatus, KeyValue
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from d2ppo_control.chunk import ACTION_DIM, JOINT_NAMES, ActionChunk

#: time_from_start values are integer nanoseconds; spacing may differ from uniform by this much.
_SPACING_TOLERANCE_S = 1e-6


class ChunkMessageError(ValueError):
    """A JointTrajectory that is not a valid action chunk; the message says what is wrong."""


def stamp_to_sec(stamp: Any) -> float:
    """``builtin_interfaces/Time`` (or anything with sec/nanosec) -> seconds."""
    return float(stamp.sec) + float(stamp.nanosec) * 1e-9


def sec_to_stamp(t: float) -> Time:
    """Seconds -> ``builtin_interfaces/Time`` (nanoseconds rounded; negative times clamp to 0)."""
    ns = max(0, int(round(float(t) * 1e9)))
    return Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def _duration_to_sec(d: Any) -> float:
    return float(d.sec) + float(d.nanosec) * 1e-9


def _sec_to_duration(t: float) -> Duration:
    ns = max(0, int(round(float(t) * 1e9)))
    return Duration(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def chunk_to_msg(chunk: ActionChunk, frame_id: str | None = None, stamp: Any = None) -> JointTrajectory:
    """ActionChunk -> JointTrajectory: header.stamp = chunk.stamp, header.frame_id = the chunk's source
    (``frame_id`` overrides it), points[i].time_from_start = i * period, points[i].positions = action i
    (7 floats in JOINT_NAMES order).

    ``stamp``: the ``builtin_interfaces/Time`` of the observation the chunk was computed from, copied as is
    (seconds -> Time rounds; a chunk must match its frame's stamp exactly). It must equal ``chunk.stamp``.
    """
    msg = JointTrajectory()
    if stamp is not None:
        if abs(stamp_to_sec(stamp) - chunk.stamp) > 1e-6:
            raise ValueError(f"stamp {stamp_to_sec(stamp)} is not the chunk's stamp {chunk.stamp}")
        msg.header.stamp = Time(sec=int(stamp.sec), nanosec=int(stamp.nanosec))
    else:
        msg.header.stamp = sec_to_stamp(chunk.stamp)
    msg.header.frame_id = chunk.source if frame_id is None else frame_id
    msg.joint_names = list(JOINT_NAMES)
    points = []
    for i, action in enumerate(chunk.actions):
        p = JointTrajectoryPoint()
        p.positions = [float(v) for v in action]
        p.time_from_start = _sec_to_duration(i * chunk.period)
        points.append(p)
    msg.points = points
    return msg


def chunk_from_msg(msg: JointTrajectory, default_period: float | None = None) -> ActionChunk:
    """JointTrajectory -> ActionChunk, validating it against the chunk contract (DESIGN.md).

    A first point with a non-zero time_from_start shifts the chunk's stamp by that much. A one-point chunk
    has no spacing to read a period from; ``default_period`` (seconds) supplies it.

    Raises:
        ChunkMessageError: wrong joint_names, no points, wrong number of positions, or non-uniform /
            non-increasing time_from_start spacing. NaN/inf values are *not* an error here: they pass
            through so the executor rejects and counts them.
    """
    names = tuple(msg.joint_names)
    if names != JOINT_NAMES:
        raise ChunkMessageError(f"action chunk joint_names must be {list(JOINT_NAMES)}, got {list(names)}")
    if len(msg.points) == 0:
        raise ChunkMessageError("action chunk has no points")
    actions = np.empty((len(msg.points), ACTION_DIM), dtype=np.float64)
    times = np.empty(len(msg.points), dtype=np.float64)
    for i, p in enumerate(msg.points):
        if len(p.positions) != ACTION_DIM:
            raise ChunkMessageError(f"action chunk point {i} has {len(p.positions)} positions, expected {ACTION_DIM}")
        actions[i] = p.positions
        times[i] = _duration_to_sec(p.time_from_start)
    if len(times) >= 2:
        gaps = np.diff(times)
        period = float(gaps[0])
        if period <= 0.0:
            raise ChunkMessageError(f"action chunk time_from_start must increase, got {times.tolist()}")
        if np.abs(gaps - period).max() > _SPACING_TOLERANCE_S:
            raise ChunkMessageError(f"action chunk time_from_start spacing is not uniform: {times.tolist()}")
    elif default_period is not None:
        period = float(default_period)
    else:
        raise ChunkMessageError("one-point action chunk: period unknown (no default_period given)")
    if not (math.isfinite(period) and period > 0.0):
        raise ChunkMessageError(f"action chunk period must be positive, got {period}")
    return ActionChunk(
        stamp=stamp_to_sec(msg.header.stamp) + float(times[0]),
        period=period,
        actions=actions,
        source=str(msg.header.frame_id),
    )


def executed_msg(action: np.ndarray, stamp: float, source: str) -> JointTrajectory:
    """What a controller actually sent to the arm, for ``controller/executed``: one point holding the 7-D
    normalised action after the safety envelope, in the chunk convention; header.stamp = when it was sent,
    header.frame_id = the source of the chunk it came from."""
    msg = JointTrajectory()
    msg.header.stamp = sec_to_stamp(stamp)
    msg.header.frame_id = source
    msg.joint_names = list(JOINT_NAMES)
    p = JointTrajectoryPoint()
    p.positions = [float(v) for v in np.asarray(action, dtype=np.float64).reshape(ACTION_DIM)]
    p.time_from_start = _sec_to_duration(0.0)
    msg.points = [p]
    return msg


def executed_from_msg(msg: JointTrajectory) -> tuple[float, np.ndarray, str]:
    """``controller/executed`` message -> (stamp seconds, action [7], source); ChunkMessageError if malformed."""
    chunk = chunk_from_msg(msg, default_period=1.0)
    if len(chunk) != 1:
        raise ChunkMessageError(f"an executed action has one point, got {len(chunk)}")
    return chunk.stamp, np.array(chunk.actions[0]), chunk.source


def diagnostic_status(name: str, level: int, message: str, values: dict[str, Any]) -> DiagnosticStatus:
    """A DiagnosticStatus with ``values`` as key/value strings (floats with 6 significant digits).

    Args:
        level: DiagnosticStatus level as int: 0 OK, 1 WARN, 2 ERROR, 3 STALE.
    """
    status = DiagnosticStatus()
    status.name = name
    status.level = bytes([int(level)])
    status.message = message
    kvs = []
    for key, value in values.items():
        text = f"{value:.6g}" if isinstance(value, float) else str(value)
        kvs.append(KeyValue(key=str(key), value=text))
    status.values = kvs
    return status


def diagnostic_values(status: DiagnosticStatus) -> dict[str, str]:
    """The key/value pairs of a DiagnosticStatus as a dict (for consumers and tests)."""
    return {kv.key: kv.value for kv in status.values}
