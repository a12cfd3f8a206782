"""Recorded frames played back in real time: the camera node's stand-in for a camera.

Used to test the whole camera -> recorder / inference path without hardware, and to replay a recorded
demo's images into a running stack. Frames come from a robomimic HDF5 file (``<camera>_image``, the
format the recorder and the sim data use) or from a video file (imageio).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from d2ppo_camera.frames import CameraUnavailable, EndOfStream, Frame

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".gif")
HDF5_SUFFIXES = (".h5", ".hdf5")


def frames_from_hdf5(path, camera: str, demo: str | None = None) -> np.ndarray:
    """uint8 ``[N, H, W, 3]`` images of ``obs/<camera>_image`` from one demo, or all demos in order.

    Raises:
        CameraUnavailable: no such file, or no demo holds that camera's images.
    """
    from d2ppo.data.robomimic_hdf5 import DatasetFormatError, list_demos, read_demo
    from d2ppo.obs import image_key

    path = Path(path)
    key = image_key(camera)
    try:
        names = [demo] if demo else list_demos(path)
        chunks = [read_demo(path, name, obs_keys=[key]).obs[key] for name in names]
    except (FileNotFoundError, DatasetFormatError) as e:
        raise CameraUnavailable(f"playback {path}: cannot read {key}: {e}") from e
    if not chunks:
        raise CameraUnavailable(f"playback {path}: no demos")
    return np.concatenate(chunks)


def frames_from_video(path) -> tuple[np.ndarray, float | None]:
    """(uint8 ``[N, H, W, 3]`` RGB frames, the file's frame rate or None)."""
    import imageio.v3 as iio

    path = Path(path)
    if not path.exists():
        raise CameraUnavailable(f"playback {path}: no such file")
    frames = np.asarray(iio.imread(path), dtype=np.uint8)
    if frames.ndim == 3:  # single image
        frames = frames[None]
    if frames.shape[-1] == 4:  # RGBA (gif)
        frames = frames[..., :3]
    try:
        fps = iio.immeta(path).get("fps")
    except Exception:  # noqa: BLE001 - metadata is optional; the caller's fps is used instead
        fps = None
    return np.ascontiguousarray(frames), fps


def load_frames(path, camera: str, demo: str | None = None) -> tuple[np.ndarray, float | None]:
    """Frames of ``camera`` from an HDF5 file or a video, by file suffix; (frames, file fps or None)."""
    suffix = Path(path).suffix.lower()
    if suffix in HDF5_SUFFIXES:
        return frames_from_hdf5(path, camera, demo), None
    if suffix in VIDEO_SUFFIXES:
        return frames_from_video(path)
    raise CameraUnavailable(
        f"playback {path}: unknown file type {suffix!r} (expected one of {HDF5_SUFFIXES + VIDEO_SUFFIXES})"
    )


class PlaybackSource:
    """Serves frames at ``fps`` in real time, like a camera: each ``read`` waits for the next frame's
    due time and stamps it with the clock at release (= its "capture" time).

    A reader that falls behind skips frames instead of drifting behind real time (a camera does not
    queue frames for a slow consumer either); :attr:`frames_skipped` counts them.

    Args:
        frames: uint8 ``[N, H, W, 3]`` upright RGB.
        fps: frames per second, > 0.
        loop: start again at the first frame after the last; otherwise ``read`` raises EndOfStream.
        description: name for log messages (e.g. the file).
        clock: seconds; the stamps' clock (ROS system time = epoch).
        sleep: how to wait (replaceable so tests can run on a simulated clock).
    """

    def __init__(self, frames: np.ndarray, fps: float, loop: bool = True, description: str = "playback",
                 clock: Callable[[], float] = time.time, sleep: Callable[[float], None] = time.sleep):
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) == 0:
            raise ValueError(f"{description}: expected uint8 frames [N>0, H, W, 3], got {frames.dtype} {frames.shape}")
        if not (math.isfinite(fps) and fps > 0):
            raise ValueError(f"{description}: fps must be > 0, got {fps}")
        self.frames = frames
        self.fps = float(fps)
        self.loop = loop
        self.description = description
        self._clock = clock
        self._sleep = sleep
        self._t0: float | None = None
        self._k = 0  # index (since open) of the next frame to release
        self.frames_skipped = 0

    def open(self) -> None:
        self._t0 = self._clock()
        self._k = 0

    def read(self, timeout: float) -> Frame:
        if self._t0 is None:
            raise CameraUnavailable(f"{self.description}: read() before open()")
        now = self._clock()
        behind = int((now - self._t0) * self.fps) - self._k
        if behind > 0:
            self.frames_skipped += behind
            self._k += behind
        due = self._t0 + self._k / self.fps
        if due - now > timeout:
            self._sleep(timeout)
            raise CameraUnavailable(f"{self.description}: no frame within {timeout:.2f} s")
        if due > now:
            self._sleep(due - now)
        n = len(self.frames)
        if not self.loop and self._k >= n:
            raise EndOfStream(f"{self.description}: played all {n} frames")
        image = self.frames[self._k % n]
        self._k += 1
        return Frame(image=image, stamp=self._clock())

    def close(self) -> None:
        self._t0 = None
