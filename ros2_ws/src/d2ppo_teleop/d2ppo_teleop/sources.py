"""Teleoperation input devices: SpaceMouse (pyspacemouse), keyboard (terminal), and a scripted replay.

Every source has ``description``, ``read(now) -> TeleopInput`` (``now``: seconds on the monotonic
clock) and ``close()``. A device that is missing or unusable raises :class:`TeleopDeviceError` with
what to do about it.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from d2ppo_teleop.mapping import TeleopInput

SOURCES = ("spacemouse", "keyboard", "scripted")


class TeleopDeviceError(RuntimeError):
    """An input device that cannot be used (package missing, no device, no terminal)."""


# --- scripted ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ScriptSegment:
    """``duration`` seconds of constant input.

    Attributes:
        duration: seconds, > 0.
        motion: ``[6]`` device deflection held for the whole segment, or None for "hands off"
            (no input events at all: the deadman zeroes the motion).
        toggle_gripper: one gripper-toggle press at the start of the segment.
    """

    duration: float
    motion: tuple[float, ...] | None = None
    toggle_gripper: bool = False


def parse_script(text_or_path: str) -> list[ScriptSegment]:
    """Segments from a JSON or YAML list (inline text, or a path to a file holding it).

    Example: ``[{"duration": 1.0, "motion": [0.5, 0, 0, 0, 0, 0]}, {"duration": 0.5, "toggle_gripper": true}]``
    """
    text = text_or_path
    if text.strip() and not text.lstrip().startswith(("[", "-")) and Path(text).is_file():
        text = Path(text).read_text()
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        import yaml

        data = yaml.safe_load(text)
    if not isinstance(data, list) or not data:
        raise ValueError(f"teleop script must be a non-empty list of segments, got {text_or_path!r}")
    segments = []
    for i, seg in enumerate(data):
        if not isinstance(seg, Mapping) or "duration" not in seg:
            raise ValueError(f"teleop script segment {i}: expected a mapping with 'duration', got {seg!r}")
        motion = seg.get("motion")
        if motion is not None:
            motion = tuple(float(v) for v in motion)
            if len(motion) != 6:
                raise ValueError(f"teleop script segment {i}: motion needs 6 values, got {len(motion)}")
        duration = float(seg["duration"])
        if duration <= 0:
            raise ValueError(f"teleop script segment {i}: duration must be > 0 s, got {duration}")
        segments.append(ScriptSegment(duration, motion, bool(seg.get("toggle_gripper", False))))
    return segments


class ScriptedSource:
    """Replays a list of :class:`ScriptSegment` from the first ``read``; after the last segment: no input."""

    def __init__(self, segments: Sequence[ScriptSegment]):
        self.segments = list(segments)
        self.description = f"scripted ({len(self.segments)} segments, {self.duration:.2f} s)"
        self._t0: float | None = None
        self._toggled: set[int] = set()

    @property
    def duration(self) -> float:
        return float(sum(s.duration for s in self.segments))

    def finished(self, now: float) -> bool:
        return self._t0 is not None and now - self._t0 >= self.duration

    def read(self, now: float) -> TeleopInput:
        if self._t0 is None:
            self._t0 = now
        t = now - self._t0
        end = 0.0
        for i, seg in enumerate(self.segments):
            end += seg.duration
            if t < end:
                toggles = 0
                if seg.toggle_gripper and i not in self._toggled:
                    self._toggled.add(i)
                    toggles = 1
                if seg.motion is None:
                    return TeleopInput(np.zeros(6), toggles, None)
                return TeleopInput(np.array(seg.motion), toggles, now)
        return TeleopInput.idle()

    def close(self) -> None:
        pass


# --- keyboard ---------------------------------------------------------------------------------------

#: key -> (device axis, sign). Axes: x forward, y left, z up, roll, pitch, yaw (robot base frame).
KEYMAP: dict[str, tuple[int, float]] = {
    "w": (0, 1.0), "s": (0, -1.0),
    "a": (1, 1.0), "d": (1, -1.0),
    "r": (2, 1.0), "f": (2, -1.0),
    "z": (3, 1.0), "x": (3, -1.0),
    "t": (4, 1.0), "g": (4, -1.0),
    "c": (5, 1.0), "v": (5, -1.0),
}
TOGGLE_KEY = " "
STOP_KEYS = ("q", "\x1b")  # q or Esc: stop all motion at once

KEYBOARD_HELP = (
    "keyboard teleop: w/s x+/-, a/d y+/-, r/f z+/-, z/x roll+/-, t/g pitch+/-, c/v yaw+/-, "
    "space: toggle gripper, q/Esc: stop; Ctrl-C quits"
)


class KeyMotion:
    """Keys -> motion. A terminal only reports key presses (and auto-repeats of a held key), never
    releases, so each press holds its axis for ``hold_s`` seconds; a held key keeps re-arming it."""

    def __init__(self, hold_s: float = 0.3):
        self.hold_s = float(hold_s)
        self._pressed: dict[int, tuple[float, float]] = {}  # axis -> (sign, time of last press)

    def feed(self, keys: str, now: float) -> int:
        """Register key presses at ``now``; returns the number of gripper toggles among them."""
        toggles = 0
        for k in keys.lower():
            if k in KEYMAP:
                axis, sign = KEYMAP[k]
                self._pressed[axis] = (sign, now)
            elif k == TOGGLE_KEY:
                toggles += 1
            elif k in STOP_KEYS:
                self._pressed.clear()
        return toggles

    def input(self, now: float, toggles: int = 0) -> TeleopInput:
        motion = np.zeros(6)
        last = None
        for axis, (sign, t) in list(self._pressed.items()):
            if now - t <= self.hold_s:
                motion[axis] = sign
                last = now  # a held axis is live input this tick
            else:
                del self._pressed[axis]
        return TeleopInput(motion, toggles, last)


class KeyboardSource:
    """Keys from this process's terminal in cbreak mode (no Enter needed; Ctrl-C still interrupts)."""

    def __init__(self, hold_s: float = 0.3, stream=None):
        import termios
        import tty

        self._stream = stream or sys.stdin
        if not self._stream.isatty():
            raise TeleopDeviceError(
                "keyboard teleop needs an interactive terminal, but stdin is not a TTY; run the teleop node "
                "in its own terminal (ros2 run d2ppo_teleop teleop_node --ros-args -p source:=keyboard), "
                "not from a launch file"
            )
        self._fd = self._stream.fileno()
        self._saved = termios.tcgetattr(self._fd)
        tty.setcbreak(self._fd)
        self._keys = KeyMotion(hold_s)
        self.description = "keyboard"
        print(KEYBOARD_HELP, file=sys.stderr, flush=True)

    def read(self, now: float) -> TeleopInput:
        import select

        chars = ""
        while select.select([self._fd], [], [], 0.0)[0]:
            data = os.read(self._fd, 64)
            if not data:
                break
            chars += data.decode(errors="ignore")
        return self._keys.input(now, self._keys.feed(chars, now))

    def close(self) -> None:
        import termios

        termios.tcsetattr(self._fd, termios.TCSADRAIN, self._saved)


# --- SpaceMouse -------------------------------------------------------------------------------------

class SpaceMouseSource:
    """3Dconnexion SpaceMouse through pyspacemouse 2.x (raw HID; no 3Dconnexion driver needed).

    Axes in ROS convention (REP 103: x forward = cap pushed away from the operator, y left, z up;
    rotations about them), so with the operator standing behind the robot, looking along its +x, the
    identity ``axis_map`` moves the hand the way the cap is pushed. Buttons 0 and 1 toggle the gripper.
    The device reports continuously while the cap is deflected, so an input event is "live" only while
    the state's timestamp keeps changing: a SpaceMouse unplugged mid-push stops changing and the
    deadman zeroes the motion.
    """

    def __init__(self):
        try:
            import pyspacemouse
        except ImportError as e:
            raise TeleopDeviceError(
                "SpaceMouse teleop needs the optional package pyspacemouse: pip install pyspacemouse "
                "(and apt install libhidapi-hidraw0); or use source:=keyboard"
            ) from e
        convention = getattr(getattr(pyspacemouse, "AxisConvention", None), "ROS", None)
        try:
            device = pyspacemouse.open(**({"axis_convention": convention} if convention is not None else {}))
        except Exception as e:  # noqa: BLE001 - no device (RuntimeError), hidapi missing, no permission
            raise TeleopDeviceError(
                f"cannot open a SpaceMouse: {e}. Is it plugged in, and can this user read /dev/hidraw* "
                "(udev rule in docs/bringup.md; in Docker the hidraw device must be passed in)?"
            ) from e
        if not device:
            raise TeleopDeviceError("no SpaceMouse found: is it plugged in and /dev/hidraw* readable?")
        self._device = device
        self._last_t: float | None = None
        self._last_active: float | None = None
        self._buttons: list[int] = []
        self.description = f"SpaceMouse ({getattr(device, 'name', 'pyspacemouse')})"

    def read(self, now: float) -> TeleopInput:
        state = self._device.read()
        motion = np.array([state.x, state.y, state.z, state.roll, state.pitch, state.yaw], dtype=np.float64)
        if state.t != self._last_t:  # a new HID report arrived since the last tick
            self._last_t = state.t
            self._last_active = now
        buttons = [int(b) for b in state.buttons]
        toggles = sum(1 for i in (0, 1) if i < len(buttons) and buttons[i]
                      and not (i < len(self._buttons) and self._buttons[i]))
        self._buttons = buttons
        return TeleopInput(motion, toggles, self._last_active)

    def close(self) -> None:
        try:
            self._device.close()
        except Exception:  # noqa: BLE001 - closing an unplugged device
            pass


def make_source(kind: str, script: str = "", keyboard_hold_s: float = 0.3):
    """The input source named by the ``source`` parameter."""
    if kind == "scripted":
        if not script:
            raise ValueError("source 'scripted' needs parameter 'script' (a JSON/YAML segment list or a file)")
        return ScriptedSource(parse_script(script))
    if kind == "keyboard":
        return KeyboardSource(hold_s=keyboard_hold_s)
    if kind == "spacemouse":
        return SpaceMouseSource()
    raise ValueError(f"parameter 'source' must be one of {SOURCES}, got {kind!r}")
