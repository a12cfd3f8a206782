"""Camera node: RealSense cameras (or recorded playback) -> ``/cameras/<name>/image_raw``. ROS plumbing only.

Each camera runs its capture loop (:class:`~d2ppo_camera.stream.CameraStream`) on its own thread and
publishes sensor_msgs/Image ``rgb8``, ``header.stamp`` = capture time on the system clock (see
:mod:`d2ppo_camera.realsense` for how device timestamps map to it), ``frame_id`` =
``<name>_color_optical_frame``. A missing or unplugged camera is logged with its serial number,
reported as ERROR in ``/diagnostics`` and reopened with backoff; the other cameras keep streaming.

Parameters (launch/cameras.yaml):
  source (str)               "realsense" | "playback"
  camera_names (str[])       policy camera names, e.g. [agentview, robot0_eye_in_hand]
  serials (str[])            RealSense serial numbers, one per camera (source realsense)
  playback_files (str[])     HDF5 (obs/<name>_image) or video files, one per camera or one for all
  playback_demo (str)        "demo_N" to play one demo; "" plays all demos in order
  loop (bool)                playback: start over after the last frame
  width, height (int)        RealSense colour resolution, pixels (playback: native size of the file)
  fps (float)                frames per second (playback: 0 = the video's own rate, else 30)
  frame_timeout (float)      s without a frame before a camera counts as stalled and is reopened
  reconnect_backoff_max (float)  s, longest wait between reconnection attempts
  diagnostics_period (float) s of wall time between /diagnostics messages
"""

from __future__ import annotations

import sys
import time
from functools import partial

import rclpy
from d2ppo_control.ros_conversions import diagnostic_status
from d2ppo_control.ros_params import refuse_undeclared_parameters
from d2ppo_inference.ros_messages import camera_frame_id, image_msg
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.clock import Clock, ClockType
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image

from d2ppo_camera.config import CameraConfig, make_source, parse_cameras
from d2ppo_camera.frames import CameraUnavailable, Frame
from d2ppo_camera.stream import Backoff, CameraStream

# DiagnosticStatus levels as ints (the message constants are bytes).
OK, WARN, ERROR = 0, 1, 2


def image_topic(camera: str) -> str:
    """Relative topic of a camera's images (``/cameras/<name>/image_raw`` in the root namespace)."""
    return f"cameras/{camera}/image_raw"


class CameraNode(Node):
    def __init__(self):
        super().__init__("camera")
        flexible = ParameterDescriptor(dynamic_typing=True)  # lists may be empty or hold ints (serials)
        self.declare_parameter("source", "realsense")
        self.declare_parameter("camera_names", None, flexible)
        self.declare_parameter("serials", None, flexible)
        self.declare_parameter("playback_files", None, flexible)
        self.declare_parameter("playback_demo", "")
        self.declare_parameter("loop", True)
        self.declare_parameter("width", 640)
        self.declare_parameter("height", 480)
        self.declare_parameter("fps", 30.0, flexible)
        self.declare_parameter("frame_timeout", 2.0)
        self.declare_parameter("reconnect_backoff_max", 8.0)
        self.declare_parameter("diagnostics_period", 1.0)
        refuse_undeclared_parameters(self)  # before opening any camera
        param = lambda name: self.get_parameter(name).value  # noqa: E731

        source = param("source")
        cameras = parse_cameras(source, param("camera_names"), param("serials"), param("playback_files"))
        # Reliable publishers match both reliable and best-effort subscribers; depth 1: only the newest
        # frame matters, a slow subscriber must not build a queue of old images.
        qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)
        self.streams: dict[str, CameraStream] = {}
        for cam in cameras:
            pub = self.create_publisher(Image, image_topic(cam.name), qos)
            try:
                frame_source = make_source(cam, param("width"), param("height"), float(param("fps")),
                                           demo=param("playback_demo"), loop=param("loop"))
            except CameraUnavailable as e:  # an unreadable playback file: nothing a retry would fix
                raise ValueError(str(e)) from e
            self.streams[cam.name] = CameraStream(
                frame_source,
                on_frame=partial(self._publish, cam, pub),
                on_error=partial(self._on_error, cam),
                frame_timeout=param("frame_timeout"),
                backoff=Backoff(initial=min(0.5, param("reconnect_backoff_max")),
                                maximum=param("reconnect_backoff_max")),
            )
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_timer(param("diagnostics_period"), self._publish_diagnostics,
                          clock=Clock(clock_type=ClockType.STEADY_TIME))
        self._started = time.monotonic()
        for stream in self.streams.values():
            stream.start()
        self.get_logger().info(
            f"{source}: " + ", ".join(f"{name} <- {s.source.description}" for name, s in self.streams.items())
        )

    def _publish(self, cam: CameraConfig, pub, frame: Frame) -> None:
        msg = image_msg(frame.image, frame.stamp, camera_frame_id(cam.name))
        try:
            pub.publish(msg)
        except Exception:
            if self.context.ok():
                raise
            # Ctrl-C shut the context down while this capture thread was mid-frame; the node is exiting.

    def _on_error(self, cam: CameraConfig, message: str) -> None:
        # Every failed attempt is logged (throttled by the backoff itself: at most one per backoff delay).
        self.get_logger().error(f"camera '{cam.name}': {message}; retrying")

    def _publish_diagnostics(self) -> None:
        msg = DiagnosticArray()
        msg.header.stamp = self.get_clock().now().to_msg()
        for name, stream in self.streams.items():
            st = stream.status
            elapsed = max(1e-6, time.monotonic() - self._started)
            if st.connected:
                level, text = OK, "streaming"
            elif st.ended:
                level, text = WARN, "playback ended"
            else:
                level, text = ERROR, st.last_error or "connecting"
            values = {
                "source": stream.source.description,
                "connected": st.connected,
                "frames": st.frames,
                "mean_fps": st.frames / elapsed,
                "failures": st.failures,
                "last_error": st.last_error,
            }
            msg.status.append(diagnostic_status(f"{self.get_name()}: {name}", level, text, values))
        self.diag_pub.publish(msg)

    def destroy_node(self) -> None:
        # Unset if __init__ raised (a bad parameter): rclpy.shutdown() still destroys the node.
        for stream in getattr(self, "streams", {}).values():
            stream.stop()
        super().destroy_node()


def main(args: list[str] | None = None) -> None:
    rclpy.init(args=args if args is not None else sys.argv)
    node = None
    try:
        node = CameraNode()
        rclpy.spin(node)
    except ValueError as e:  # bad parameters or an unreadable playback file
        print(f"camera: {e}", file=sys.stderr)
        sys.exit(2)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()


if __name__ == "__main__":
    main()
