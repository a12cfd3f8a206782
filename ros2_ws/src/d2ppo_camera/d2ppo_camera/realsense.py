"""Intel RealSense colour stream as a :class:`~d2ppo_camera.frames.FrameSource` (pyrealsense2).

Capture timestamps. librealsense stamps each frame in one of three clock domains:

* ``global_time`` (default on D400/D500 cameras): the camera's hardware clock already mapped by
  librealsense onto the host's system clock, in milliseconds since the epoch -- the same clock as
  ROS system time, so it is used as is (start-of-exposure time, free of USB transfer delay);
* ``system_time``: host time of the frame's arrival (no metadata from the device), also epoch ms;
* ``hardware_clock``: the camera's own clock, unrelated to the host's. :class:`DeviceClockMapper`
  maps it by the smallest recently observed (arrival - device) offset: the frame that arrived
  fastest bounds the transfer delay, and a sliding window follows clock drift.

Arrival time is therefore only used when the device supplies nothing better, and stamps never lie
in the future of the frame's arrival.

Import order: a process that imports pyrealsense2 (2.59) *before* rclpy segfaults at interpreter exit
(measured here); the camera node imports rclpy first, and pyrealsense2 is imported only when a
RealSenseSource is created.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

import numpy as np

from d2ppo_camera.frames import CameraUnavailable, Frame

GLOBAL_TIME = "global_time"
SYSTEM_TIME = "system_time"
HARDWARE_CLOCK = "hardware_clock"


class DeviceClockMapper:
    """Maps a device timestamp to host (ROS system) time.

    Args:
        window: number of recent frames whose (arrival - device) offsets are kept; the minimum of
            them is the mapping offset. 60 frames = 2 s at 30 fps: long enough to contain one
            fast transfer, short enough that clock drift (tens of ppm) stays far below a millisecond.
    """

    def __init__(self, window: int = 60):
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self._offsets: deque[float] = deque(maxlen=window)

    def stamp(self, device_ms: float, domain: str, arrival: float) -> float:
        """Seconds on the host clock at which the frame was captured.

        Args:
            device_ms: librealsense frame timestamp, milliseconds.
            domain: "global_time" | "system_time" | "hardware_clock" (``rs.timestamp_domain`` name).
            arrival: seconds, host time at which the frame was received.
        """
        if domain in (GLOBAL_TIME, SYSTEM_TIME):
            return device_ms * 1e-3
        device_s = device_ms * 1e-3
        self._offsets.append(arrival - device_s)
        return device_s + min(self._offsets)


class RealSenseSource:
    """Colour stream of one RealSense camera chosen by serial number.

    Args:
        serial: the camera's serial number (printed on the camera; ``rs-enumerate-devices -s``).
        width, height: colour resolution, pixels (must be a mode the camera supports, e.g. 640x480).
        fps: frames per second (6, 15, 30, 60 depending on the model and resolution).
        clock: host clock, seconds (ROS system time is the epoch clock).
    """

    def __init__(self, serial: str, width: int = 640, height: int = 480, fps: int = 30,
                 clock: Callable[[], float] = time.time):
        import pyrealsense2 as rs  # optional on a training machine; always present on the robot PC

        self._rs = rs
        self.serial = str(serial)
        self.width, self.height, self.fps = int(width), int(height), int(fps)
        self.description = f"RealSense {self.serial}"
        self._clock = clock
        self._pipeline = None
        self._mapper = DeviceClockMapper(window=max(1, 2 * self.fps))

    def connected_serials(self) -> list[str]:
        """Serial numbers of every RealSense device the USB bus shows now."""
        rs = self._rs
        return [d.get_info(rs.camera_info.serial_number) for d in rs.context().query_devices()]

    def open(self) -> None:
        rs = self._rs
        serials = self.connected_serials()
        if self.serial not in serials:
            found = ", ".join(serials) if serials else "none"
            raise CameraUnavailable(
                f"RealSense camera with serial {self.serial} not found (connected RealSense serials: {found}); "
                "check the USB 3 cable and the serial in launch/cameras.yaml"
            )
        config = rs.config()
        config.enable_device(self.serial)
        config.enable_stream(rs.stream.color, self.width, self.height, rs.format.rgb8, self.fps)
        pipeline = rs.pipeline()
        try:
            pipeline.start(config)
        except RuntimeError as e:  # unsupported mode, device busy (another process holds it), unplugged meanwhile
            raise CameraUnavailable(
                f"RealSense camera {self.serial}: cannot start colour stream {self.width}x{self.height} "
                f"@ {self.fps} fps: {e}"
            ) from e
        self._pipeline = pipeline

    def read(self, timeout: float) -> Frame:
        if self._pipeline is None:
            raise CameraUnavailable(f"RealSense camera {self.serial}: read() before open()")
        try:
            frames = self._pipeline.wait_for_frames(int(max(1.0, timeout * 1000.0)))
        except RuntimeError as e:  # librealsense: "Frame didn't arrive within ..." (unplugged or stalled)
            raise CameraUnavailable(
                f"RealSense camera {self.serial}: no frame within {timeout:.1f} s ({e}); unplugged?"
            ) from e
        arrival = self._clock()
        color = frames.get_color_frame()
        if not color:
            raise CameraUnavailable(f"RealSense camera {self.serial}: frame set without a colour frame")
        # Copy: the frame's buffer goes back to librealsense's pool once `color` is released.
        image = np.array(color.get_data(), dtype=np.uint8, copy=True).reshape(self.height, self.width, 3)
        domain = color.get_frame_timestamp_domain().name
        return Frame(image=image, stamp=self._mapper.stamp(color.get_timestamp(), domain, arrival))

    def close(self) -> None:
        if self._pipeline is not None:
            try:
                self._pipeline.stop()
            except RuntimeError:
                pass  # already stopped by an unplug
            self._pipeline = None
