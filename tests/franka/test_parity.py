"""Sim/real action parity (issue 10, item 5): ``response: robosuite`` in the controller, and the parity tool.

The controller tests drive FrankaController with a stand-in arm (its targets recorded); the last test runs the tool on
a short sequence through robosuite and through the real node process on franky-sim, and pins its figures.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import ros_domains
from d2ppo_control.chunk import ActionChunk
from d2ppo_control.osc import quat_multiply
from d2ppo_control.osc_response import OscResponse
from d2ppo_control.safety import SafetyLimits
from d2ppo_franka.arm import ArmState
from d2ppo_franka.controller import MODEL_REST_TOLERANCE, ControllerConfig, FrankaController

PERIOD = 0.05
START = np.array([0.5, 0.0, 0.4])
DOWN = np.array([1.0, 0.0, 0.0, 0.0])
LIMITS = SafetyLimits(workspace_min=(0.25, -0.35, 0.02), workspace_max=(0.75, 0.35, 0.70))


class TrackingArm:
    """A stand-in arm that records targets and stands on the last one (``follow``) or stays where it started."""

    robot_ip = "stand-in"

    def __init__(self, follow: bool = True):
        self.follow = follow
        self.connected = True
        self.pos, self.quat = START.copy(), DOWN.copy()
        self.targets: list[tuple[np.ndarray, np.ndarray]] = []

    def poll(self):
        return True

    def read_state(self):
        return ArmState(np.zeros(7), np.zeros(7), self.pos.copy(), self.quat.copy(), 0.08, True)

    def move_to(self, pos, quat):
        self.targets.append((np.array(pos), np.array(quat)))
        if self.follow:
            self.pos, self.quat = np.array(pos), np.array(quat)

    def gripper_command(self, close):
        return True


def controller(arm, response: str = "robosuite", limits: SafetyLimits = LIMITS) -> FrankaController:
    ctrl = FrankaController(arm, limits, ControllerConfig(response=response))
    ok, message = ctrl.set_enabled(True)
    assert ok, message
    return ctrl


def run(ctrl: FrankaController, actions: np.ndarray, t0: float = 100.0) -> float:
    """One one-action chunk per tick (like teleop); returns the time after the last tick."""
    t = t0
    for a in np.asarray(actions, dtype=np.float64):
        ctrl.submit_chunk(ActionChunk(stamp=t, period=PERIOD, actions=a[None], source="policy"), t)
        ctrl.step(t)
        t += PERIOD
    return t


def actions(n: int, **components) -> np.ndarray:
    a = np.zeros((n, 7))
    a[:, 6] = -1.0
    for k, v in components.items():
        a[:, "x y z rx ry rz".split().index(k)] = v
    return a


def test_robosuite_response_sends_the_models_poses_as_targets():
    arm = TrackingArm()
    ctrl = controller(arm)
    seq = np.concatenate([actions(4, x=0.5), actions(12)])
    run(ctrl, seq)
    expected, _ = OscResponse(START, DOWN).rollout(seq)
    sent = np.array([p for p, _ in arm.targets])
    np.testing.assert_allclose(sent, expected[1 : len(sent) + 1], atol=1e-12)  # one target per step, in order
    # four +0.5 actions: 19 mm by the 4th tick, 25 mm in all (robosuite: 19.0 and 25.2), not direct's 100 mm
    assert sent[3, 0] - START[0] == pytest.approx(0.019, abs=0.002)
    assert sent[-1, 0] - START[0] == pytest.approx(0.0255, abs=0.001)
    assert ctrl.counters.model_steps_limited == 0


def test_zero_actions_let_the_model_coast_then_keep_the_target_and_send_nothing():
    arm = TrackingArm()
    ctrl = controller(arm)
    t = run(ctrl, actions(20, y=0.2))
    moving = len(arm.targets)
    t = run(ctrl, actions(10), t)
    coast = len(arm.targets) - moving
    last = arm.targets[-1][0]
    kept = ctrl.counters.targets_kept
    run(ctrl, actions(60), t)  # 3 s of a policy asking to stay
    print(f"\n[zero actions] {coast} coast targets sent, then {ctrl.counters.targets_kept - kept} of 60 kept")
    assert 1 <= coast <= 5  # the decaying coast (2.6 mm/step model speed: a few mm) is sent ...
    assert len(arm.targets) == moving + coast  # ... then nothing more, however long the zeros last
    assert ctrl.counters.targets_kept - kept == 60
    # at rest close to where the model would settle: the coast stops being sent once a step is shorter than
    # MODEL_REST_TOLERANCE, and what is left of it is about as long again
    model = OscResponse(START, DOWN)
    model.rollout(np.concatenate([actions(20, y=0.2), actions(40)]))
    assert np.linalg.norm(last - model.pos) <= 2 * MODEL_REST_TOLERANCE


def test_zero_actions_before_any_motion_send_nothing():
    arm = TrackingArm()
    ctrl = controller(arm)
    run(ctrl, actions(20))
    assert arm.targets == [] and ctrl.counters.targets_kept == 20


def test_model_targets_never_step_further_than_the_envelope_allows_nor_leave_the_box():
    """Random in-range actions (full scale, reversals) against an arm near the box's x wall: every target is within
    one envelope step (0.025 m, 0.05 rad) of the previous one and inside the box, fingertips included."""
    rng = np.random.default_rng(1)
    arm = TrackingArm()
    ctrl = controller(arm)
    seq = np.concatenate([actions(30, x=1.0), rng.uniform(-1, 1, (200, 7)), actions(20, x=1.0), actions(10)])
    run(ctrl, seq)
    pos = np.array([START] + [p for p, _ in arm.targets])
    quat = np.array([DOWN] + [q for _, q in arm.targets])
    steps = np.linalg.norm(np.diff(pos, axis=0), axis=1)
    turns = [
        2 * np.arccos(min(1.0, abs(quat_multiply(b, np.array([-a[0], -a[1], -a[2], a[3]]))[3])))
        for a, b in zip(quat[:-1], quat[1:])
    ]
    print(
        f"\n[bounds] {len(arm.targets)} targets: largest step {steps.max() * 1e3:.1f} mm, turn {max(turns):.3f} rad; "
        f"model steps limited {ctrl.counters.model_steps_limited}"
    )
    assert steps.max() <= 0.025 + 1e-9
    assert max(turns) <= 0.05 + 1e-6
    assert all(ctrl.envelope.pose_problem(p, q) is None for p, q in arm.targets)
    assert pos[:, 0].max() > 0.7  # it did run up against the wall


def test_the_model_does_not_coast_through_the_box_wall():
    """workspace_mode clip puts the goal on the wall; the model (damping ratio 0.77) would overshoot it by a fraction
    of a millimetre: those steps are cut at the previous target."""
    wall = 0.56
    limits = SafetyLimits(workspace_min=(0.25, -0.35, 0.02), workspace_max=(wall, 0.35, 0.70), workspace_mode="clip")
    arm = TrackingArm()
    ctrl = controller(arm, limits=limits)
    run(ctrl, np.concatenate([actions(40, x=1.0), actions(10)]))
    x = np.array([p[0] for p, _ in arm.targets])
    assert x.max() <= wall and x.max() > wall - 1e-4
    assert ctrl.counters.model_steps_limited > 0
    assert all(ctrl.envelope.pose_problem(p, q) is None for p, q in arm.targets)


def test_the_tracking_lead_holds_model_steps_back_when_the_arm_does_not_follow():
    arm = TrackingArm(follow=False)  # the arm stays at START
    ctrl = controller(arm)
    run(ctrl, actions(40, x=0.5))
    lead = ctrl.config.max_tracking_lead
    ahead = max(float(np.linalg.norm(p - START)) for p, _ in arm.targets)
    print(f"\n[lead] target at most {ahead * 1e3:.1f} mm ahead; {ctrl.counters.steps_held_back} steps held back")
    assert ctrl.counters.steps_held_back > 0
    assert ahead <= lead + 0.025  # lead + one step, as with direct


def test_direct_response_is_unchanged():
    arm = TrackingArm()
    ctrl = controller(arm, response="direct")
    run(ctrl, actions(4, x=0.5))
    np.testing.assert_allclose([p[0] - START[0] for p, _ in arm.targets], [0.025, 0.05, 0.075, 0.1], atol=1e-12)


def test_unknown_response_is_refused():
    with pytest.raises(ValueError, match="response"):
        ControllerConfig(response="osc")


# -- the parity tool ----------------------------------------------------------------------------------------------
def parity_cli(*args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "d2ppo_franka.parity", *args], capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["--sequences", "zigzag"], "parity: unknown sequence 'zigzag'; choose from step4, step20, ramp"),
        (["--sequences", "rollout"], "parity: sequence 'rollout' needs --demo FILE[:demo_key]"),
        (["--sequences", "rollout", "--demo", "/nonexistent/demos.hdf5"], "parity: demo file /nonexistent/demos.hdf5"),
        (["--responses", "osc"], "parity: unknown response 'osc'"),
        (["--slowdown", "0.5"], "parity: --slowdown must be >= 1"),
    ],
)
def test_bad_input_is_one_clear_line(args, message):
    out = parity_cli(*args, "--out", "/nonexistent-out")
    assert out.returncode == 2
    assert out.stderr.strip().startswith(message), out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_robosuite_and_model_only_print_a_table_and_a_json_line(tmp_path):
    out = parity_cli("--sequences", "step4", "--responses", "--out", str(tmp_path))
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    summary = json.loads(lines[-1])
    figures = summary["sequences"]["step4"]["model"]
    assert figures["pos_rms_m"] < 0.003 and figures["reference_final_m"] == pytest.approx(0.025, abs=0.002)
    assert any(line.startswith("step4     model") for line in lines)
    assert (tmp_path / "parity.png").stat().st_size > 10_000 and (tmp_path / "parity.json").exists()


@pytest.mark.franky
@pytest.mark.ros
@pytest.mark.timeout(120)
def test_step4_on_franky_sim_follows_robosuite_within_the_bar(tmp_path):
    """The tool's figures for step4 (4 x +0.5 in x) on the real node process against franky-sim (paced at 1/3 real
    time, the node stretched alike): with ``response: robosuite`` within 1 cm RMS of robosuite (measured 2.0 mm RMS,
    25.1 vs 25.2 mm in all); ``direct`` ran 50 mm for robosuite's 25 (20.5 mm RMS)."""
    from d2ppo_franka.parity import run_parity

    domain = ros_domains.claim_domain(range(60, 80))
    try:
        results, _, conditions = run_parity(["step4"], ["robosuite"], domain=domain, log_dir=tmp_path)
    finally:
        ros_domains.release_domain(domain)
    node = results["step4"]["node robosuite"]
    print(f"\n[parity step4] {conditions}: " + json.dumps(node))
    assert node["info"]["actions_executed"] == 16
    assert node["pos_rms_m"] <= 0.006
    assert node["final_m"] == pytest.approx(node["reference_final_m"], abs=0.003)
    assert results["step4"]["model"]["pos_rms_m"] <= 0.003
