"""What every frame source (a RealSense camera, a recorded-file playback) hands to the camera node."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


class CameraUnavailable(RuntimeError):
    """The source cannot deliver frames now (camera not found, unplugged, stalled).

    The message names the camera (serial number or file) and says what to check; the camera stream
    reports it and retries with backoff, so a replugged camera comes back without a restart.
    """


class EndOfStream(Exception):
    """A non-looping playback source has delivered its last frame (never raised by a real camera)."""


@dataclass(frozen=True)
class Frame:
    """One colour image.

    Attributes:
        image: uint8 ``[H, W, 3]`` upright RGB.
        stamp: seconds on the ROS (system) clock at which the image was captured.
    """

    image: np.ndarray
    stamp: float


class FrameSource(Protocol):
    """Interface of a camera for :class:`~d2ppo_camera.stream.CameraStream`.

    ``open`` and ``read`` raise :class:`CameraUnavailable` for anything that a retry might fix.
    """

    #: Human-readable identity used in log and error messages, e.g. "RealSense 123456789012".
    description: str

    def open(self) -> None: ...

    def read(self, timeout: float) -> Frame:
        """The next frame; waits at most ``timeout`` seconds."""
        ...

    def close(self) -> None: ...
