"""SafetyEnvelope and SafetyLimits: every check can reject/clip, every outcome is counted."""

from pathlib import Path

import numpy as np
import pytest
from d2ppo_control.safety import COUNTER_NAMES, SafetyEnvelope, SafetyLimits

REPO_ROOT = Path(__file__).resolve().parents[2]
CENTRE = np.array([0.5, 0.0, 0.35])  # inside the default box
DT = 0.05


def envelope(**overrides) -> SafetyEnvelope:
    return SafetyEnvelope(SafetyLimits(**overrides))


def act(x=0.0, y=0.0, z=0.0, rx=0.0, ry=0.0, rz=0.0, g=-1.0) -> np.ndarray:
    return np.array([x, y, z, rx, ry, rz, g])


def test_small_action_is_accepted_unchanged_with_target():
    env = envelope()
    d = env.check(act(x=0.4, g=1.0), CENTRE, DT)
    assert d.status == "accepted" and d.reason == ""
    np.testing.assert_allclose(d.action, act(x=0.4, g=1.0))
    np.testing.assert_allclose(d.target_pos, CENTRE + [0.02, 0.0, 0.0])
    assert env.counters["accepted"] == 1


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_action_is_rejected_and_counted(bad):
    env = envelope()
    a = act()
    a[4] = bad
    d = env.check(a, CENTRE, DT)
    assert d.status == "rejected" and d.action is None and d.reason == "rejected_non_finite"
    assert env.counters["rejected_non_finite"] == 1
    assert env.counters["accepted"] == 0


def test_wrong_shape_is_rejected():
    env = envelope()
    assert env.check(np.zeros(6), CENTRE, DT).reason == "rejected_bad_shape"
    assert env.counters["rejected_bad_shape"] == 1


def test_component_outside_unit_range_is_rejected():
    env = envelope()
    d = env.check(act(x=3.0), CENTRE, DT)
    assert d.status == "rejected" and d.reason == "rejected_out_of_range"
    assert env.counters["rejected_out_of_range"] == 1


def test_target_outside_workspace_is_rejected_by_default():
    env = envelope()
    at_edge = np.array([0.5, 0.0, 0.025])  # 5 mm above z_min=0.02
    d = env.check(act(z=-0.4), at_edge, DT)  # 2 cm down -> below the floor of the box
    assert d.status == "rejected" and d.reason == "rejected_workspace"
    assert env.counters["rejected_workspace"] == 1
    # moving back into the box from there is fine
    assert env.check(act(z=0.4), at_edge, DT).ok


def test_workspace_clip_mode_clips_target_onto_box():
    env = envelope(workspace_mode="clip")
    at_edge = np.array([0.5, 0.0, 0.025])
    d = env.check(act(x=0.2, z=-0.4), at_edge, DT)
    assert d.status == "clipped" and "clipped_workspace" in d.reason
    np.testing.assert_allclose(d.target_pos, [0.51, 0.0, 0.02])
    np.testing.assert_allclose(d.action[:3] * 0.05, [0.01, 0.0, -0.005])


def test_workspace_clip_mode_never_jumps_into_the_box_from_far_outside():
    env = envelope(workspace_mode="clip")
    far_below = np.array([0.5, 0.0, -0.3])
    d = env.check(act(z=0.2), far_below, DT)
    assert d.status == "rejected" and d.reason == "rejected_workspace"


def test_oversize_translation_is_clipped_to_the_step_limit_keeping_direction():
    env = envelope(max_translation_per_step=0.02, max_velocity=10.0)
    d = env.check(act(x=1.0, y=1.0, z=1.0), CENTRE, DT)
    assert d.status == "clipped" and d.reason == "clipped_translation"
    step = d.target_pos - CENTRE
    assert np.linalg.norm(step) == pytest.approx(0.02)
    np.testing.assert_allclose(step / np.linalg.norm(step), np.ones(3) / np.sqrt(3))
    assert env.counters["clipped_translation"] == 1


def test_step_faster_than_max_velocity_is_clipped():
    env = envelope(max_velocity=0.2, max_translation_per_step=0.05)
    d = env.check(act(y=1.0), CENTRE, DT)  # 0.05 m in 0.05 s = 1 m/s
    assert d.reason == "clipped_velocity"
    assert np.linalg.norm(d.target_pos - CENTRE) == pytest.approx(0.2 * DT)


def test_step_exactly_at_the_limit_is_not_clipped():
    env = envelope(max_velocity=0.5, max_translation_per_step=0.03)
    d = env.check(act(x=0.5), CENTRE, DT)  # 0.025 m in 0.05 s = 0.5 m/s exactly
    assert d.status == "accepted"


def test_oversize_rotation_is_clipped():
    env = envelope(max_rotation_per_step=0.1, max_angular_velocity=100.0)
    d = env.check(act(rx=1.0, rz=1.0), CENTRE, DT)
    assert d.reason == "clipped_rotation"
    assert np.linalg.norm(d.action[3:6] * 0.5) == pytest.approx(0.1)


def test_counters_start_complete_and_count_every_outcome():
    env = envelope()
    assert set(env.counters) == set(COUNTER_NAMES) and not any(env.counters.values())
    env.check(act(), CENTRE, DT)
    env.check(act(x=np.nan), CENTRE, DT)
    env.check(act(x=np.nan), CENTRE, DT)
    assert env.counters["accepted"] == 1 and env.counters["rejected_non_finite"] == 2


def test_limits_load_from_the_shipped_ros_parameter_file():
    limits = SafetyLimits.from_yaml(REPO_ROOT / "launch" / "safety.yaml")
    assert limits == SafetyLimits()  # the file documents the defaults; the two must not drift


def test_unknown_safety_parameter_is_an_error(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text("safety:\n  max_velocty: 1.0\n")
    with pytest.raises(ValueError, match="max_velocty"):
        SafetyLimits.from_yaml(p)


@pytest.mark.parametrize(
    "bad",
    [
        {"workspace_min": (1, 0, 0), "workspace_max": (0, 1, 1)},
        {"max_velocity": 0.0},
        {"max_translation_per_step": float("nan")},
        {"workspace_mode": "ignore"},
        {"max_reflex_retries": -1},
        {"max_angular_velocity": 0.0},
        {"max_tool_tilt": 0.0},
        {"tool_axis_nominal": (0.0, 0.0, 0.0)},
        {"finger_half_span": -0.01},
    ],
)
def test_invalid_limits_are_refused(bad):
    with pytest.raises(ValueError):
        SafetyLimits(**bad)


#: Gripper pointing straight down (franky-sim's start orientation: 180 degrees about x), xyzw.
DOWN = np.array([1.0, 0.0, 0.0, 0.0])


def tilted(angle: float) -> np.ndarray:
    """DOWN tilted by ``angle`` rad about the base x axis."""
    from d2ppo_control.osc import axis_angle_to_quat, quat_multiply

    return quat_multiply(axis_angle_to_quat([angle, 0.0, 0.0]), DOWN)


def test_fast_rotation_is_clipped_to_the_angular_speed_limit():
    env = envelope(max_angular_velocity=1.0)  # 0.05 rad per 0.05 s step
    d = env.check(act(rz=0.5), CENTRE, DT, DOWN)  # 0.25 rad asked
    assert "clipped_angular_velocity" in d.reason
    assert np.linalg.norm(d.action[3:6] * 0.5) == pytest.approx(0.05)
    assert env.counters["clipped_angular_velocity"] == 1


def test_rotation_out_of_the_orientation_cone_is_dropped_and_translation_kept():
    env = envelope(max_angular_velocity=100.0, max_rotation_per_step=1.0, max_tool_tilt=0.785)
    start = tilted(0.7)  # 40 degrees, inside the 45-degree cone
    d = env.check(act(x=0.2, rx=0.4), CENTRE, DT, start)  # +0.2 rad would reach 52 degrees
    assert d.status == "clipped" and "clipped_orientation" in d.reason
    np.testing.assert_allclose(d.action[3:6], 0.0)
    assert d.action[0] == pytest.approx(0.2)
    np.testing.assert_allclose(d.target_quat, start / np.linalg.norm(start), atol=1e-12)
    assert env.tool_tilt(d.target_quat) == pytest.approx(0.7)
    # a rotation back towards the cone is allowed, also from outside it
    d = env.check(act(rx=-0.2), CENTRE, DT, tilted(1.0))
    assert d.status == "accepted" and env.tool_tilt(d.target_quat) == pytest.approx(0.9)
    # yaw about the tool axis never changes the tilt
    assert env.check(act(rz=1.0), CENTRE, DT, DOWN).status == "accepted"


def test_box_applies_to_the_fingertips():
    env = envelope(workspace_min=(0.25, -0.35, 0.02), workspace_max=(0.75, 0.35, 0.70), finger_half_span=0.04)
    near_side = np.array([0.5, 0.32, 0.35])  # TCP 3 cm inside the y wall
    # fingers along base y (DOWN: tool y axis = -base y): a fingertip would be 1 cm outside
    assert env.check(act(), near_side, DT, DOWN).reason == "rejected_workspace"
    # yawed 90 degrees the fingers lie along x and the same TCP position is fine
    from d2ppo_control.osc import axis_angle_to_quat, quat_multiply

    yawed = quat_multiply(axis_angle_to_quat([0.0, 0.0, np.pi / 2]), DOWN)
    assert env.check(act(), near_side, DT, yawed).status == "accepted"
    # without an orientation only the TCP is checked (callers that do not know it)
    assert env.check(act(), near_side, DT).status == "accepted"
