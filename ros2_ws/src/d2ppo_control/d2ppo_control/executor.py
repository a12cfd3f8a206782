"""Chunk execution: turns a stream of action chunks into one command per control tick.

The same class runs in the franka node and the sim node, so sim and real execute chunks identically
(DESIGN.md, "Action chunk"):

* action ``i`` of a chunk is due at ``chunk.stamp + i * chunk.period``. From rest, a chunk plays its actions
  one per tick from the first one not stale (it cannot be late for a motion that has not started: its grid
  shifts by the start's delay). In a continuous run each tick runs the slot nearest to it: an overdue slot is
  skipped when a later one is also due, so a pipelined chunk that arrives late (camera latency) or a tick that
  came late catches up with the time grid instead of running late ever after (skipping measured better than
  running late: see _SKIP_LATENESS);
* an action that is more than ``late_tolerance`` overdue is dropped, never executed late (its observation
  is too old); the default tolerance of one period absorbs the phase between a chunk's arrival and the
  next tick, so a chunk that arrives on time loses nothing;
* a newer chunk (larger stamp) takes over the slots it covers, by the *seam* strategy: ``replace`` (the rest
  of the older chunk is dropped) or ``ensemble`` (ACT-style temporal ensembling: every chunk's prediction for
  a slot is kept and the slot runs their weighted mean, weight ``exp(-ensemble_decay * i)`` for the i-th
  oldest prediction; a one-action chunk — teleop, a hold — always replaces); a chunk with an older or equal stamp is ignored (out-of-order delivery, a restarted
  publisher replaying old data). A slot already executed is never executed again: a pipelined chunk
  (computed while the previous one still ran) that arrives after some of its slots ran starts at the
  first slot not yet executed (``actions_already_executed``). The third strategy, ``inpaint``, lives in the
  inference node (the new chunk's first actions are conditioned on the ones already committed); the
  executor runs its chunks like ``replace``;
* a chunk with NaN/inf anywhere, or a period other than the executor's, is rejected whole and cancels what
  was pending: the policy that produced it is not trusted for the rest of its plan either;
* a chunk stamped more than one period ahead of the executor's clock is rejected and counted (a publisher
  whose clock runs ahead would otherwise queue actions for the future without bound);
* one source at a time: with :attr:`ChunkExecutor.source` set (``"policy"`` or ``"teleop"``), chunks of
  another source (``ActionChunk.source``, the message's ``header.frame_id``) are dropped and counted;
* a backward jump of the clock (a restarted ``/clock``, a sim reset) cancels what was pending, forgets
  the newest stamp and trips the watchdog, so nothing queued against the old time line runs later;
* every action goes through the :class:`~d2ppo_control.safety.SafetyEnvelope`; a rejected action is a hold;
* watchdog: once armed by the first valid chunk, if no valid chunk (one with at least one schedulable
  action) arrived for ``limits.watchdog_timeout`` seconds, pending actions are cancelled and every tick
  holds until a new valid chunk arrives.

Times are seconds on one clock (ROS time on the robot, sim time in simulation).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from d2ppo_control.chunk import SOURCES, ActionChunk
from d2ppo_control.safety import SafetyEnvelope

MOVE = "move"
HOLD = "hold"

#: Executor counters, all present from the start so diagnostics show the full set.
EXECUTOR_COUNTERS = (
    "chunks_received",
    "chunks_accepted",
    "chunks_ignored_old",
    "chunks_rejected_non_finite",
    "chunks_rejected_period",
    "chunks_rejected_future",
    "chunks_other_source",
    "chunks_all_stale",
    "actions_scheduled",
    "actions_executed",
    "actions_rejected",
    "actions_dropped_stale",
    "actions_replaced",
    "actions_already_executed",
    "actions_ensembled",
    "actions_cancelled",
    "watchdog_trips",
    "clock_jumps_back",
    "holds_watchdog",
    "holds_idle",
)

#: A chunk's period may differ from the executor's by this fraction (clock rounding in messages).
_PERIOD_TOLERANCE = 0.05
#: Seconds the clock may step back between two calls before it counts as a jump (float rounding).
_CLOCK_JUMP_TOLERANCE = 1e-6
#: How chunks meet: the executor implements replace and ensemble; inpaint is conditioned in the inference
#: node and executed like replace.
SEAM_STRATEGIES = ("replace", "ensemble", "inpaint")
#: Periods a slot may be overdue, in a continuous run, before the executor skips it for a later due slot: half a
#: period, i.e. the slot nearest the tick runs. Measured (scripts/bench_sim2real.py, 9 real-time rows x 20
#: episodes): 156/180 successes with 0.5 vs 142/180 with 0.75, which drops fewer actions (0-3 % vs 6-13 %) but
#: runs them up to 37 ms late (docs/results/sim2real.json, sim2real_skip075.json).
_SKIP_LATENESS = 0.5


class _Slot:
    """One scheduled slot: its due time on the chunk's grid, when it is to run (the due time, shifted when a
    chunk starts from rest late), and every prediction for it (oldest first)."""

    __slots__ = ("due", "run_at", "predictions")

    def __init__(self, due: float, action: np.ndarray):
        self.due = due
        self.run_at = due
        self.predictions = [action]

    def action(self, decay: float) -> np.ndarray:
        if len(self.predictions) == 1:
            return self.predictions[0]
        w = np.exp(-decay * np.arange(len(self.predictions)))
        return (w[:, None] * np.asarray(self.predictions)).sum(0) / w.sum()


@dataclass(frozen=True)
class Command:
    """What the robot does this tick.

    Attributes:
        kind: "move" (execute ``action``) or "hold" (send no new motion; stay at / settle on the last
            accepted target).
        action: ``[7]`` normalised OSC_POSE delta after the envelope (possibly clipped); None for a hold.
        reason: for a hold: "waiting" (no chunk yet), "idle" (nothing due now), "watchdog", or the
            envelope's rejection counter name; for a move: the envelope's clip reasons or "".
        target_pos: ``[3]`` metres, base-frame end-effector target the envelope checked (moves only).
        due: seconds, the time the executed action was due (moves only).
        source: the source of the chunk the action came from (moves only).
    """

    kind: str
    action: np.ndarray | None
    reason: str = ""
    target_pos: np.ndarray | None = None
    due: float | None = None
    source: str = ""

    @property
    def is_move(self) -> bool:
        return self.kind == MOVE


class ChunkExecutor:
    """Schedules chunk actions at their times and releases them one per tick through the envelope."""

    def __init__(
        self,
        envelope: SafetyEnvelope,
        period: float,
        late_tolerance: float | None = None,
        source: str | None = None,
        seam: str = "replace",
        ensemble_decay: float = 0.01,
    ):
        """
        Args:
            envelope: checks every action; its limits also give the watchdog timeout.
            period: seconds between ticks (1 / control rate); chunks must have the same period.
            late_tolerance: seconds an action may be overdue and still run; default one period.
            source: execute only chunks of this source (see :meth:`set_source`); None accepts every chunk.
            seam: "replace", "ensemble" or "inpaint" (see the module docstring).
            ensemble_decay: ACT's m: the i-th oldest prediction of a slot weighs exp(-m * i).
        """
        if seam not in SEAM_STRATEGIES:
            raise ValueError(f"seam must be one of {SEAM_STRATEGIES}, got {seam!r}")
        if not (np.isfinite(ensemble_decay) and ensemble_decay >= 0.0):
            raise ValueError(f"ensemble_decay must be >= 0, got {ensemble_decay}")
        self.seam = seam
        self.ensemble_decay = float(ensemble_decay)
        if not (np.isfinite(period) and period > 0.0):
            raise ValueError(f"period must be a positive number of seconds, got {period}")
        self.envelope = envelope
        self.period = float(period)
        self.late_tolerance = float(period if late_tolerance is None else late_tolerance)
        if self.late_tolerance < 0.0:
            raise ValueError(f"late_tolerance must be >= 0, got {late_tolerance}")
        self.counters: dict[str, int] = dict.fromkeys(EXECUTOR_COUNTERS, 0)
        self._pending: deque[_Slot] = deque()
        self._pending_source = ""
        self._last_executed_due: float | None = None  # due time of the newest slot executed
        self._ran_last_tick = False  # the previous tick consumed a slot: a continuous run
        self._last_stamp: float | None = None
        self._last_valid_at: float | None = None
        self._watchdog_tripped = False
        self._forced_trip = False  # a clock jump holds like an expired watchdog until a valid chunk arrives
        self._last_now: float | None = None
        self.source: str | None = None
        self.set_source(source)

    def set_source(self, source: str | None) -> None:
        """Execute only chunks whose ``source`` is ``source`` from now on (None: any); what was pending from
        another source is cancelled."""
        if source is not None and source not in SOURCES:
            raise ValueError(f"chunk source must be one of {SOURCES}, got {source!r}")
        if source != self.source:
            self._cancel_pending()
            self._last_stamp = None
        self.source = source

    def _observe_clock(self, now: float) -> None:
        """Notice a backward clock jump: cancel pending actions, forget the newest stamp, trip the watchdog."""
        if self._last_now is not None and now < self._last_now - _CLOCK_JUMP_TOLERANCE:
            self.counters["clock_jumps_back"] += 1
            self._cancel_pending()
            self._last_stamp = None
            self._last_executed_due = None
            self._forced_trip = True
        self._last_now = now

    # -- input -----------------------------------------------------------------------------------------
    def submit(self, chunk: ActionChunk, now: float) -> int:
        """Schedule a chunk received at ``now`` (seconds); returns how many of its actions were scheduled."""
        c = self.counters
        c["chunks_received"] += 1
        self._observe_clock(now)
        if self.source is not None and chunk.source != self.source:
            c["chunks_other_source"] += 1
            return 0
        if not chunk.is_finite():
            c["chunks_rejected_non_finite"] += 1
            self._cancel_pending()
            return 0
        if abs(chunk.period - self.period) > _PERIOD_TOLERANCE * self.period:
            c["chunks_rejected_period"] += 1
            self._cancel_pending()
            return 0
        if chunk.stamp > now + self.period * (1.0 + 1e-9):
            c["chunks_rejected_future"] += 1
            return 0
        if self._last_stamp is not None and chunk.stamp <= self._last_stamp:
            c["chunks_ignored_old"] += 1
            return 0
        c["chunks_accepted"] += 1
        self._pending_source = chunk.source
        self._last_stamp = chunk.stamp
        oldest_allowed = now - self.late_tolerance
        half = 0.5 * self.period
        new: list[tuple[float, np.ndarray]] = []
        for i, action in enumerate(chunk.actions):
            t = chunk.time_of(i)
            if len(chunk) > 1 and self._last_executed_due is not None and t <= self._last_executed_due + half:
                # its slot ran (from an older plan); a one-action chunk is a command for now, not a slot of a plan
                c["actions_already_executed"] += 1
            elif t < oldest_allowed:
                c["actions_dropped_stale"] += 1
            else:
                new.append((t, action))
        # ensembling averages the overlapping predictions of a policy's open-loop plans; a one-action chunk
        # (teleop, an operator's hold) is a command for now and replaces what was pending
        if self.seam == "ensemble" and self._pending and len(chunk) > 1:
            # older slots before the new chunk's first still run; later ones gain the new prediction
            first = new[0][0] if new else np.inf
            kept = [s for s in self._pending if s.due < first - half]
            rest = [s for s in self._pending if s.due >= first - half]
            slots = []
            for t, action in new:
                match = next((s for s in rest if abs(s.due - t) < half), None)
                if match is None:
                    slots.append(_Slot(t, action))
                else:
                    match.predictions.append(action)
                    slots.append(match)
                    c["actions_ensembled"] += 1
            c["actions_replaced"] += sum(1 for s in rest if s not in slots)
            self._pending = deque(kept + slots)
        else:
            c["actions_replaced"] += len(self._pending)
            self._pending = deque(_Slot(t, a) for t, a in new)
        scheduled = len(new)
        c["actions_scheduled"] += scheduled
        if scheduled == 0:
            c["chunks_all_stale"] += 1  # arrived too late to use; does not feed the watchdog
        else:
            self._last_valid_at = now
            self._watchdog_tripped = False
            self._forced_trip = False
        return scheduled

    # -- output ----------------------------------------------------------------------------------------
    def tick(self, now: float, ee_pos: np.ndarray, ee_quat: np.ndarray | None = None) -> Command:
        """The command for the tick at ``now`` (seconds).

        Args:
            ee_pos: ``[3]`` metres, base-frame end-effector position the next delta is applied to.
            ee_quat: ``[4]`` xyzw, the orientation it is applied to (enables the envelope's orientation cone
                and fingertip checks; controllers pass it).
        """
        c = self.counters
        self._observe_clock(now)
        oldest_allowed = now - self.late_tolerance
        while self._pending and self._pending[0].run_at < oldest_allowed:
            self._pending.popleft()
            c["actions_dropped_stale"] += 1

        if self.watchdog_expired(now):
            self._ran_last_tick = False
            self._cancel_pending()
            if not self._watchdog_tripped:
                self._watchdog_tripped = True
                c["watchdog_trips"] += 1
            c["holds_watchdog"] += 1
            return Command(HOLD, None, "watchdog")

        half = 0.5 * self.period
        if not self._ran_last_tick and self._pending and now - self._pending[0].run_at > half:
            # from rest a chunk plays its actions one per tick from the first one not stale: shift its grid
            late = now - self._pending[0].run_at
            for slot in self._pending:
                slot.run_at += late
        # in a continuous run the next slot runs unless it is more than _SKIP_LATENESS periods overdue while a
        # later one is also due: then the run catches up with the time grid (a tick that came late, a chunk
        # joined late) instead of running late ever after
        while (
            len(self._pending) >= 2
            and self._pending[1].run_at <= now + half
            and now - self._pending[0].run_at > _SKIP_LATENESS * self.period
        ):
            self._pending.popleft()
            c["actions_dropped_stale"] += 1
        self._ran_last_tick = bool(self._pending) and self._pending[0].run_at <= now + half
        if self._ran_last_tick:
            slot = self._pending.popleft()
            due, action = slot.due, slot.action(self.ensemble_decay)
            self._last_executed_due = due
            decision = self.envelope.check(action, ee_pos, self.period, ee_quat)
            if not decision.ok:
                c["actions_rejected"] += 1
                return Command(HOLD, None, decision.reason, due=due, source=self._pending_source)
            c["actions_executed"] += 1
            return Command(MOVE, decision.action, decision.reason, decision.target_pos, due, self._pending_source)

        c["holds_idle"] += 1
        return Command(HOLD, None, "waiting" if self._last_valid_at is None else "idle")

    def watchdog_expired(self, now: float) -> bool:
        """True once armed and no valid chunk arrived for ``watchdog_timeout`` seconds, or after a backward clock
        jump until the next valid chunk."""
        if self._forced_trip:
            return True
        return self._last_valid_at is not None and now - self._last_valid_at > self.envelope.limits.watchdog_timeout

    # -- bookkeeping -----------------------------------------------------------------------------------
    def _cancel_pending(self) -> None:
        self.counters["actions_cancelled"] += len(self._pending)
        self._pending.clear()

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def last_valid_at(self) -> float | None:
        """Seconds: when the newest valid chunk arrived (None before the first, and after reset)."""
        return self._last_valid_at

    @property
    def last_tick(self) -> float | None:
        """Seconds: ``now`` of the latest tick."""
        return self._last_now

    def stats(self) -> dict[str, int | float]:
        """Executor and envelope counters plus live values, flat, for ``/diagnostics``."""
        out: dict[str, int | float] = dict(self.counters)
        out.update({f"safety_{k}": v for k, v in self.envelope.counters.items()})
        out["pending_actions"] = len(self._pending)
        out["watchdog_tripped"] = int(self._watchdog_tripped)
        out["active_source"] = self.source or "any"
        age = -1.0
        if self._last_valid_at is not None and self._last_now is not None:
            age = self._last_now - self._last_valid_at
        out["last_valid_chunk_age_s"] = age
        return out

    def reset(self) -> None:
        """Forget pending actions, the newest stamp and the watchdog (new episode, re-enable, after homing).

        Counters are cumulative and survive a reset.
        """
        self._cancel_pending()
        self._last_stamp = None
        self._last_valid_at = None
        self._watchdog_tripped = False
        self._forced_trip = False
        self._last_now = None  # a reset starts a new time line (a sim episode restarts at t = 0)
        self._last_executed_due = None
        self._ran_last_tick = False
