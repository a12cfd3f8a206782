"""Which physical camera (or file) feeds which policy camera name: parsed from the node's parameters.

launch/cameras.yaml lists parallel arrays, one entry per camera::

    camera_names: [agentview, robot0_eye_in_hand]     # the names the policy was trained with
    serials: ["123456789012", "234567890123"]        # RealSense serial numbers (source: realsense)
    playback_files: [demos.hdf5]                      # or recorded files (source: playback)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from d2ppo_camera.frames import FrameSource

SOURCES = ("realsense", "playback")


@dataclass(frozen=True)
class CameraConfig:
    """One camera.

    Attributes:
        name: policy camera name; images go to ``/cameras/<name>/image_raw``.
        serial: RealSense serial number ("" for playback).
        playback_file: HDF5 (``obs/<name>_image``) or video file ("" for realsense).
    """

    name: str
    serial: str = ""
    playback_file: str = ""


def parse_cameras(source: str, camera_names: Sequence, serials: Sequence | None,
                  playback_files: Sequence | None) -> list[CameraConfig]:
    """Validate the parallel parameter arrays; raise ValueError saying which parameter is wrong.

    Serial numbers may be given as integers in YAML (unquoted); they are compared as strings. One
    playback file may serve every camera (an HDF5 file holding all of them).
    """
    if source not in SOURCES:
        raise ValueError(f"parameter 'source' must be one of {SOURCES}, got {source!r}")
    names = [str(n) for n in (camera_names or [])]
    if not names:
        raise ValueError("parameter 'camera_names' is empty: list the policy camera names, e.g. [agentview]")
    if len(set(names)) != len(names):
        raise ValueError(f"parameter 'camera_names' has duplicates: {names}")
    if source == "realsense":
        serial_list = [str(s) for s in (serials or [])]
        if len(serial_list) != len(names):
            raise ValueError(
                f"parameters 'serials' ({len(serial_list)}) and 'camera_names' ({len(names)}) differ in length: "
                "give one RealSense serial number per camera"
            )
        if len(set(serial_list)) != len(serial_list):
            raise ValueError(f"parameter 'serials' has duplicates: {serial_list}")
        return [CameraConfig(name=n, serial=s) for n, s in zip(names, serial_list)]
    files = [str(f) for f in (playback_files or [])]
    if len(files) == 1:
        files = files * len(names)
    if len(files) != len(names):
        raise ValueError(
            f"parameter 'playback_files' has {len(files)} entries for {len(names)} cameras: give one file, "
            "or one per camera"
        )
    return [CameraConfig(name=n, playback_file=f) for n, f in zip(names, files)]


def make_source(cam: CameraConfig, width: int, height: int, fps: float, demo: str = "",
                loop: bool = True) -> FrameSource:
    """The frame source for one configured camera (a RealSense by serial, or a file played back at ``fps``)."""
    if cam.serial:
        from d2ppo_camera.realsense import RealSenseSource

        return RealSenseSource(cam.serial, width=width, height=height, fps=int(fps))
    from d2ppo_camera.playback import PlaybackSource, load_frames

    frames, file_fps = load_frames(cam.playback_file, cam.name, demo or None)
    return PlaybackSource(frames, fps=fps or file_fps or 30.0, loop=loop,
                          description=f"playback {cam.playback_file} [{cam.name}]")
