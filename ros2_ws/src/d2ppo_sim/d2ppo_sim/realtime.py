"""Real-time sim mode: camera frames delivered like a driver's, with injectable latency, jitter and loss.

In lock-step the sim waits for every chunk, which hides what the robot will see: inference and transport
latency, frames that arrive late or not at all, a controller that runs on whether or not a chunk came.
In real-time mode the sim node steps physics at the control rate on the wall clock (holding when nothing
is due) and hands each camera frame, stamped with its capture time, to :class:`CameraDelay`, which says
when to publish it: ``latency + jitter * u`` later (``u`` uniform in [-1, 1], never before the previous
frame of that camera: a driver delivers in order), or never, with probability ``drop``.
"""

from __future__ import annotations

import heapq
import itertools
import math
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class CameraFaults:
    """What the real-time sim injects into camera delivery (milliseconds, probability)."""

    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    drop: float = 0.0

    def __post_init__(self) -> None:
        problems = []
        if not (math.isfinite(self.latency_ms) and self.latency_ms >= 0.0):
            problems.append(f"camera latency must be >= 0 ms, got {self.latency_ms}")
        if not (math.isfinite(self.jitter_ms) and self.jitter_ms >= 0.0):
            problems.append(f"camera jitter must be >= 0 ms, got {self.jitter_ms}")
        if not (0.0 <= self.drop < 1.0):
            problems.append(f"camera drop probability must be in [0, 1), got {self.drop}")
        if problems:
            raise ValueError("; ".join(problems))


@dataclass
class CameraDelay:
    """Frames in, frames out at their release times. Times are seconds on one clock (the node's)."""

    faults: CameraFaults
    seed: int = 0
    _rng: np.random.Generator = field(init=False)
    _queue: list = field(init=False, default_factory=list)
    _order: itertools.count = field(init=False, default_factory=itertools.count)
    _last_release: dict = field(init=False, default_factory=dict)
    captured: int = field(init=False, default=0)
    dropped: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self._rng = np.random.default_rng(self.seed)

    def push(self, camera: str, capture_time: float, frame) -> float | None:
        """Queue a frame captured at ``capture_time``; returns its release time, or None when it is dropped."""
        self.captured += 1
        f = self.faults
        if f.drop > 0.0 and self._rng.random() < f.drop:
            self.dropped += 1
            return None
        delay = (f.latency_ms + f.jitter_ms * self._rng.uniform(-1.0, 1.0)) * 1e-3
        release = max(capture_time + max(0.0, delay), self._last_release.get(camera, -math.inf))
        self._last_release[camera] = release
        heapq.heappush(self._queue, (release, next(self._order), camera, capture_time, frame))
        return release

    def due(self, now: float) -> list[tuple[str, float, object]]:
        """Frames whose release time has come, oldest first: ``(camera, capture_time, frame)``."""
        out = []
        while self._queue and self._queue[0][0] <= now:
            _, _, camera, t, frame = heapq.heappop(self._queue)
            out.append((camera, t, frame))
        return out

    def next_release(self) -> float | None:
        return self._queue[0][0] if self._queue else None

    def clear(self) -> None:
        self._queue.clear()
        self._last_release.clear()
