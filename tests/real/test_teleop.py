"""Teleoperation logic: deadman, gains, axis map, gripper toggle, stamps, input sources."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from d2ppo_teleop.mapping import (
    GRIPPER_CLOSED,
    GRIPPER_OPEN,
    TeleopInput,
    TeleopMapper,
    apply_deadzone,
    choose_stamp,
    parse_axis_map,
)
from d2ppo_teleop.sources import KeyboardSource, KeyMotion, ScriptedSource, TeleopDeviceError, make_source, parse_script


def _input(motion, last_active, toggles=0):
    return TeleopInput(np.array(motion, dtype=float), toggles, last_active)


def test_no_input_means_zero_motion_but_the_gripper_holds_its_state():
    m = TeleopMapper(gripper_closed=True)
    a = m.action(TeleopInput.idle(), now=10.0)
    np.testing.assert_array_equal(a, [0, 0, 0, 0, 0, 0, GRIPPER_CLOSED])
    assert m.deadman_active


def test_deadman_zeroes_motion_when_the_device_stops_reporting():
    m = TeleopMapper(pos_gain=0.5, deadzone=0.0, input_timeout=0.25)
    held = _input([1, 0, 0, 0, 0, 0], last_active=10.0)
    assert m.action(held, now=10.2)[0] == pytest.approx(0.5)
    assert not m.deadman_active
    assert m.action(held, now=10.3)[0] == 0.0  # same stale deflection, 0.3 s after its last event
    assert m.deadman_active


def test_gains_scale_translation_and_rotation_and_actions_stay_normalised():
    m = TeleopMapper(pos_gain=0.3, rot_gain=0.1, deadzone=0.0)
    a = m.action(_input([1, -1, 0.5, 1, 0, -0.5], 0.0), now=0.0)
    np.testing.assert_allclose(a[:6], [0.3, -0.3, 0.15, 0.1, 0.0, -0.05])
    big = TeleopMapper(pos_gain=5.0, deadzone=0.0).action(_input([1, 0, 0, 0, 0, 0], 0.0), 0.0)
    assert big[0] == 1.0
    nan = TeleopMapper().action(_input([np.nan, 0, 0, 0, 0, 0], 0.0), 0.0)
    np.testing.assert_array_equal(nan[:6], 0.0)


def test_deadzone_removes_rest_noise_and_is_continuous():
    out = apply_deadzone(np.array([0.03, -0.05, 0.525, -1.0]), 0.05)
    np.testing.assert_allclose(out, [0.0, 0.0, 0.5, -1.0])


def test_axis_map_permutes_and_flips_device_axes():
    m = TeleopMapper(pos_gain=1.0, rot_gain=1.0, deadzone=0.0, axis_map=[-2, 1, 3, -5, 4, 6])
    a = m.action(_input([0.1, 0.2, 0.3, 0.4, 0.5, 0.6], 0.0), 0.0)
    np.testing.assert_allclose(a[:6], [-0.2, 0.1, 0.3, -0.5, 0.4, 0.6])
    with pytest.raises(ValueError, match="signed permutation"):
        parse_axis_map([1, 1, 3, 4, 5, 6])


def test_each_toggle_press_flips_the_gripper():
    m = TeleopMapper()
    assert m.gripper == GRIPPER_OPEN
    assert m.action(_input([0] * 6, None, toggles=1), 0.0)[6] == GRIPPER_CLOSED
    assert m.action(_input([0] * 6, None, toggles=0), 0.0)[6] == GRIPPER_CLOSED
    assert m.action(_input([0] * 6, None, toggles=2), 0.0)[6] == GRIPPER_CLOSED  # two presses in one tick
    assert m.action(_input([0] * 6, None, toggles=1), 0.0)[6] == GRIPPER_OPEN


def test_chunk_stamps_follow_fresh_robot_state_and_always_increase():
    period = 0.05
    assert choose_stamp(100.0, 99.99, None, 0.5 * period) == 99.99  # fresh state stamp
    assert choose_stamp(100.05, 99.99, 99.99, 0.5 * period) == 100.05  # state not newer: now
    assert choose_stamp(100.0, 99.9, None, 0.5 * period) == 100.0  # state too old: now
    assert choose_stamp(100.0, None, None, 0.5 * period) == 100.0
    assert choose_stamp(100.0, None, 100.0, 0.5 * period) > 100.0  # clock did not advance


def test_scripted_source_replays_segments_then_goes_quiet():
    src = ScriptedSource(parse_script(json.dumps([
        {"duration": 0.5, "motion": [1, 0, 0, 0, 0, 0], "toggle_gripper": True},
        {"duration": 0.5},  # hands off
        {"duration": 0.5, "motion": [0, 0, -1, 0, 0, 0]},
    ])))
    first = src.read(10.0)
    assert first.motion[0] == 1 and first.toggles == 1 and first.last_active == 10.0
    assert src.read(10.2).toggles == 0  # the toggle fires once per segment
    assert src.read(10.7).last_active is None
    assert src.read(11.2).motion[2] == -1
    assert not src.finished(11.4) and src.finished(11.5)
    assert src.read(11.6).last_active is None
    m = TeleopMapper(deadzone=0.0)
    assert np.all(m.action(src.read(12.0), 12.0)[:6] == 0)


def test_script_can_be_yaml_or_a_file_and_errors_name_the_segment(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text("- {duration: 1.0, motion: [0, 1, 0, 0, 0, 0]}\n")
    assert parse_script(str(f))[0].motion == (0, 1, 0, 0, 0, 0)
    with pytest.raises(ValueError, match="segment 0: motion needs 6"):
        parse_script('[{"duration": 1, "motion": [1, 2]}]')
    with pytest.raises(ValueError, match="non-empty list"):
        parse_script("[]")
    with pytest.raises(ValueError, match="needs parameter 'script'"):
        make_source("scripted", "")


def test_key_press_holds_its_axis_briefly_and_stop_key_clears_all():
    keys = KeyMotion(hold_s=0.3)
    assert keys.feed("w ", 1.0) == 1
    inp = keys.input(1.1)
    assert inp.motion[0] == 1 and inp.last_active == 1.1
    keys.feed("d", 1.2)
    inp = keys.input(1.25)
    np.testing.assert_array_equal(inp.motion[:2], [1, -1])
    assert keys.input(1.45).motion[0] == 0  # w released 0.45 s ago
    keys.feed("q", 1.46)
    assert keys.input(1.47).last_active is None


def test_keyboard_without_a_terminal_says_how_to_run_it():
    with pytest.raises(TeleopDeviceError, match="not a TTY"):
        KeyboardSource(stream=io.StringIO())


def test_spacemouse_without_pyspacemouse_says_what_to_install():
    try:
        import pyspacemouse  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("pyspacemouse is installed here; the missing-package path cannot be exercised")
    with pytest.raises(TeleopDeviceError, match="pip install pyspacemouse"):
        make_source("spacemouse")
