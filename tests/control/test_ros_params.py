"""d2ppo_control.ros_params without ROS: which overrides are unknown, where they came from, the message."""

from __future__ import annotations

from pathlib import Path

import pytest
from d2ppo_control.ros_params import (
    OverrideSource,
    UnknownParameterError,
    file_parameters,
    node_key_matches,
    override_sources,
    refuse_undeclared_parameters,
    ros_param_arguments,
    unknown_names,
    unknown_parameters_message,
)

REPO = Path(__file__).resolve().parents[2]
SAFETY_NAMES = ["safety.workspace_min", "safety.workspace_max", "safety.max_velocity"]


class FakeNode:
    """What the helper reads of an rclpy Node: declared parameters, overrides, full name."""

    def __init__(self, fqn: str, declared, overrides):
        self._fqn = fqn
        self._parameters = dict.fromkeys(declared)
        self._parameter_overrides = dict.fromkeys(overrides)

    def get_fully_qualified_name(self) -> str:
        return self._fqn


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("node_key", "fqn", "applies"),
    [
        ("/**", "/franka_node", True),
        ("/**", "/robot1/franka", True),
        ("/**/franka", "/franka", True),
        ("/**/franka", "/a/b/franka", True),
        ("/**/franka", "/franka_node", False),
        ("/**/sim", "/inference", False),
        ("/franka", "/franka", True),
        ("franka", "/franka", True),
        ("/franka", "/ns/franka", False),
        ("/*/franka", "/ns/franka", True),
        ("/*/franka", "/franka", False),
        ("/ns/franka", "/ns/franka", True),
    ],
)
def test_node_keys_apply_as_rcl_applies_them(node_key, fqn, applies):
    assert node_key_matches(node_key, fqn) is applies


def test_params_files_and_assignments_come_from_every_ros_args_section():
    argv = [
        "franka_node", "--flag", "--params-file", "not_ros.yaml",
        "--ros-args", "-r", "__node:=franka", "--params-file", "a.yaml", "-p", "x:=1", "--",
        "app-arg", "--ros-args", "--param", "y.z:=[1]", "--params-file", "b.yaml",
    ]  # fmt: skip
    assert ros_param_arguments(argv) == (["a.yaml", "b.yaml"], ["x:=1", "y.z:=[1]"])


def test_file_parameters_are_flattened_per_node_key(tmp_path):
    f = write(
        tmp_path / "p.yaml",
        "/**:\n  ros__parameters:\n    safety:\n      workspace_mn: [0, 0, 0]\n    robot_ip: x\n"
        "ns:\n  sim:\n    ros__parameters:\n      horizon: 3\n",
    )
    assert file_parameters(f) == {"/**": {"safety.workspace_mn", "robot_ip"}, "/ns/sim": {"horizon"}}
    assert file_parameters(tmp_path / "missing.yaml") == {}


def test_unknown_names_skip_declared_and_ros_own_parameters():
    overrides = ["use_sim_time", "qos_overrides./x.publisher.depth", "start_type_description_service",
                 "safety.workspace_min", "safety.workspace_mn", "zzz"]  # fmt: skip
    assert unknown_names(overrides, SAFETY_NAMES) == ["safety.workspace_mn", "zzz"]


def test_sources_name_only_files_and_node_keys_that_reach_the_node(tmp_path):
    shared = write(tmp_path / "shared.yaml", "/**/sim:\n  ros__parameters:\n    horizn: 1\n")
    mine = write(tmp_path / "mine.yaml", "/**/franka:\n  ros__parameters:\n    horizn: 2\n")
    argv = ["x", "--ros-args", "--params-file", str(shared), "--params-file", str(mine), "-p", "horizn:=3"]
    assert override_sources("horizn", "/franka", argv) == [
        OverrideSource(str(mine), "/**/franka"),
        OverrideSource("", ""),
    ]


def test_message_names_the_key_the_suggestion_and_the_file(tmp_path):
    bad = write(tmp_path / "bad.yaml", "/**:\n  ros__parameters:\n    safety:\n      workspace_mn: [0.1, 0.2, 0.3]\n")
    argv = ["franka_node", "--ros-args", "--params-file", str(bad)]
    message = unknown_parameters_message("/franka_node", ["safety.workspace_mn"], SAFETY_NAMES, argv)
    assert "\n" not in message
    assert "'safety.workspace_mn'" in message
    assert "did you mean 'safety.workspace_min'?" in message
    assert f"in {bad} (under /**)" in message


def test_message_says_how_to_aim_a_foreign_key_of_a_shared_file_at_one_node(tmp_path):
    shared = write(tmp_path / "shared.yaml", "/**:\n  ros__parameters:\n    realtime: false\n")
    argv = ["camera", "--ros-args", "--params-file", str(shared)]
    message = unknown_parameters_message("/camera", ["realtime"], ["fps", "serials"], argv)
    assert "'realtime' (no similar parameter)" in message
    assert "keys for one node go under /**/camera" in message


def test_message_lists_every_unknown_key_and_command_line_ones():
    argv = ["n", "--ros-args", "-p", "qwertyuiop:=1", "-p", "safety.max_velocty:=1.0"]
    message = unknown_parameters_message("/n", ["qwertyuiop", "safety.max_velocty"], SAFETY_NAMES, argv)
    assert "'qwertyuiop' (no similar parameter) on the command line (-p)" in message
    assert "'safety.max_velocty' (did you mean 'safety.max_velocity'?) on the command line (-p)" in message
    assert message.startswith("unknown parameters for node /n:")


def test_refuse_raises_a_value_error_only_for_undeclared_overrides(tmp_path):
    bad = write(tmp_path / "bad.yaml", "/**:\n  ros__parameters:\n    safety:\n      workspace_mn: [0.1, 0.2, 0.3]\n")
    argv = ["franka_node", "--ros-args", "--params-file", str(bad)]
    clean = FakeNode("/franka_node", [*SAFETY_NAMES, "use_sim_time"], ["safety.workspace_min", "use_sim_time"])
    refuse_undeclared_parameters(clean, argv)
    with pytest.raises(UnknownParameterError, match=r"safety\.workspace_mn.*safety\.workspace_min.*bad\.yaml"):
        refuse_undeclared_parameters(FakeNode("/franka_node", SAFETY_NAMES, ["safety.workspace_mn"]), argv)
    assert issubclass(UnknownParameterError, ValueError)  # the nodes' main() report ValueErrors and exit 2
