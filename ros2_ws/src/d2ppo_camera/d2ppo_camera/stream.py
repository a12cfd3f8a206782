"""One camera's capture loop: open, read frames, hand them on; on failure report and reconnect with backoff."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from d2ppo_camera.frames import CameraUnavailable, EndOfStream, Frame, FrameSource


@dataclass
class Backoff:
    """Delays between reconnection attempts, seconds: initial, doubling up to maximum; reset on success.

    A replugged camera comes back within ``maximum`` seconds, while an absent one costs at most one
    device enumeration per ``maximum`` seconds.
    """

    initial: float = 0.5
    maximum: float = 8.0

    def __post_init__(self) -> None:
        if not (0 < self.initial <= self.maximum):
            raise ValueError(f"backoff needs 0 < initial <= maximum, got {self.initial}, {self.maximum}")
        self._next = self.initial

    def next_delay(self) -> float:
        delay = self._next
        self._next = min(self._next * 2.0, self.maximum)
        return delay

    def reset(self) -> None:
        self._next = self.initial


@dataclass
class StreamStatus:
    """Health of one stream, for ``/diagnostics``."""

    connected: bool = False
    frames: int = 0
    failures: int = 0  # open/read failures since start
    last_error: str = ""
    last_stamp: float | None = None  # seconds
    ended: bool = False  # a non-looping playback has finished


class CameraStream:
    """Runs a :class:`FrameSource` on its own thread.

    Args:
        source: the camera.
        on_frame: called on the capture thread with every frame (keep it short: publish and return).
        on_error: called with the CameraUnavailable message of each failed open/read (before the backoff).
        frame_timeout: seconds ``read`` may wait for a frame before the camera counts as stalled.
        backoff: reconnection delays.
    """

    def __init__(self, source: FrameSource, on_frame: Callable[[Frame], None],
                 on_error: Callable[[str], None] = lambda msg: None, frame_timeout: float = 2.0,
                 backoff: Backoff | None = None):
        self.source = source
        self.on_frame = on_frame
        self.on_error = on_error
        self.frame_timeout = float(frame_timeout)
        self.backoff = backoff or Backoff()
        self.status = StreamStatus()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name=f"camera {self.source.description}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def run(self) -> None:
        """The capture loop (blocks until :meth:`stop`)."""
        while not self._stop.is_set():
            try:
                self.source.open()
                self.status.connected = True
                while not self._stop.is_set():
                    frame = self.source.read(self.frame_timeout)
                    self.status.frames += 1
                    self.status.last_stamp = frame.stamp
                    self.backoff.reset()
                    self.on_frame(frame)
            except EndOfStream:
                self.status.ended = True
                self._close()
                return
            except CameraUnavailable as e:
                self.status.failures += 1
                self.status.last_error = str(e)
                self._close()
                self.on_error(str(e))
                self._stop.wait(self.backoff.next_delay())
        self._close()

    def _close(self) -> None:
        self.status.connected = False
        try:
            self.source.close()
        except CameraUnavailable:
            pass

    def wait_until_stopped(self, timeout: float | None = None) -> bool:
        """True once the capture thread has ended (stop() or end of a non-looping playback)."""
        if self._thread is None:
            return True
        deadline = None if timeout is None else time.monotonic() + timeout
        self._thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return not self._thread.is_alive()
