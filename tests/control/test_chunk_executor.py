"""ChunkExecutor: timing, replacement, staleness, watchdog, and the envelope on every action."""

import numpy as np
import pytest
from d2ppo_control.chunk import ActionChunk
from d2ppo_control.executor import ChunkExecutor
from d2ppo_control.safety import SafetyEnvelope, SafetyLimits

P = 0.05  # 20 Hz
EE = np.array([0.5, 0.0, 0.35])


def make_executor(**limits) -> ChunkExecutor:
    return ChunkExecutor(SafetyEnvelope(SafetyLimits(**limits)), period=P)


def chunk(stamp: float, xs, period: float = P) -> ActionChunk:
    """A chunk whose action i moves x by xs[i] (normalised); makes actions identifiable."""
    actions = np.zeros((len(xs), 7))
    actions[:, 0] = xs
    return ActionChunk(stamp=stamp, period=period, actions=actions)


def run(ex: ChunkExecutor, t0: float, n: int):
    """Tick n times from t0; returns [(kind, x or None, reason)]."""
    out = []
    for k in range(n):
        cmd = ex.tick(t0 + k * P, EE)
        out.append((cmd.kind, None if cmd.action is None else round(float(cmd.action[0]), 6), cmd.reason))
    return out


def test_chunk_actions_execute_one_per_tick_at_their_times():
    ex = make_executor()
    assert ex.submit(chunk(10.0, [0.1, 0.2, 0.3, 0.4]), now=10.0) == 4
    got = run(ex, 10.0, 5)
    assert got[:4] == [("move", 0.1, ""), ("move", 0.2, ""), ("move", 0.3, ""), ("move", 0.4, "")]
    assert got[4] == ("hold", None, "idle")
    assert ex.stats()["actions_executed"] == 4


def test_chunk_arriving_between_ticks_loses_no_action():
    """From rest a chunk plays all its actions, one per tick, however the ticks are phased against its stamp."""
    for first_tick in (10.01, 10.04):
        ex = make_executor()
        ex.submit(chunk(10.0, [0.1, 0.2, 0.3, 0.4]), now=10.001)
        got = run(ex, first_tick, 4)
        assert [x for _, x, _ in got] == [0.1, 0.2, 0.3, 0.4]


def test_stale_chunk_actions_are_dropped():
    ex = make_executor()
    # Arrives 120 ms after its observation: actions 0 and 1 (due 10.00, 10.05) are > 1 period overdue.
    assert ex.submit(chunk(10.0, [0.1, 0.2, 0.3, 0.4]), now=10.12) == 2
    assert ex.stats()["actions_dropped_stale"] == 2
    got = run(ex, 10.12, 3)
    assert [x for _, x, _ in got] == [0.3, 0.4, None]


def test_actions_that_become_overdue_while_pending_are_dropped_not_run_late():
    ex = make_executor()
    ex.submit(chunk(10.0, [0.1, 0.2, 0.3, 0.4]), now=10.0)
    assert ex.tick(10.0, EE).action[0] == pytest.approx(0.1)
    # the controller stalls for 130 ms: 0.2 (due 10.05) is overdue beyond tolerance; of 0.3 (10.10, 30 ms late)
    # and 0.4 (10.15, 20 ms ahead) the nearer slot runs
    cmd = ex.tick(10.13, EE)
    assert cmd.action[0] == pytest.approx(0.4)
    assert ex.stats()["actions_dropped_stale"] == 2
    # a stall of 90 ms: 0.3 is 40 ms overdue and 0.4 is due: the run catches up
    ex = make_executor()
    ex.submit(chunk(10.0, [0.1, 0.2, 0.3, 0.4]), now=10.0)
    ex.tick(10.0, EE)
    ex.tick(10.05, EE)
    assert ex.tick(10.14, EE).action[0] == pytest.approx(0.4)
    # a stall of 70 ms: the nearest slot is the overdue one, and it still runs
    ex = make_executor()
    ex.submit(chunk(10.0, [0.1, 0.2, 0.3, 0.4]), now=10.0)
    ex.tick(10.0, EE)
    assert ex.tick(10.07, EE).action[0] == pytest.approx(0.2)


def test_newer_chunk_replaces_the_rest_of_the_older_one():
    ex = make_executor()
    ex.submit(chunk(10.0, [0.1, 0.2, 0.3, 0.4]), now=10.0)
    run(ex, 10.0, 2)  # 0.1, 0.2 executed
    assert ex.submit(chunk(10.1, [0.15, 0.25, 0.35, 0.45]), now=10.1) == 4
    got = run(ex, 10.1, 5)
    assert [x for _, x, _ in got] == [0.15, 0.25, 0.35, 0.45, None]
    assert ex.stats()["actions_replaced"] == 2  # 0.3, 0.4 never ran


def test_older_or_equal_stamp_chunk_is_ignored_and_counted():
    ex = make_executor()
    ex.submit(chunk(10.1, [0.35, 0.45]), now=10.1)
    assert ex.submit(chunk(10.0, [0.1, 0.2]), now=10.11) == 0
    assert ex.submit(chunk(10.1, [0.3, 0.3]), now=10.12) == 0
    assert ex.stats()["chunks_ignored_old"] == 2
    assert [x for _, x, _ in run(ex, 10.12, 2)] == [0.35, 0.45]


def test_chunk_with_nan_is_rejected_whole_and_cancels_pending_actions():
    ex = make_executor()
    ex.submit(chunk(10.0, [0.1, 0.2, 0.3, 0.4]), now=10.0)
    run(ex, 10.0, 1)
    assert ex.submit(chunk(10.05, [0.5, np.nan, 0.7, 0.8]), now=10.05) == 0
    assert run(ex, 10.05, 3) == [("hold", None, "idle")] * 3
    s = ex.stats()
    assert s["chunks_rejected_non_finite"] == 1 and s["actions_cancelled"] == 3


def test_chunk_with_a_different_period_is_rejected():
    ex = make_executor()
    assert ex.submit(chunk(10.0, [0.1, 0.2], period=0.1), now=10.0) == 0
    assert ex.stats()["chunks_rejected_period"] == 1


def test_action_rejected_by_envelope_becomes_a_hold_and_later_actions_still_run():
    ex = make_executor()
    ex.submit(chunk(10.0, [0.1, 5.0, 0.3]), now=10.0)  # 5.0 is outside [-1, 1]
    got = run(ex, 10.0, 3)
    assert got == [("move", 0.1, ""), ("hold", None, "rejected_out_of_range"), ("move", 0.3, "")]
    s = ex.stats()
    assert s["actions_rejected"] == 1 and s["safety_rejected_out_of_range"] == 1


def test_envelope_clipping_reaches_the_command():
    ex = make_executor(max_translation_per_step=0.01)
    ex.submit(chunk(10.0, [1.0]), now=10.0)
    cmd = ex.tick(10.0, EE)
    assert cmd.kind == "move" and cmd.reason == "clipped_translation"
    assert cmd.action[0] == pytest.approx(0.01 / 0.05)
    np.testing.assert_allclose(cmd.target_pos, EE + [0.01, 0, 0])


def test_watchdog_holds_after_timeout_without_valid_chunks():
    ex = make_executor(watchdog_timeout=0.32)
    assert ex.tick(0.0, EE).reason == "waiting"  # not armed before the first chunk
    ex.submit(chunk(10.0, [0.1] * 10), now=10.0)  # a 0.5 s chunk, longer than the watchdog
    got = run(ex, 10.0, 10)
    # moves while the chunk is younger than 0.32 s, then holds even though actions were left
    assert [k for k, _, _ in got] == ["move"] * 7 + ["hold"] * 3
    assert got[-1][2] == "watchdog"
    s = ex.stats()
    assert s["watchdog_trips"] == 1 and s["holds_watchdog"] == 3 and s["actions_cancelled"] == 3
    # a new valid chunk re-arms it
    ex.submit(chunk(10.6, [0.2]), now=10.6)
    assert ex.tick(10.6, EE).kind == "move"


def test_watchdog_trips_when_only_stale_chunks_arrive():
    ex = make_executor(watchdog_timeout=0.3)
    ex.submit(chunk(10.0, [0.1]), now=10.0)
    ex.tick(10.0, EE)
    for k in range(1, 8):  # newer chunks, but each arrives ~0.3 s after its observation: useless
        t = 10.2 + k * 0.1
        assert ex.submit(chunk(10.0 + k * 0.001, [0.1, 0.1]), now=t) == 0
        ex.tick(t, EE)
    assert ex.stats()["watchdog_trips"] == 1 and ex.stats()["chunks_all_stale"] == 7


def test_reset_forgets_pending_and_stamp_but_keeps_counters():
    ex = make_executor()
    ex.submit(chunk(10.0, [0.1, 0.2]), now=10.0)
    ex.reset()
    assert ex.tick(10.0, EE).reason == "waiting"
    assert ex.submit(chunk(5.0, [0.3]), now=5.0) == 1  # an earlier stamp is fine after a reset
    assert ex.stats()["chunks_received"] == 2 and ex.stats()["actions_cancelled"] == 2


def test_stats_expose_every_counter():
    ex = make_executor()
    s = ex.stats()
    for key in (
        "chunks_ignored_old",
        "actions_dropped_stale",
        "watchdog_trips",
        "safety_rejected_workspace",
        "safety_rejected_non_finite",
        "safety_clipped_translation",
        "pending_actions",
    ):
        assert key in s


def test_chunk_stamped_more_than_one_period_ahead_is_rejected_and_counted():
    ex = make_executor()
    assert ex.submit(chunk(10.0 + P, [0.1]), now=10.0) == 1  # exactly one period ahead: fine
    assert ex.submit(chunk(10.0 + 1.5 * P, [0.2]), now=10.0) == 0
    assert ex.submit(chunk(3600.0, [0.3]), now=10.0) == 0  # a publisher clock an hour ahead
    assert ex.stats()["chunks_rejected_future"] == 2
    assert [x for _, x, _ in run(ex, 10.05, 2)] == [0.1, None]


def test_only_the_active_source_is_executed():
    ex = make_executor()
    ex.set_source("policy")
    teleop = ActionChunk(stamp=10.0, period=P, actions=np.zeros((1, 7)), source="teleop")
    unmarked = ActionChunk(stamp=10.0, period=P, actions=np.zeros((1, 7)))
    assert ex.submit(teleop, now=10.0) == 0 and ex.submit(unmarked, now=10.0) == 0
    assert ex.stats()["chunks_other_source"] == 2
    policy = chunk(10.0, [0.1, 0.2, 0.3])
    policy = ActionChunk(stamp=policy.stamp, period=P, actions=policy.actions, source="policy")
    assert ex.submit(policy, now=10.0) == 3
    assert ex.tick(10.0, EE).source == "policy"
    # a live teleop sending zero-motion chunks does not keep the watchdog fed while the policy is silent
    for k in range(1, 20):
        ex.submit(ActionChunk(stamp=10.0 + k * P, period=P, actions=np.zeros((1, 7)), source="teleop"), 10.0 + k * P)
    assert ex.tick(11.0, EE).reason == "watchdog"
    # switching the source cancels the other source's pending actions
    ex.submit(ActionChunk(stamp=11.0, period=P, actions=np.zeros((4, 7)), source="policy"), now=11.0)
    ex.set_source("teleop")
    assert ex.pending == 0
    with pytest.raises(ValueError, match="source"):
        ex.set_source("joystick")


def test_backward_clock_jump_clears_the_queue_and_trips_the_watchdog():
    ex = make_executor()
    ex.submit(chunk(100.0, [0.1, 0.2, 0.3, 0.4]), now=100.0)
    assert ex.tick(100.0, EE).action[0] == pytest.approx(0.1)
    cmd = ex.tick(5.0, EE)  # /clock restarted
    assert cmd.reason == "watchdog" and ex.pending == 0
    s = ex.stats()
    assert s["clock_jumps_back"] == 1 and s["watchdog_trips"] == 1 and s["actions_cancelled"] == 3
    # it holds until a valid chunk on the new time line arrives (its stamp may be older than the last one)
    assert ex.tick(5.05, EE).reason == "watchdog"
    assert ex.submit(chunk(5.1, [0.5]), now=5.1) == 1
    assert ex.tick(5.1, EE).action[0] == pytest.approx(0.5)
