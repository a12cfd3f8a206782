"""FrankaController rules that need no simulator: gripper hysteresis, the reflex-retry bound, config checks.

The reflex-bound tests use ``UnrecoverableArm``, a stand-in for a robot whose recover_from_errors() keeps
failing — a hardware condition neither franky-sim nor franka-sim can produce. Everything a simulator can
show (real reflexes, recovery, chunk execution) is tested against one in the other modules here.
"""

import numpy as np
import pytest
from d2ppo_control.chunk import ActionChunk
from d2ppo_control.safety import SafetyLimits
from d2ppo_franka.arm import ArmState, ReflexError
from d2ppo_franka.controller import ControllerConfig, FrankaController, GripperLatch


def test_gripper_latch_has_hysteresis():
    latch = GripperLatch(close_above=0.5, open_below=-0.5)
    assert latch.update(0.0) is None  # undecided until a decisive value
    assert latch.update(0.7) is True
    assert latch.update(0.2) is True and latch.update(-0.4) is True  # inside the band: keep closed
    assert latch.update(-0.6) is False
    assert latch.update(0.49) is False


def test_gripper_thresholds_must_leave_a_band():
    with pytest.raises(ValueError, match="hysteresis"):
        ControllerConfig(gripper_close_threshold=0.0, gripper_open_threshold=0.1)


class UnrecoverableArm:
    """An arm that reflexes on every move and whose recovery can be made to fail."""

    robot_ip = "stand-in"

    def __init__(self, recover_ok: bool):
        self.recover_ok = recover_ok
        self.recover_calls = 0
        self.moves = 0
        self.connected = True
        self.has_errors = False

    def poll(self):
        return True

    def read_state(self):
        return ArmState(np.zeros(7), np.zeros(7), np.array([0.5, 0.0, 0.4]), np.array([1.0, 0, 0, 0]), 0.08, True)

    def move_to(self, pos, quat):
        self.moves += 1
        raise ReflexError("ControlException: motion aborted by reflex! ['joint_velocity_violation']")

    def recover(self):
        self.recover_calls += 1
        return self.recover_ok

    def gripper_command(self, close):
        return True


def drive(ctrl: FrankaController, t0: float, n_chunks: int) -> float:
    t = t0
    for _ in range(n_chunks):
        ctrl.submit_chunk(ActionChunk(stamp=t, period=0.05, actions=np.tile([0.2, 0, 0, 0, 0, 0, -1.0], (1, 1))), t)
        ctrl.step(t)
        t += 0.5
    return t


def test_failed_recovery_stops_after_max_retries_and_latches_a_fault():
    arm = UnrecoverableArm(recover_ok=False)
    ctrl = FrankaController(arm, SafetyLimits(max_reflex_retries=3))
    drive(ctrl, 100.0, 1)
    assert arm.recover_calls == 3
    assert ctrl.faulted and ctrl.counters.recovery_failures == 1
    level, message, values = ctrl.diagnostics()
    assert level == 2 and "recovery failed after 3 attempts" in message and values["reflexes"] == 1
    # faulted: chunks are ignored, nothing is sent to the arm
    moves = arm.moves
    drive(ctrl, 101.0, 2)
    assert arm.moves == moves and ctrl.counters.chunks_ignored_disabled == 2


def test_zero_retries_means_no_recovery_attempt():
    arm = UnrecoverableArm(recover_ok=True)
    ctrl = FrankaController(arm, SafetyLimits(max_reflex_retries=0))
    drive(ctrl, 100.0, 1)
    assert arm.recover_calls == 0 and ctrl.faulted


def test_recovered_reflexes_in_a_row_beyond_the_bound_latch_a_fault():
    arm = UnrecoverableArm(recover_ok=True)
    ctrl = FrankaController(arm, SafetyLimits(max_reflex_retries=2), ControllerConfig(reflex_streak_reset_s=5.0))
    drive(ctrl, 100.0, 2)  # two reflexes 0.5 s apart, each recovered at the first attempt
    assert not ctrl.faulted and ctrl.counters.reflex_recoveries == 2
    drive(ctrl, 101.0, 1)  # the third in a row exceeds the bound
    assert ctrl.faulted and "3 reflexes in a row" in ctrl.fault_message
    ok, _ = ctrl.set_enabled(True)
    assert ok and not ctrl.faulted


def test_reflexes_far_apart_do_not_accumulate():
    arm = UnrecoverableArm(recover_ok=True)
    ctrl = FrankaController(arm, SafetyLimits(max_reflex_retries=1), ControllerConfig(reflex_streak_reset_s=1.0))
    for k in range(4):
        drive(ctrl, 100.0 + 10.0 * k, 1)
    assert not ctrl.faulted and ctrl.counters.reflexes == 4


def test_shipped_franka_yaml_documents_the_node_defaults():
    """launch/franka.yaml is what users edit; it must state the defaults the code falls back to."""
    import dataclasses
    from pathlib import Path

    import yaml
    from d2ppo_franka.franka_node import NODE_DEFAULTS

    params = yaml.safe_load((Path(__file__).resolve().parents[2] / "launch" / "franka.yaml").read_text())
    params = params["/**"]["ros__parameters"]
    expected = dict(NODE_DEFAULTS)
    for f in dataclasses.fields(ControllerConfig):
        expected[f.name] = list(f.default) if isinstance(f.default, tuple) else f.default
    assert params == expected


def test_steps_add_up_while_the_arm_is_within_the_lead():
    from d2ppo_franka.controller import lead_gated_target

    q = np.array([1.0, 0.0, 0.0, 0.0])
    ee = np.array([0.5, 0.0, 0.4])
    pos, quat, held = lead_gated_target(ee + [0.025, 0, 0], q, ee + [0.05, 0, 0], q, ee, q, 0.03, 0.5)
    assert not held
    np.testing.assert_allclose(pos, ee + [0.05, 0, 0])  # lead + one step ahead at most


def test_steps_away_from_an_arm_beyond_the_lead_are_held_back_and_reversals_are_not():
    from d2ppo_control.osc import axis_angle_to_quat, quat_multiply
    from d2ppo_franka.controller import lead_gated_target

    q = np.array([1.0, 0.0, 0.0, 0.0])
    ee = np.array([0.5, 0.0, 0.4 - 0.01])  # the arm lags 0.04 m behind (and sags 1 cm below) its target
    target = np.array([0.54, 0.0, 0.4])
    pos, _, held = lead_gated_target(target, q, target + [0.025, 0, 0], q, ee, q, 0.03, 0.5)
    assert held
    np.testing.assert_array_equal(pos, target)  # kept as is: the measured pose (its sag) never enters
    pos, _, held = lead_gated_target(target, q, target - [0.025, 0, 0], q, ee, q, 0.03, 0.5)
    assert not held
    np.testing.assert_allclose(pos, target - [0.025, 0, 0])
    # orientation: the same rule with the rotation lead
    ahead = quat_multiply(axis_angle_to_quat([0.0, 0.0, 0.6]), q)
    further = quat_multiply(axis_angle_to_quat([0.0, 0.0, 0.2]), ahead)
    _, quat, held = lead_gated_target(target, ahead, target, further, target, q, 0.03, 0.5)
    assert held
    np.testing.assert_array_equal(quat, ahead)


def test_watchdog_action_must_be_brake_or_settle():
    assert ControllerConfig().watchdog_action == "brake"  # the safe default
    ControllerConfig(watchdog_action="settle")
    with pytest.raises(ValueError, match="watchdog_action"):
        ControllerConfig(watchdog_action="coast")
