"""Policy stepping at control rate: newest observations -> action chunks. No ROS in here.

The inference node feeds ``LatestObservations`` from its subscriptions and calls
``PolicyRunner.tick`` once per control tick; tests and the latency benchmark drive the same
classes without ROS.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from d2ppo.obs import image_key
from d2ppo_control.chunk import ActionChunk

from d2ppo_inference.robot_state import BasePose, gripper_qpos_from_fingers

REPLAN_MODES = ("chunk", "tick")
#: How a new chunk meets the previous one (see d2ppo_control.executor): the runner implements "inpaint".
SEAMS = ("replace", "ensemble", "inpaint")


def camera_input(camera: str) -> str:
    """Input name (relative topic) of a camera's images."""
    return f"cameras/{camera}/image_raw"


EE_POSE_INPUT = "robot/ee_pose"
JOINT_STATES_INPUT = "robot/joint_states"


class LatestObservations:
    """The newest message of each input the policy needs, in ROS conventions (``panda_link0``).

    Inputs: one image per camera the policy names (uint8 [H, W, 3] upright RGB), the end-effector
    pose (metres, xyzw quaternion) and the two finger joint positions (metres, both >= 0).
    Stamps are seconds on the node's clock (sim time in the sim stack).
    """

    def __init__(self, camera_names: Sequence[str]):
        self.camera_names = tuple(camera_names)
        self._stamps: dict[str, float] = {}
        self._raw_stamps: dict[str, object] = {}  # the messages' builtin_interfaces/Time, passed on exactly
        self._images: dict[str, np.ndarray] = {}
        self._ee: tuple[np.ndarray, np.ndarray] | None = None
        self._fingers: tuple[float, float] | None = None

    @property
    def input_names(self) -> tuple[str, ...]:
        return (*(camera_input(c) for c in self.camera_names), EE_POSE_INPUT, JOINT_STATES_INPUT)

    def set_image(self, camera: str, stamp: float, image: np.ndarray, raw_stamp: object = None) -> None:
        """``raw_stamp``: the message's ``builtin_interfaces/Time``, handed on unchanged to the chunk it feeds."""
        self._images[camera] = image
        self._stamps[camera_input(camera)] = stamp
        self._raw_stamps[camera_input(camera)] = raw_stamp

    def set_ee_pose(
        self, stamp: float, pos: Sequence[float], quat_xyzw: Sequence[float], raw_stamp: object = None
    ) -> None:
        self._ee = (np.asarray(pos, dtype=np.float64), np.asarray(quat_xyzw, dtype=np.float64))
        self._stamps[EE_POSE_INPUT] = stamp
        self._raw_stamps[EE_POSE_INPUT] = raw_stamp

    def set_fingers(self, stamp: float, finger1: float, finger2: float, raw_stamp: object = None) -> None:
        self._fingers = (finger1, finger2)
        self._stamps[JOINT_STATES_INPUT] = stamp
        self._raw_stamps[JOINT_STATES_INPUT] = raw_stamp

    def clear(self) -> None:
        self._stamps.clear()
        self._raw_stamps.clear()
        self._images.clear()
        self._ee = None
        self._fingers = None

    def stamp(self, name: str) -> float | None:
        return self._stamps.get(name)

    def missing(self) -> list[str]:
        return [n for n in self.input_names if n not in self._stamps]

    def newest_stamp(self) -> float:
        return max(self._stamps[n] for n in self.input_names)

    def chunk_stamp_input(self) -> str:
        """The input whose stamp a chunk computed now carries (DESIGN.md, action chunk): the oldest camera
        frame, or without cameras the oldest input. Stamping with a fresher input would hide the camera's
        latency from the executor, which would then run the chunk's actions that much late."""
        names = [camera_input(c) for c in self.camera_names] or list(self.input_names)
        return min(names, key=lambda n: self._stamps[n])

    def raw_stamp(self, name: str) -> object:
        return self._raw_stamps.get(name)

    def camera_stamps(self) -> dict[str, float]:
        """Stamps (seconds) of the newest frame of each camera that has one."""
        return {c: self._stamps[camera_input(c)] for c in self.camera_names if camera_input(c) in self._stamps}

    def synchronized_stamp(self) -> float | None:
        """The stamp every input carries, when all are present and equal (the lock-step sim's sets)."""
        if self.missing():
            return None
        stamps = {self._stamps[n] for n in self.input_names}
        return stamps.pop() if len(stamps) == 1 else None

    def raw(self, base: BasePose) -> dict[str, np.ndarray]:
        """Raw observation (robomimic keys) in the policy's training world frame."""
        if self._ee is None or self._fingers is None:
            raise RuntimeError(f"raw() with inputs missing: {self.missing()}")
        pos, quat = base.to_world(*self._ee)
        out = {
            "robot0_eef_pos": pos,
            "robot0_eef_quat": quat,
            "robot0_gripper_qpos": gripper_qpos_from_fingers(*self._fingers),
        }
        for cam in self.camera_names:
            out[image_key(cam)] = self._images[cam]
        return out


class LatencyWindow:
    """Rolling window of durations (seconds) with percentiles in milliseconds."""

    def __init__(self, size: int = 1000):
        self._values: deque[float] = deque(maxlen=size)

    def add(self, seconds: float) -> None:
        self._values.append(seconds)

    def __len__(self) -> int:
        return len(self._values)

    def percentile_ms(self, q: float) -> float:
        if not self._values:
            return float("nan")
        return float(np.percentile(np.fromiter(self._values, dtype=np.float64), q) * 1e3)


@dataclass
class TickResult:
    """What one control tick did: published a chunk, skipped (with a reason), or neither (mid-chunk)."""

    chunk: ActionChunk | None = None
    skip_reason: str | None = None
    inference_s: float | None = None
    history_reset: bool = False
    #: the chunk's stamp as the source message carried it (builtin_interfaces/Time), when the input had one
    stamp_msg: object = None
    #: actions of the chunk conditioned on the previous chunk's (the inpaint seam)
    inpainted: int = 0


class PolicyRunner:
    """Runs a policy package on the newest observations, one control tick at a time.

    Args:
        policy: a loaded ``d2ppo.package.PolicyPackage``.
        backend: sampler backend, "torch" or "onnx".
        replan: "chunk" samples a new chunk every ``policy.act_steps`` ticks (the paper executes
            all 4 actions of a chunk); "tick" samples every tick (the executor then replaces the
            rest of the previous chunk).
        max_obs_age: seconds; a tick whose oldest input is older than this is skipped, and a gap
            this long between ticks' observations starts a fresh observation history.
        period: control period in seconds; default 1 / the card's control rate.
        seed: when given, the chain's noise is drawn from ``np.random.default_rng(seed)`` and handed to
            the sampler, so runs (and the torch and onnx backends) are reproducible; None lets the
            sampler draw its own.
        lead: pipelining: plan the next chunk ``lead`` actions before the current one runs out, so it
            arrives before its first slots are due (its first ``lead`` slots overlap the current chunk's
            last ones). -1 derives it from the measured obs->chunk latency (p99 over the recent chunks,
            ``ceil(p99 / period)``, at most act_steps - 1; 1 until measured). 0: no overlap.
        seam: "replace" | "ensemble" (executed by the controller's executor) | "inpaint" (the overlapping
            first actions of a new chunk are conditioned on the previous chunk's; torch sampler).
        sampler_options: keyword arguments of the backend's sampler (ONNX: ``threads``, ``spin``).
    """

    def __init__(
        self,
        policy,
        backend: str = "torch",
        replan: str = "chunk",
        max_obs_age: float = 0.2,
        period: float | None = None,
        seed: int | None = None,
        lead: int = 0,
        seam: str = "replace",
        sampler_options: dict | None = None,
    ):
        if replan not in REPLAN_MODES:
            raise ValueError(f"replan must be one of {REPLAN_MODES}, got {replan!r}")
        if seam not in SEAMS:
            raise ValueError(f"seam must be one of {SEAMS}, got {seam!r}")
        if int(lead) < -1:
            raise ValueError(f"lead must be >= 0 actions, or -1 (derived from the measured latency), got {lead}")
        if max_obs_age <= 0:
            raise ValueError(f"max_obs_age must be > 0 s, got {max_obs_age}")
        self.policy = policy
        self.backend = backend
        self.seam = seam
        if seam == "inpaint":
            from d2ppo_inference.inpaint import InpaintingSampler

            self.backend = "torch"  # the ONNX graph runs the chain whole; inpainting needs its steps
            self.sampler = InpaintingSampler(policy)
        else:
            self.sampler = policy.sampler(backend, **(sampler_options or {}))
        self._rng = np.random.default_rng(seed) if seed is not None else None
        self.builder = policy.obs_builder()
        self.base = BasePose.from_card(policy.card)
        self.period = float(period) if period else 1.0 / float(policy.control_rate_hz)
        self.replan = replan
        self.replan_every = int(policy.act_steps) if replan == "chunk" else 1
        self.max_obs_age = float(max_obs_age)
        self.lead_setting = int(lead)
        self.latency = LatencyWindow()
        #: observation stamp -> chunk ready (seconds on the node clock): camera latency + waiting + inference
        self.obs_to_chunk = LatencyWindow(size=200)
        self._prev_chunk: ActionChunk | None = None
        self.ticks = 0
        self.chunks = 0
        self.skipped = 0
        self.history_resets = 0
        self.last_skip_reason = ""
        self._last_stamp: float | None = None
        self._last_plan_time: float | None = None  # None: plan at the next tick

    def observation_inputs(self) -> LatestObservations:
        """An empty observation store for the cameras this policy uses."""
        return LatestObservations(self.policy.spec.camera_names)

    def reset(self) -> None:
        """Forget the observation history and plan at the next tick (new episode, re-enable)."""
        self.builder.reset()
        self._last_stamp = None
        self._last_plan_time = None
        self._prev_chunk = None

    @property
    def lead(self) -> int:
        """Actions of overlap the next plan starts early by (see ``lead`` in the class docstring)."""
        if self.replan_every <= 1:
            return 0
        if self.lead_setting >= 0:
            return min(self.lead_setting, self.replan_every - 1)
        if len(self.obs_to_chunk) == 0:
            return 1
        p99 = self.obs_to_chunk.percentile_ms(99) / 1e3
        return int(min(self.replan_every - 1, max(1, np.ceil(p99 / self.period - 1e-9))))

    def skip_reason(self, obs: LatestObservations, now: float) -> str | None:
        """Why a tick at ``now`` (seconds) cannot run on ``obs``; None when it can."""
        missing = obs.missing()
        if missing:
            return "missing " + ", ".join(missing)
        stale = []
        for name in obs.input_names:
            # Negative ages (an observation stamped ahead of this node's clock, e.g. the sim's
            # /clock arriving after its images) are fine: the data is as new as it gets.
            age = now - obs.stamp(name)
            if age > self.max_obs_age:
                stale.append(f"{name} {age:.3f} s old")
        if stale:
            return f"stale (max_obs_age {self.max_obs_age:.3f} s): " + ", ".join(stale)
        return None

    def plan_due(self, now: float) -> bool:
        """Whether the tick at ``now`` (seconds) samples a new chunk.

        Counted in time, not in ticks, so a tick that never happened (a dropped observation set
        in the lock-step sim) does not shift the replanning grid the executor relies on: the
        executor runs out of actions ``act_steps`` periods after the last chunk's stamp.
        """
        if self._last_plan_time is None:
            return True
        return now - self._last_plan_time >= (self.replan_every - self.lead - 0.5) * self.period

    def tick(self, obs: LatestObservations, now: float) -> TickResult:
        """One control tick at ``now`` (seconds): add the newest observation, maybe sample a chunk.

        ``now`` is the tick's time: the node's clock for a timer- or frame-driven node, or the stamp of
        the observation set for a node driven by the lock-step sim. The chunk is stamped with its oldest
        camera frame's stamp (:meth:`LatestObservations.chunk_stamp_input`), so the executor runs action i
        at that stamp + i * period (DESIGN.md, action chunk) and drops what a late frame made overdue.
        """
        self.ticks += 1
        reason = self.skip_reason(obs, now)
        if reason is not None:
            self.skipped += 1
            self.last_skip_reason = reason
            return TickResult(skip_reason=reason)
        stamp_input = obs.chunk_stamp_input()
        stamp = obs.stamp(stamp_input)
        result = TickResult()
        gap = None if self._last_stamp is None else stamp - self._last_stamp
        # a history of To > 1 frames must hold consecutive control steps: a dropped or skipped tick leaves a
        # hole that the policy never saw in training
        max_gap = self.max_obs_age if self.policy.spec.n_obs_steps <= 1 else min(self.max_obs_age, 2.0 * self.period)
        if gap is not None and not (0.0 <= gap <= max_gap):
            # Time went backwards (sim restarted) or observations stopped for a while (new episode,
            # stalled driver): the history no longer describes the last To control ticks.
            self.reset()
            self.history_resets += 1
            result.history_reset = True
            gap = None
        if gap is None or gap > 0.0:  # an unchanged observation is not a new frame of the history
            self.builder.add(obs.raw(self.base))
        self._last_stamp = stamp
        if not self.plan_due(now):
            return result
        t0 = time.perf_counter()
        noise = None if self._rng is None else self._rng.standard_normal(self.sampler.noise_shape(1), dtype=np.float32)
        if self.seam == "inpaint":
            known = self._committed(stamp)
            actions = self.sampler(self.builder.build(), noise=noise, known=known)
            result.inpainted = 0 if known is None else len(known)
        else:
            actions = self.sampler(self.builder.build(), noise=noise)
        actions = np.asarray(actions, dtype=np.float64)
        result.inference_s = time.perf_counter() - t0
        self.latency.add(result.inference_s)
        self.obs_to_chunk.add(max(0.0, now + result.inference_s - stamp))
        self._last_plan_time = now
        self.chunks += 1
        result.chunk = ActionChunk(stamp=stamp, period=self.period, actions=actions)
        result.stamp_msg = obs.raw_stamp(stamp_input)
        self._prev_chunk = result.chunk
        return result

    def _committed(self, stamp: float) -> np.ndarray | None:
        """The previous chunk's actions for the slots from ``stamp`` on (the overlap a pipelined chunk
        starts with), in order; None when there is no overlap."""
        prev = self._prev_chunk
        if prev is None:
            return None
        first = int(round((stamp - prev.stamp) / self.period))
        if first < 0 or first >= len(prev) or abs(prev.time_of(first) - stamp) > 0.5 * self.period:
            return None
        return np.array(prev.actions[first:])

    def stats(self) -> dict[str, float | int | str]:
        return {
            "ticks": self.ticks,
            "chunks": self.chunks,
            "skipped_ticks": self.skipped,
            "history_resets": self.history_resets,
            "last_skip_reason": self.last_skip_reason,
            "inference_p50_ms": round(self.latency.percentile_ms(50), 3),
            "inference_p99_ms": round(self.latency.percentile_ms(99), 3),
            "obs_to_chunk_p50_ms": round(self.obs_to_chunk.percentile_ms(50), 3),
            "obs_to_chunk_p99_ms": round(self.obs_to_chunk.percentile_ms(99), 3),
            "lead": self.lead,
            "seam": self.seam,
            "inference_samples": len(self.latency),
            "backend": self.backend,
            "replan": self.replan,
        }
