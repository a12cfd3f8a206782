"""FrankaController rules that need no simulator: gripper hysteresis, the reflex-retry bound, config checks.

The reflex-bound tests use ``UnrecoverableArm``, a stand-in for a robot whose recover_from_errors() keeps
failing — a hardware condition neither franky-sim nor franka-sim can produce. Everything a simulator can
show (real reflexes, recovery, chunk execution) is tested against one in the other modules here.
"""

import threading
import time

import numpy as np
import pytest
from d2ppo_control.chunk import ActionChunk
from d2ppo_control.safety import SafetyLimits
from d2ppo_franka.arm import ArmState, ReflexError
from d2ppo_franka.controller import DEFAULT_HOME_JOINTS, ControllerConfig, FrankaController, GripperLatch


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
    """Submit one chunk and tick every 0.5 s, letting the worker's recovery finish after each tick."""
    t = t0
    for _ in range(n_chunks):
        chunk = ActionChunk(stamp=t, period=0.05, actions=np.tile([0.2, 0, 0, 0, 0, 0, -1.0], (1, 1)), source="policy")
        ctrl.submit_chunk(chunk, t)
        ctrl.step(t)
        ctrl.wait_idle()
        ctrl.step(t + 0.01)
        t += 0.5
    return t


def enabled_controller(arm, limits: SafetyLimits, config: ControllerConfig | None = None) -> FrankaController:
    ctrl = FrankaController(arm, limits, config)
    ok, message = ctrl.set_enabled(True)
    assert ok and ctrl.enabled, message
    return ctrl


def test_the_controller_starts_disabled_and_executes_nothing_until_enabled():
    arm = UnrecoverableArm(recover_ok=True)
    ctrl = FrankaController(arm, SafetyLimits())
    drive(ctrl, 100.0, 2)
    assert arm.moves == 0 and ctrl.counters.chunks_ignored_disabled == 2
    level, message, values = ctrl.diagnostics()
    assert values["enabled"] == 0 and "start_enabled" in values["disabled_reason"]


def test_failed_recovery_uses_the_attempt_budget_and_latches_a_fault():
    arm = UnrecoverableArm(recover_ok=False)
    ctrl = enabled_controller(arm, SafetyLimits(max_reflex_retries=3))
    drive(ctrl, 100.0, 1)
    assert arm.recover_calls == 3
    assert ctrl.faulted and not ctrl.enabled and ctrl.counters.recovery_failures == 1
    level, message, values = ctrl.diagnostics()
    assert level == 2 and "recovery failed after 3 attempt(s)" in message and values["reflexes"] == 1
    # faulted: chunks are ignored, nothing is sent to the arm
    moves = arm.moves
    drive(ctrl, 101.0, 2)
    assert arm.moves == moves and ctrl.counters.chunks_ignored_disabled == 2


def test_zero_retries_means_no_recovery_attempt():
    arm = UnrecoverableArm(recover_ok=True)
    ctrl = enabled_controller(arm, SafetyLimits(max_reflex_retries=0))
    drive(ctrl, 100.0, 1)
    assert arm.recover_calls == 0 and ctrl.faulted


def test_a_recovered_reflex_disables_the_controller_until_the_operator_enables():
    arm = UnrecoverableArm(recover_ok=True)
    ctrl = enabled_controller(arm, SafetyLimits(max_reflex_retries=2))
    drive(ctrl, 100.0, 1)
    assert arm.recover_calls == 1 and ctrl.counters.reflex_recoveries == 1
    assert not ctrl.faulted and not ctrl.enabled and ctrl.disabled_reason.startswith("reflex")
    moves = arm.moves
    drive(ctrl, 200.0, 3)  # however long afterwards: nothing runs
    assert arm.moves == moves
    assert ctrl.set_enabled(True)[0]
    drive(ctrl, 300.0, 1)
    assert arm.moves == moves + 1  # ran again (and reflexed again), only after the operator's enable


def test_recovery_attempts_are_capped_per_enable():
    """Reflexes far apart no longer recover forever: each needs an enable, and one enable's budget is
    max_reflex_retries attempts, however the attempts are spread."""
    arm = UnrecoverableArm(recover_ok=False)
    ctrl = enabled_controller(arm, SafetyLimits(max_reflex_retries=2))
    drive(ctrl, 100.0, 1)
    assert arm.recover_calls == 2 and ctrl.faulted
    arm.recover_ok = True
    assert ctrl.set_enabled(True)[0]  # the operator's enable recovers (one attempt) and enables
    ctrl.wait_idle()
    ctrl.step(200.0)
    assert ctrl.enabled and not ctrl.faulted and arm.recover_calls == 3


class WorkingArm(UnrecoverableArm):
    """A stand-in arm whose moves succeed; recover() can be made to block (a slow recovery)."""

    def __init__(self):
        super().__init__(recover_ok=True)
        self.recover_gate = threading.Event()
        self.recover_gate.set()
        self.stops = 0
        self.joint_moves = 0

    def move_to(self, pos, quat):
        self.moves += 1

    def recover(self):
        self.recover_gate.wait(10.0)
        return super().recover()

    def stop(self):
        self.stops += 1

    def move_joints(self, joints, factor, cancelled=None):
        if cancelled is not None and cancelled.is_set():
            return False
        self.joint_moves += 1
        return True

    def read_state(self):
        return ArmState(
            np.array(DEFAULT_HOME_JOINTS), np.zeros(7), np.array([0.5, 0.0, 0.4]), np.array([1.0, 0, 0, 0]), 0.08, False
        )


def test_a_watchdog_trip_disables_the_controller():
    arm = WorkingArm()
    ctrl = enabled_controller(arm, SafetyLimits(watchdog_timeout=0.5))
    ctrl.submit_chunk(ActionChunk(stamp=10.0, period=0.05, actions=np.zeros((1, 7)), source="policy"), 10.0)
    ctrl.step(10.0)
    ctrl.step(10.6)  # no chunk for 0.6 s
    assert not ctrl.enabled and ctrl.disabled_reason.startswith("watchdog")
    assert ctrl.submit_chunk(ActionChunk(stamp=10.6, period=0.05, actions=np.zeros((1, 7)), source="policy"), 10.6) == 0


def test_stop_during_a_blocking_recovery_returns_at_once_and_nothing_resumes():
    arm = WorkingArm()
    ctrl = enabled_controller(arm, SafetyLimits())
    ctrl.faulted, ctrl.fault_message = True, "test fault"
    arm.recover_gate.clear()  # recovery now blocks until released
    ok, message = ctrl.set_enabled(True)  # the operator's enable starts a recovery on the worker
    assert ok and "recovering" in message
    t0 = time.monotonic()
    assert ctrl.step(1.0).reason == "recovery"
    ok, message = ctrl.stop()
    assert ok and time.monotonic() - t0 < 0.05, message  # served at once, not after the recovery
    arm.recover_gate.set()
    ctrl.wait_idle()
    ctrl.step(1.05)
    assert not ctrl.enabled and not ctrl.faulted  # recovered, but the stop cancelled the enable
    assert ctrl.disabled_reason == "stopped by the operator"


def test_home_is_refused_unless_enabled_not_faulted_and_inside_the_envelope():
    arm = WorkingArm()
    ctrl = FrankaController(arm, SafetyLimits())
    ok, message = ctrl.home()
    assert not ok and "disabled" in message and arm.joint_moves == 0
    ctrl.set_enabled(True)
    ctrl.faulted = True
    assert not ctrl.home()[0]
    ctrl.faulted = False
    bad_limits = FrankaController(arm, SafetyLimits(), ControllerConfig(home_joints=(0, 0, 0, 0.5, 0, 1.57, 0.785)))
    bad_limits.set_enabled(True)
    ok, message = bad_limits.home()
    assert not ok and "joint limits at joint(s) [4]" in message
    # the default home pose puts the TCP at x = 0.307 m: outside a box that starts at x = 0.35
    narrow = FrankaController(arm, SafetyLimits(workspace_min=(0.35, -0.3, 0.1)))
    narrow.set_enabled(True)
    ok, message = narrow.home()
    assert not ok and "outside the workspace box" in message
    tilted = FrankaController(arm, SafetyLimits(), ControllerConfig(home_joints=(0, -0.785, 0, -2.356, 0, 0.6, 0.785)))
    tilted.set_enabled(True)
    ok, message = tilted.home()
    assert not ok and "tilts the tool" in message
    assert arm.joint_moves == 0 and ctrl.counters.homes_refused == 2
    ok, message = ctrl.home()
    assert ok, message
    ctrl.wait_idle()
    assert arm.joint_moves == 1


def test_home_target_check_uses_the_panda_kinematics():
    """Forward kinematics against franky-sim's reported start pose (0.554, 0, 0.521), gripper down."""
    from d2ppo_franka.kinematics import forward_kinematics

    pos, quat = forward_kinematics([0.0, 0.0, 0.0, -1.57, 0.0, 1.57, 0.785])
    np.testing.assert_allclose(pos, [0.554, 0.0, 0.521], atol=0.001)
    assert abs(quat[0]) == pytest.approx(1.0, abs=1e-3)


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


def test_home_is_refused_when_the_way_there_leaves_the_box():
    """The end pose may be fine and the sweep not: from a pose far to the side, joint 1 swings the hand
    through the robot's own column, outside a box that starts at x = 0.25 m."""
    arm = WorkingArm()
    arm.read_state = lambda: ArmState(  # noqa: E731 - joint 1 turned 2.4 rad: the hand behind the robot's side
        np.array([2.4, -0.785, 0.0, -2.356, 0.0, 1.571, 0.785]), np.zeros(7), np.array([0.5, 0.0, 0.4]),
        np.array([1.0, 0, 0, 0]), 0.08, False,
    )  # fmt: skip
    ctrl = FrankaController(arm, SafetyLimits(workspace_min=(0.25, -0.6, 0.02), workspace_max=(0.75, 0.6, 0.7)))
    ctrl.set_enabled(True)
    ctrl.state = arm.read_state()
    ok, message = ctrl.home()
    assert not ok and "the way home passes" in message and arm.joint_moves == 0


def test_a_clock_jump_noticed_in_submit_still_disables():
    """The reviewer's case: a chunk on the new time line arrives before the next tick and clears the trip."""
    arm = WorkingArm()
    ctrl = enabled_controller(arm, SafetyLimits())
    ctrl.submit_chunk(ActionChunk(stamp=100.0, period=0.05, actions=np.zeros((4, 7)), source="policy"), 100.0)
    ctrl.step(100.0)
    ctrl.submit_chunk(ActionChunk(stamp=50.0, period=0.05, actions=np.full((4, 7), 0.1), source="policy"), 50.0)
    moves = arm.moves
    ctrl.step(50.0)
    assert not ctrl.enabled and ctrl.disabled_reason == "clock jumped backwards" and arm.moves == moves


def test_stop_during_the_home_start_keeps_the_joint_motion_from_starting():
    arm = WorkingArm()
    gate = threading.Event()
    calls = []
    real_stop = arm.stop

    def slow_stop():
        calls.append("stop")
        gate.wait(5.0)
        real_stop()

    def move_joints(joints, factor, cancelled=None):
        arm.stop()
        if cancelled is not None and cancelled.is_set():
            return False
        calls.append("move_joints")
        return True

    arm.stop, arm.move_joints = slow_stop, move_joints
    ctrl = enabled_controller(arm, SafetyLimits())
    assert ctrl.home()[0]
    time.sleep(0.05)  # the worker is inside the stop that precedes the joint motion
    ok, _ = ctrl.stop()
    gate.set()
    ctrl.wait_idle()
    ctrl.step(1.0)
    assert ok and "move_joints" not in calls and not ctrl.homing and not ctrl.enabled
