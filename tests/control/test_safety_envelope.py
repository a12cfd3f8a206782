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
    env = envelope(max_rotation_per_step=0.1)
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
    ],
)
def test_invalid_limits_are_refused(bad):
    with pytest.raises(ValueError):
        SafetyLimits(**bad)
