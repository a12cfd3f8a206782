"""Demonstration recording without ROS: which action is executed when, what is observed with it, and
writing each finished episode as one robomimic demo.

One sample per executed action. An action chunk's action ``i`` counts as executed at
``stamp + i * period`` under the controller executor's timing rules (:class:`CommandedActions`); a
teleop chunk has one action, recorded as it arrives. Each sample pairs that action with the newest
observation of every input at that moment -- what a policy deployed in the same stack would have
seen when it chose the action -- so a policy trained on the file learns observation -> action with
deployment's timing. The action stored is the one *commanded* (what the policy must output), not the
controller's possibly clipped version.

Observations are stored under robomimic names, built by the inference node's own
``LatestObservations.raw`` (the one path from ROS state to policy inputs), in the robot base frame
``panda_link0`` (the base is the world of real data: ``env_args.type`` is not robosuite's, so
training stores a zero robot base position and the inference node uses the base frame unchanged).

Per-sample obs keys (T samples):
  ``<camera>_image``       uint8 [T, S, S, 3]  upright RGB, resized to ``image_size`` (0: native size)
  ``robot0_eef_pos``       [T, 3]  metres;  ``robot0_eef_quat`` [T, 4] (x, y, z, w)
  ``robot0_gripper_qpos``  [T, 2]  metres, robosuite's sign convention (finger1, -finger2)
  ``robot0_joint_pos``     [T, 7]  radians
  ``timestamp``            [T]     seconds (ROS time) at which the action was due
  ``<camera>_stamp``, ``robot0_eef_stamp``, ``robot0_joint_stamp``  [T]  header stamps of the inputs used
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from d2ppo.obs import image_key, resize_image
from d2ppo_control import ActionChunk
from d2ppo_inference.policy_runner import EE_POSE_INPUT, JOINT_STATES_INPUT, LatestObservations, camera_input
from d2ppo_inference.robot_state import BasePose

TIMESTAMP_KEY = "timestamp"
JOINT_POS_KEY = "robot0_joint_pos"
EE_STAMP_KEY = "robot0_eef_stamp"
JOINT_STAMP_KEY = "robot0_joint_stamp"

#: robomimic has env types 1 (robosuite), 2 (gym), 3 (iGibson MoMaRT); 4 marks a real robot: no simulator
#: can be built from these env_args, and training treats the data as being in the robot base frame.
REAL_ENV_TYPE = 4

_IDENTITY_BASE = BasePose()


def stamp_key(camera: str) -> str:
    """Obs key of the header stamps of a camera's images used by each sample."""
    return f"{camera}_stamp"


def real_env_args(task: str, camera_names: Sequence[str], image_size: int, control_rate_hz: float,
                  robot_ip: str = "", robot_model: str = "Panda", extra: Mapping | None = None) -> dict:
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
    }
    kwargs.update(extra or {})
    return {"env_name": f"Real{robot_model}{task}", "env_version": "real", "type": REAL_ENV_TYPE, "env_kwargs": kwargs}


class CommandedActions:
    """Which action of the latest chunk is executed when, by the controller executor's timing rules
    (``d2ppo_control.executor``): action ``i`` is due at ``stamp + i * period``; due once the time is
    within half a period; more than ``late_tolerance`` overdue -> dropped; a chunk with a larger stamp
    replaces what is left of the previous one; an older or equal stamp is ignored.
    """

    def __init__(self, period: float, late_tolerance: float | None = None):
        self.period = float(period)
        self.late_tolerance = float(period if late_tolerance is None else late_tolerance)
        self._pending: deque[tuple[float, np.ndarray]] = deque()
        self._last_stamp: float | None = None
        self.dropped = 0

    def submit(self, chunk: ActionChunk, now: float) -> int:
        """Schedule a chunk received at ``now`` (seconds); returns how many of its actions were scheduled."""
        if self._last_stamp is not None and chunk.stamp <= self._last_stamp:
            return 0
        self._last_stamp = chunk.stamp
        self._pending.clear()
        for i, action in enumerate(chunk.actions):
            self._pending.append((chunk.time_of(i), np.asarray(action, dtype=np.float64)))
        return len(self._pending)

    def pop_due(self, now: float) -> list[tuple[float, np.ndarray]]:
        """(due time, action [7]) of every action that is executed by ``now``, oldest first."""
        out = []
        while self._pending and self._pending[0][0] <= now + 0.5 * self.period:
            due, action = self._pending.popleft()
            if due < now - self.late_tolerance:
                self.dropped += 1
                continue
            out.append((due, action))
        return out


class RobotJoints:
    """Newest arm joint positions (``panda_joint1..7``, radians) and their stamp."""

    def __init__(self):
        self.positions: np.ndarray | None = None
        self.stamp: float | None = None

    def set(self, stamp: float, positions: Sequence[float]) -> None:
        self.positions = np.asarray(positions, dtype=np.float64).reshape(7)
        self.stamp = stamp


def make_sample(inputs: LatestObservations, joints: RobotJoints, due: float, now: float,
                max_obs_age: float, image_size: int) -> tuple[dict[str, np.ndarray] | None, str]:
    """One sample's observation (robomimic keys + stamps), or (None, reason) when an input is missing
    or older than ``max_obs_age`` seconds at ``now``.

    Args:
        image_size: square side in pixels images are stored at; 0 keeps the camera's size.
    """
    missing = inputs.missing() + ([JOINT_STATES_INPUT] if joints.positions is None else [])
    if missing:
        return None, f"missing {sorted(set(missing))}"
    for name in inputs.input_names:
        age = now - inputs.stamp(name)
        if age > max_obs_age:
            return None, f"stale {name} ({age:.3f} s old)"
    obs = dict(inputs.raw(_IDENTITY_BASE))
    for cam in inputs.camera_names:
        key = image_key(cam)
        obs[key] = resize_image(np.asarray(obs[key]), image_size) if image_size else np.array(obs[key])
        obs[stamp_key(cam)] = np.float64(inputs.stamp(camera_input(cam)))
    obs[JOINT_POS_KEY] = joints.positions.copy()
    obs[TIMESTAMP_KEY] = np.float64(due)
    obs[EE_STAMP_KEY] = np.float64(inputs.stamp(EE_POSE_INPUT))
    obs[JOINT_STAMP_KEY] = np.float64(joints.stamp)
    return obs, ""


class RecorderStateError(RuntimeError):
    """start while recording, stop/discard while idle, or stop with too few samples."""


@dataclass
class EpisodeRecorder:
    """Collects one episode's samples and writes it as one demo when stopped.

    ``writer`` is a ``d2ppo.data.robomimic_hdf5.RobomimicWriter``: each demo is written, flushed and the
    file closed before :meth:`stop` returns, so a crash later loses only the episode in progress.

    Attributes:
        min_steps: an episode with fewer samples is not saved (stop raises; discard it).
        valid_fraction: after each save, ``mask/train`` / ``mask/valid`` are rewritten with this split.
    """

    writer: object
    min_steps: int = 1
    valid_fraction: float = 0.1
    recording: bool = False
    saved: list[str] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)
    _obs: list[dict[str, np.ndarray]] = field(default_factory=list)
    _actions: list[np.ndarray] = field(default_factory=list)

    @property
    def steps(self) -> int:
        return len(self._actions)

    def start(self) -> None:
        if self.recording:
            raise RecorderStateError(f"already recording ({self.steps} steps); stop or discard first")
        self.recording = True
        self._obs.clear()
        self._actions.clear()

    def add(self, obs: Mapping[str, np.ndarray], action: np.ndarray) -> None:
        """Append one sample (a :func:`make_sample` observation and the action [7] executed with it)."""
        if self.recording:
            self._obs.append(dict(obs))
            self._actions.append(np.asarray(action, dtype=np.float64).reshape(-1))

    def skip(self, reason: str) -> None:
        """Count a sample that could not be taken (the reason's first word: missing / stale)."""
        if self.recording:
            kind = reason.split(" ", 1)[0]
            self.skipped[kind] = self.skipped.get(kind, 0) + 1

    def stop(self, attrs: Mapping | None = None) -> str:
        """Write the episode as the next ``demo_N``; returns its name."""
        if not self.recording:
            raise RecorderStateError("not recording")
        if self.steps < self.min_steps:
            raise RecorderStateError(f"episode has {self.steps} samples, fewer than min_steps={self.min_steps}; "
                                     "keep recording, or discard it")
        keys = self._obs[0].keys()
        obs = {k: np.stack([o[k] for o in self._obs]) for k in keys}
        actions = np.stack(self._actions)
        T = len(actions)
        # A saved demo is a success (the operator discards failures): sparse reward at its last step.
        rewards = np.zeros(T)
        rewards[-1] = 1.0
        name = self.writer.add_demo(obs, actions, rewards=rewards, attrs=dict(attrs or {}))
        if self.valid_fraction > 0:
            self.writer.write_masks(self.valid_fraction, seed=0)
        self.saved.append(name)
        self.recording = False
        self._obs.clear()
        self._actions.clear()
        return name

    def discard(self) -> int:
        """Drop the episode in progress; returns how many samples were dropped."""
        if not self.recording:
            raise RecorderStateError("not recording")
        n = self.steps
        self.recording = False
        self._obs.clear()
        self._actions.clear()
        return n
