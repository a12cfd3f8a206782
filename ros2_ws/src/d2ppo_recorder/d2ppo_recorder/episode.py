"""Demonstration recording without ROS: what the controller executed, what was observed with it, and saving
each finished episode as one robomimic demo.

One sample per action the controller executed. The controllers (franka node, sim node) publish every action
they sent to the arm on ``controller/executed`` -- after the safety envelope, so possibly clipped, and never
one they rejected -- stamped with the time it was sent. The recorder stores those actions as they are: the
file holds what the arm really ran, and working out which commanded action ran when is the controller's job
alone.

Each sample pairs the action with the newest message of every input stamped at or before the action's
stamp (:class:`InputHistory`) -- what a policy deployed in the same stack could have acted on (a chunk is
stamped with its frames' capture time and its first action runs at that stamp). A frame captured after the
action was sent is never used, even when it reaches the recorder before the executed message does.

A sample whose action or low-dimensional observation is NaN/inf, or whose time is not after the previous
sample's, is dropped and counted; the rest of the episode still saves.

Observations are stored under robomimic names, built by the inference node's own
``LatestObservations.raw`` (the one path from ROS state to policy inputs), in the robot base frame
``panda_link0`` (the base is the world of real data: ``env_args.type`` is not robosuite's, so
training stores a zero robot base position and the inference node uses the base frame unchanged).

Per-sample obs keys (T samples):
  ``<camera>_image``       uint8 [T, S, S, 3]  upright RGB, resized to ``image_size`` (0: native size)
  ``robot0_eef_pos``       [T, 3]  metres;  ``robot0_eef_quat`` [T, 4] (x, y, z, w)
  ``robot0_gripper_qpos``  [T, 2]  metres, robosuite's sign convention (finger1, -finger2)
  ``robot0_joint_pos``     [T, 7]  radians
  ``timestamp``            [T]     seconds (ROS time) at which the controller sent the action
  ``<camera>_stamp``, ``robot0_eef_stamp``, ``robot0_joint_stamp``  [T]  header stamps of the inputs used
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from d2ppo.obs import image_key, resize_image
from d2ppo_inference.policy_runner import EE_POSE_INPUT, JOINT_STATES_INPUT, LatestObservations, camera_input
from d2ppo_inference.robot_state import BasePose

from d2ppo_recorder.demo_file import DemoFile, DemoWriteError

TIMESTAMP_KEY = "timestamp"
JOINT_POS_KEY = "robot0_joint_pos"
EE_STAMP_KEY = "robot0_eef_stamp"
JOINT_STAMP_KEY = "robot0_joint_stamp"
#: Input name of the arm joint positions (``panda_joint1..7`` of ``robot/joint_states``; the fingers of the same
#: message are ``JOINT_STATES_INPUT``).
ARM_JOINTS_INPUT = "robot/joint_states:arm"

#: robomimic has env types 1 (robosuite), 2 (gym), 3 (iGibson MoMaRT); 4 marks a real robot: no simulator
#: can be built from these env_args, and training treats the data as being in the robot base frame.
REAL_ENV_TYPE = 4

_IDENTITY_BASE = BasePose()


def stamp_key(camera: str) -> str:
    """Obs key of the header stamps of a camera's images used by each sample."""
    return f"{camera}_stamp"


def real_env_args(
    task: str,
    camera_names: Sequence[str],
    image_size: int,
    control_rate_hz: float,
    robot_ip: str = "",
    robot_model: str = "Panda",
    extra: Mapping | None = None,
) -> dict:
    """robomimic ``env_args`` describing a real-robot recording setup.

    ``env_name`` is ``Real<robot_model><task>`` (e.g. RealPandaLift); ``env_kwargs`` follow robosuite's
    names where they exist (camera_names, camera_heights/widths, control_freq, controller_configs).
    """
    kwargs = {
        "robots": [robot_model],
        "robot_ip": robot_ip,
        "camera_names": list(camera_names),
        "camera_heights": int(image_size),  # 0: stored at each camera's native size
        "camera_widths": int(image_size),
        "control_freq": float(control_rate_hz),
        "frame": "panda_link0",
        "controller_configs": {
            "type": "OSC_POSE",
            "control_delta": True,
            "input_max": 1.0,
            "input_min": -1.0,
            "output_max": [0.05, 0.05, 0.05, 0.5, 0.5, 0.5],
            "output_min": [-0.05, -0.05, -0.05, -0.5, -0.5, -0.5],
            "executor": "d2ppo_control.ChunkExecutor + SafetyEnvelope in d2ppo_franka (franky)",
        },
        "recorder": "d2ppo_recorder",
        # Older files held the commanded actions; since issue 11 the actions the controller sent to the arm.
        "recorded_actions": "controller/executed",
    }
    kwargs.update(extra or {})
    return {"env_name": f"Real{robot_model}{task}", "env_version": "real", "type": REAL_ENV_TYPE, "env_kwargs": kwargs}


class InputHistory:
    """The recent messages of every input a sample is built from, so that an executed action is paired with
    what was current when it was sent although newer messages may have arrived before it.

    Per input, (stamp seconds, value) in arrival order; entries more than ``keep_s`` seconds older than the
    input's newest are forgotten (the newest is always kept), and a stamp more than ``keep_s`` before the newest
    (the clock jumped back) starts the input's history over. Images are kept resized to ``image_size``
    (0: as received), the size they are recorded at.
    """

    def __init__(self, camera_names: Sequence[str], keep_s: float, image_size: int = 0):
        self.camera_names = tuple(camera_names)
        self.keep_s = float(keep_s)
        self.image_size = int(image_size)
        self._entries: dict[str, deque[tuple[float, object]]] = {name: deque() for name in self.input_names}
        self._newest: dict[str, float] = {}

    @property
    def input_names(self) -> tuple[str, ...]:
        return (*(camera_input(c) for c in self.camera_names), EE_POSE_INPUT, JOINT_STATES_INPUT, ARM_JOINTS_INPUT)

    def set_image(self, camera: str, stamp: float, image: np.ndarray) -> None:
        """uint8 [H, W, 3] upright RGB."""
        image = np.asarray(image)
        self._add(camera_input(camera), stamp, resize_image(image, self.image_size) if self.image_size else image)

    def set_ee_pose(self, stamp: float, pos: Sequence[float], quat_xyzw: Sequence[float]) -> None:
        """Metres and an (x, y, z, w) quaternion in ``panda_link0``."""
        self._add(EE_POSE_INPUT, stamp, (np.asarray(pos, dtype=np.float64), np.asarray(quat_xyzw, dtype=np.float64)))

    def set_fingers(self, stamp: float, finger1: float, finger2: float) -> None:
        """Finger joint positions, metres, both >= 0."""
        self._add(JOINT_STATES_INPUT, stamp, (float(finger1), float(finger2)))

    def set_arm_joints(self, stamp: float, positions: Sequence[float]) -> None:
        """``panda_joint1..7``, radians."""
        self._add(ARM_JOINTS_INPUT, stamp, np.asarray(positions, dtype=np.float64).reshape(7))

    def _add(self, name: str, stamp: float, value) -> None:
        entries, stamp = self._entries[name], float(stamp)
        if stamp < self._newest.get(name, stamp) - self.keep_s:  # the clock jumped back (a sim reset): start over
            entries.clear()
            del self._newest[name]
        entries.append((stamp, value))
        newest = self._newest[name] = max(stamp, self._newest.get(name, stamp))
        while len(entries) > 1 and entries[0][0] < newest - self.keep_s:
            entries.popleft()

    def at(self, name: str, t: float) -> tuple[float, object] | None:
        """(stamp, value) of the newest entry of input ``name`` stamped at or before ``t``; None if there is none."""
        best = None
        for stamp, value in self._entries[name]:
            if stamp <= t and (best is None or stamp >= best[0]):
                best = (stamp, value)
        return best


def make_sample(history: InputHistory, t: float, max_obs_age: float) -> tuple[dict[str, np.ndarray] | None, str]:
    """The observation (robomimic keys + stamps) of an action sent at ``t`` seconds: every input's newest entry
    stamped at or before ``t``. (None, reason) when an input has none or it is more than ``max_obs_age``
    seconds older than ``t``.
    """
    picked, missing = {}, []
    for name in history.input_names:
        entry = history.at(name, t)
        if entry is None:
            missing.append(name)
        else:
            picked[name] = entry
    if missing:
        return None, f"missing {missing} (nothing stamped at or before {t:.3f})"
    for name, (stamp, _) in picked.items():
        if t - stamp > max_obs_age:
            return None, f"stale {name} ({t - stamp:.3f} s old)"
    inputs = LatestObservations(history.camera_names)
    for cam in history.camera_names:
        inputs.set_image(cam, *picked[camera_input(cam)])
    ee_stamp, (pos, quat) = picked[EE_POSE_INPUT]
    inputs.set_ee_pose(ee_stamp, pos, quat)
    finger_stamp, fingers = picked[JOINT_STATES_INPUT]
    inputs.set_fingers(finger_stamp, *fingers)
    obs = dict(inputs.raw(_IDENTITY_BASE))
    for cam in history.camera_names:
        obs[image_key(cam)] = np.array(obs[image_key(cam)])
        obs[stamp_key(cam)] = np.float64(picked[camera_input(cam)][0])
    joint_stamp, joints = picked[ARM_JOINTS_INPUT]
    obs[JOINT_POS_KEY] = joints.copy()
    obs[TIMESTAMP_KEY] = np.float64(t)
    obs[EE_STAMP_KEY] = np.float64(ee_stamp)
    obs[JOINT_STAMP_KEY] = np.float64(joint_stamp)
    return obs, ""


class RecorderStateError(RuntimeError):
    """start while recording, stop/discard with nothing to stop, or stop with too few samples."""


@dataclass
class EpisodeRecorder:
    """Collects one episode's samples and saves it as one demo when stopped.

    ``demo_file`` is a :class:`~d2ppo_recorder.demo_file.DemoFile`: a demo is durable when :meth:`stop`
    returns, and nothing that happens while one is saved -- a kill included -- can damage earlier demos.

    A save that fails (:class:`~d2ppo_recorder.demo_file.DemoWriteError`: disk full, no permission, ...) ends
    the recording but keeps its samples as the *unsaved* episode: :meth:`stop` again retries the save once the
    cause is gone; :meth:`discard` or :meth:`start` drops it.

    Attributes:
        min_steps: an episode with fewer samples is not saved (stop raises; discard it).
        skipped: samples of the current episode not taken, by reason (missing, stale, nonfinite, out_of_order).
        write_errors: failed saves since construction.
        last_write_error: why the latest save failed; "" once a save succeeds.
    """

    demo_file: DemoFile
    min_steps: int = 1
    recording: bool = False
    saved: list[str] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)
    write_errors: int = 0
    last_write_error: str = ""
    _obs: list[dict[str, np.ndarray]] = field(default_factory=list)
    _actions: list[np.ndarray] = field(default_factory=list)
    _sources: set[str] = field(default_factory=set)

    @property
    def steps(self) -> int:
        """Samples of the episode being recorded, or of the unsaved one."""
        return len(self._actions)

    @property
    def unsaved(self) -> bool:
        """A stopped episode whose save failed is waiting (stop retries, discard drops)."""
        return not self.recording and bool(self._actions)

    def start(self) -> int:
        """Begin an episode; returns the number of samples of an unsaved episode this dropped (usually 0)."""
        if self.recording:
            raise RecorderStateError(f"already recording ({self.steps} steps); stop or discard first")
        dropped = self.steps
        self._clear()
        self.skipped.clear()
        self.recording = True
        return dropped

    def add(self, obs: Mapping[str, np.ndarray], action: np.ndarray, source: str = "") -> str:
        """Append one sample (a :func:`make_sample` observation, the action [7] executed with it and the source
        of its chunk); returns "" when it was taken, else why not. A non-finite action or low-dimensional
        observation, or a time not after the previous sample's, drops the sample (counted in :attr:`skipped`):
        one bad value must not cost the episode (the file's readers reject non-finite actions)."""
        if not self.recording:
            return "not recording"
        action = np.asarray(action, dtype=np.float64).reshape(-1)
        bad = [k for k, v in obs.items() if np.asarray(v).dtype != np.uint8 and not np.all(np.isfinite(v))]
        if not np.all(np.isfinite(action)):
            bad.insert(0, "action")
        if bad:
            return self.skip(f"nonfinite {bad}")
        if self._obs and TIMESTAMP_KEY in obs and obs[TIMESTAMP_KEY] <= self._obs[-1][TIMESTAMP_KEY]:
            return self.skip(f"out_of_order at {float(obs[TIMESTAMP_KEY]):.3f}")
        self._obs.append(dict(obs))
        self._actions.append(action)
        if source:
            self._sources.add(source)
        return ""

    def skip(self, reason: str) -> str:
        """Count a sample that could not be taken under the reason's first word (missing, stale, nonfinite,
        out_of_order); returns ``reason``."""
        if self.recording:
            kind = reason.split(" ", 1)[0]
            self.skipped[kind] = self.skipped.get(kind, 0) + 1
        return reason

    def stop(self, attrs: Mapping | None = None) -> str:
        """Save the episode (or retry saving the unsaved one) as the next ``demo_N``; returns its name.

        Raises RecorderStateError (nothing to stop, too few samples: the recording goes on) or DemoWriteError
        (the save failed: the recording has stopped and its samples are kept, see the class docstring).
        """
        if not self.recording and not self.unsaved:
            raise RecorderStateError("not recording")
        if self.recording and self.steps < self.min_steps:
            raise RecorderStateError(
                f"episode has {self.steps} samples, fewer than min_steps={self.min_steps}; "
                "keep recording, or discard it"
            )
        self.recording = False
        T = self.steps
        # A saved demo is a success (the operator discards failures): sparse reward at its last step.
        rewards = np.zeros(T)
        rewards[-1] = 1.0
        attrs = {**(attrs or {}), "action_sources": ",".join(sorted(self._sources))}
        try:
            try:
                obs = {k: np.stack([o[k] for o in self._obs]) for k in self._obs[0]}
            except (KeyError, ValueError) as e:  # e.g. a camera changed its resolution with image_size 0
                raise DemoWriteError(f"{self.demo_file.path}: samples do not stack into arrays: {e}") from e
            name = self.demo_file.add_demo(obs, np.stack(self._actions), rewards=rewards, attrs=attrs)
        except DemoWriteError as e:
            self.write_errors += 1
            self.last_write_error = str(e)
            raise DemoWriteError(
                f"{e}; recording stopped, its {T} samples are kept: stop again retries the save "
                "once the cause is fixed, discard drops them"
            ) from e
        self.last_write_error = ""
        self.saved.append(name)
        self._clear()
        return name

    def discard(self) -> int:
        """Drop the episode in progress (or the unsaved one); returns how many samples were dropped."""
        if not self.recording and not self.unsaved:
            raise RecorderStateError("not recording")
        n = self.steps
        self.recording = False
        self._clear()
        return n

    def _clear(self) -> None:
        self._obs.clear()
        self._actions.clear()
        self._sources.clear()
