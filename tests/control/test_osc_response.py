"""The response model (d2ppo_control.osc_response): robosuite's closed-loop OSC_POSE response in pure Python.

The pure tests pin the model's behaviour; the last ones replay the parity tool's sequences through robosuite itself
(Lift, no cameras, ~5 s) and compare.
"""

import numpy as np
import pytest
from d2ppo_control.osc import axis_angle_to_quat, quat_multiply, quat_to_axis_angle
from d2ppo_control.osc_response import OscGains, OscResponse

DOWN = np.array([1.0, 0.0, 0.0, 0.0])  # tool pointing down (xyzw)


def x_after(actions: np.ndarray, gains: OscGains | None = None) -> np.ndarray:
    pos, _ = OscResponse(np.zeros(3), DOWN, gains).rollout(actions)
    return pos[:, 0]


def plus_x(n: int, zeros: int = 0, value: float = 0.5) -> np.ndarray:
    a = np.zeros((n + zeros, 7))
    a[:n, 0] = value
    return a


def test_a_step_of_four_actions_lags_its_goal_and_settles_near_the_sum_of_the_deltas():
    # robosuite, measured: 19.0 mm at the 4th tick, at rest at 25.2 mm (the deltas sum to 100 mm)
    x = x_after(plus_x(4, zeros=16))
    assert x[4] == pytest.approx(0.019, abs=0.002)
    assert x[-1] == pytest.approx(0.0252, abs=0.001)
    assert np.all(np.diff(x) >= -1e-9)  # critically damped enough not to come back


def test_constant_actions_reach_robosuites_steady_speed_not_the_nominal_step():
    # robosuite, measured: 6.3-6.4 mm per step for +0.5 (a 25 mm goal step); 119.7 mm after 20 actions
    x = x_after(plus_x(20))
    assert np.diff(x)[-5:] == pytest.approx(0.0064, abs=0.0003)
    assert x[20] == pytest.approx(0.1197, abs=0.003)


def test_zero_actions_from_rest_leave_the_model_still_and_after_motion_let_it_coast_to_rest():
    m = OscResponse(np.array([0.5, 0.0, 0.3]), DOWN)
    assert m.at_rest
    pos, quat = m.step(np.zeros(3), np.zeros(3))
    np.testing.assert_array_equal(pos, [0.5, 0.0, 0.3])
    assert m.at_rest
    for _ in range(10):
        m.step(np.array([0.025, 0, 0]), np.zeros(3))
    moving = m.pos[0]
    coast = np.diff([moving] + [m.step(np.zeros(3), np.zeros(3))[0][0] for _ in range(10)])
    assert coast[0] > 0.002  # it keeps moving after the input stopped (robosuite: 3.8 mm, then 1.7, 1.2, ...)
    assert np.all(coast >= -1e-5) and abs(coast[-1]) < 1e-4  # and decays to rest
    assert not m.at_rest  # velocities are small, not zero: the controller decides when it is at rest
    m.stop()
    assert m.at_rest


def test_each_model_step_stays_within_the_step_of_the_largest_delta():
    """The controller sends the model pose as the target; the envelope bounds the delta (the goal step), and the
    model, a low-pass of its goals, never moves further in one step than that bound, also on reversals."""
    rng = np.random.default_rng(0)
    m = OscResponse(np.zeros(3), DOWN)
    bound = 0.025  # launch/safety.yaml: 0.5 m/s x 0.05 s
    prev = m.pos.copy()
    worst = 0.0
    for k in range(2000):
        if k % 50 < 10:
            d = np.array([bound, 0, 0]) * (1 if (k // 50) % 2 else -1)  # bang-bang reversals at full step
        else:
            d = rng.uniform(-1, 1, 3)
            d *= bound / max(np.linalg.norm(d), bound)
        pos, _ = m.step(d, np.zeros(3))
        worst = max(worst, float(np.linalg.norm(pos - prev)))
        prev = pos
    assert worst <= 0.5 * bound, worst  # measured: ~0.3 of the bound at worst


def test_rotations_are_about_base_axes_whatever_the_start_orientation():
    tilted = quat_multiply(axis_angle_to_quat([0.3, 0.0, 0.0]), DOWN)
    for start in (DOWN, tilted):
        m = OscResponse(np.zeros(3), start)
        for _ in range(10):
            _, q = m.step(np.zeros(3), np.array([0.0, 0.0, 0.05]))
        rot = quat_to_axis_angle(quat_multiply(q, np.array([-start[0], -start[1], -start[2], start[3]])))
        assert rot[2] == pytest.approx(0.10, abs=0.01)  # robosuite, measured: 0.107 rad of the 0.5 asked
        assert np.abs(rot[:2]).max() < 1e-6
        np.testing.assert_allclose(m.pos, 0.0, atol=1e-12)


def test_the_angular_speed_saturates_like_robosuites_wrist():
    m = OscResponse(np.zeros(3), DOWN)
    for _ in range(10):
        m.step(np.zeros(3), np.array([0.0, 0.0, 0.45]))
    assert m.angular_speed == pytest.approx(OscGains().max_angular_speed, rel=1e-6)


@pytest.mark.parametrize(
    "bad", [{"kp": 0.0}, {"kd": -1.0}, {"max_angular_speed": 0.0}, {"substeps": 0}, {"dt": 0.1}, {"kp": np.nan}]
)
def test_bad_gains_are_refused(bad):
    with pytest.raises(ValueError, match="OscGains"):
        OscGains(**bad)


# -- against robosuite ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def robosuite_runner():
    from d2ppo_franka.parity import RobosuiteRunner

    runner = RobosuiteRunner(seed=0)
    yield runner
    runner.close()


@pytest.mark.parametrize(
    "name, pos_rms, rot_rms",
    # measured (seed 0): step4 1.6 mm / 7 mrad, step20 4.1 / 20, ramp 2.3 / 5.5, rotation 2.5-4.0 / 4.6-5.4 (the
    # rotation of robosuite's arm during translations, up to 31 mrad, is coupling the model leaves out)
    [("step4", 0.003, 0.012), ("step20", 0.006, 0.03), ("ramp", 0.004, 0.01), ("rotation", 0.006, 0.01)],
)
def test_the_model_follows_robosuite_on_the_parity_sequences(robosuite_runner, name, pos_rms, rot_rms):
    from d2ppo_franka.parity import compare, run_model, sequence

    actions = sequence(name)
    figures = compare(robosuite_runner.run(actions), run_model(actions))
    print(f"\n[model vs robosuite] {name}: " + ", ".join(f"{k} {v * 1e3:.1f}" for k, v in figures.items()))
    assert figures["pos_rms_m"] <= pos_rms
    assert figures["rot_rms_rad"] <= rot_rms


def test_the_fitted_gains_beat_robosuites_nominal_ones(robosuite_runner):
    from d2ppo_franka.parity import compare, run_model, sequence

    actions = sequence("step20")
    measured = robosuite_runner.run(actions)
    fitted = compare(measured, run_model(actions))["pos_rms_m"]
    nominal = compare(measured, run_model(actions, OscGains.nominal()))["pos_rms_m"]
    print(f"\n[step20] fitted {fitted * 1e3:.1f} mm RMS, nominal kp 150 / kd 24.5: {nominal * 1e3:.1f} mm")
    assert fitted < nominal
