"""Lock-step episodes: the sim's clock, chunk execution and episode bookkeeping. No ROS in here.

CPU rendering runs the sim slower than real time (Lift with cameras: ~7-20 steps/s on the dev
machine), so the sim owns the clock: it publishes /clock and advances it one control period per
physics step. At each tick it publishes the observation stamped ``t`` and, when the policy is due
to replan (no chunk yet, or ``replan_every`` periods after the last chunk's stamp, the same rule
as ``PolicyRunner.plan_due``), waits (wall-clock bounded) for the chunk stamped ``t`` before it
steps. Mid-chunk ticks do not wait at all. So an episode's actions do not depend on how fast the
inference node happens to be, and the sim never idles longer than inference takes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from d2ppo_control.chunk import ActionChunk
from d2ppo_control.executor import HOLD, ChunkExecutor, Command

from d2ppo_sim.robosuite_sim import RobosuiteSim, SimObservation

#: robosuite OSC_POSE delta that keeps the arm where it is and the gripper as it is: a zero
#: delta pose, and gripper 0 (robosuite's Panda gripper moves by sign(action), so 0 is "no change").
HOLD_ACTION = np.zeros(7)


@dataclass
class EpisodeResult:
    index: int
    success: bool
    steps: int
    sim_time_s: float
    wall_time_s: float
    lockstep_timeouts: int
    moves: int
    holds: int
    final_ee_pos: list[float]  # metres, panda_link0: a fingerprint for comparing runs
    #: the executor's counters over this episode (chunks accepted, actions executed / dropped stale / ...)
    executor: dict = field(default_factory=dict)
    #: real-time mode: observation stamp -> chunk receipt at the sim node, milliseconds (p50, p99, max, n)
    obs_to_chunk_ms: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


#: executor counters recorded per episode (see d2ppo_control.executor.EXECUTOR_COUNTERS)
_EPISODE_COUNTERS = (
    "chunks_accepted",
    "actions_scheduled",
    "actions_executed",
    "actions_dropped_stale",
    "actions_already_executed",
    "actions_replaced",
    "actions_ensembled",
    "actions_rejected",
    "watchdog_trips",
)


@dataclass
class ReplanSchedule:
    """When the sim must wait for a fresh chunk: mirrors the inference node's replanning grid."""

    period: float  # seconds
    replan_every: int  # ticks between chunks: act_steps ("chunk") or 1 ("tick")
    last_chunk_stamp: float | None = None

    def reset(self) -> None:
        self.last_chunk_stamp = None

    def on_chunk(self, stamp: float) -> None:
        if self.last_chunk_stamp is None or stamp > self.last_chunk_stamp:
            self.last_chunk_stamp = stamp

    def chunk_due(self, t: float) -> bool:
        """True while the chunk for the tick at ``t`` (seconds) has not arrived."""
        if self.last_chunk_stamp is None:
            return True
        return t - self.last_chunk_stamp >= (self.replan_every - 0.5) * self.period


@dataclass
class LockstepSim:
    """Episodes of a ``RobosuiteSim`` executed through a ``ChunkExecutor`` on sim time.

    Args:
        sim: the env.
        executor: the same executor (and safety envelope) the franka node runs.
        replan_every: ticks between the chunks the inference node sends (see ``ReplanSchedule``).
        horizon: maximum control ticks per episode.
        start_time: seconds of sim time at the first tick (0 would read as "no clock yet").
        episode_gap: sim seconds between episodes; longer than the inference node's max_obs_age so
            it starts a fresh observation history, and the executor's watchdog cannot carry over.
    """

    sim: RobosuiteSim
    executor: ChunkExecutor
    replan_every: int
    horizon: int
    start_time: float = 1.0
    episode_gap: float = 1.0
    enabled: bool = True
    t: float = field(init=False)
    episode: int = field(init=False, default=0)
    step_count: int = field(init=False, default=0)
    results: list[EpisodeResult] = field(init=False, default_factory=list)

    def __post_init__(self):
        if self.horizon < 1:
            raise ValueError(f"horizon must be >= 1 tick, got {self.horizon}")
        self.period = self.sim.period
        self.t = self.start_time
        self.schedule = ReplanSchedule(self.period, self.replan_every)
        self._timeouts = 0
        self._moves = 0
        self._holds = 0
        self._wall_start = time.monotonic()
        self._success = False
        self._counters_at_start = self._counters()
        self.sim.reset()

    # --- inputs ----------------------------------------------------------------------------------
    def submit(self, chunk: ActionChunk) -> int:
        """A chunk arrived (at the current tick ``t``); returns the number of actions scheduled."""
        if not self.enabled:
            return 0  # /controller/enable false: ignore chunks (DESIGN.md)
        self.schedule.on_chunk(chunk.stamp)
        return self.executor.submit(chunk, self.t)

    def set_enabled(self, enabled: bool) -> None:
        if enabled and not self.enabled:
            self.executor.reset()
            self.schedule.reset()
        self.enabled = enabled

    def note_timeout(self) -> None:
        """The wait for a due chunk ran out of wall time; the tick goes on (and holds)."""
        self._timeouts += 1

    # --- the tick ----------------------------------------------------------------------------------
    def observation(self) -> SimObservation:
        return self.sim.observation()

    def chunk_due(self) -> bool:
        return self.enabled and self.schedule.chunk_due(self.t)

    def step(self) -> Command:
        """Execute the tick at ``t``: one executor command, one physics step, ``t`` += period."""
        obs = self.sim.observation()
        if self.enabled:
            cmd = self.executor.tick(self.t, obs.ee_pos, obs.ee_quat)
        else:
            cmd = Command(HOLD, None, "controller disabled")
        if cmd.is_move:
            self._moves += 1
            self.sim.step(cmd.action)
        else:
            self._holds += 1
            self.sim.step(HOLD_ACTION)
        self.step_count += 1
        self.t += self.period
        self._success = self._success or self.sim.success()
        return cmd

    @property
    def episode_done(self) -> bool:
        return self._success or self.step_count >= self.horizon

    def finish_episode(self) -> EpisodeResult:
        """Close the current episode (success, horizon or a reset request) and start the next."""
        result = EpisodeResult(
            index=self.episode,
            success=self._success,
            steps=self.step_count,
            sim_time_s=round(self.step_count * self.period, 6),
            wall_time_s=round(time.monotonic() - self._wall_start, 3),
            lockstep_timeouts=self._timeouts,
            moves=self._moves,
            holds=self._holds,
            final_ee_pos=[round(float(v), 6) for v in self.sim.observation().ee_pos],
            executor={
                k: v - self._counters_at_start.get(k, 0)
                for k, v in self._counters().items()
                if k in _EPISODE_COUNTERS or (k.startswith("safety_") and v - self._counters_at_start.get(k, 0))
            },
        )
        self._counters_at_start = self._counters()
        self.results.append(result)
        self.episode += 1
        self.step_count = 0
        self._timeouts = self._moves = self._holds = 0
        self._success = False
        self._wall_start = time.monotonic()
        self.t += self.episode_gap
        self.executor.reset()
        self.schedule.reset()
        self.sim.reset()
        return result

    def restart_episode(self) -> None:
        """Start the current episode afresh: sim and executor reset, nothing counted yet (the real-time mode,
        once the policy's first chunk arrived)."""
        self.sim.reset()
        self.executor.reset()
        self.schedule.reset()
        self.step_count = 0
        self._timeouts = self._moves = self._holds = 0
        self._success = False
        self._wall_start = time.monotonic()
        self._counters_at_start = self._counters()

    def _counters(self) -> dict[str, int]:
        return {**self.executor.counters, **{f"safety_{k}": v for k, v in self.executor.envelope.counters.items()}}

    def summary(self) -> dict:
        n = len(self.results)
        k = sum(r.success for r in self.results)
        return {
            "episodes": n,
            "successes": k,
            "success_rate": (k / n) if n else float("nan"),
            "per_episode": [r.to_dict() for r in self.results],
        }
