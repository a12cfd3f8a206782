"""A parameter file with an unknown or misspelt key stops every node at start, naming the key, the closest
known name and the file; the shipped parameter files of each graph start every node cleanly.

Each node runs as its real console script with the parameter files its graph gives it (d2ppo_bringup.graph,
or the documented command line for nodes outside the graphs). A misspelt key must stop it before it
connects to the arm, loads a policy, builds the sim or opens a device: its "started" log line never comes.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from d2ppo_bringup.graph import NodeSpec, launch_dir, panda_graph, sim_graph

pytestmark = [pytest.mark.ros, pytest.mark.timeout(180)]

ROBOT_IP = "127.0.83.1"  # nobody listens there: the franka node keeps retrying the connection
NO_POLICY = "/no/such/policy"  # the misspelt-key runs must stop before anything looks at it
EXIT_TIMEOUT = 20.0  # s; measured 0.4-0.7 s per node here


def _node(graph: list[NodeSpec], name: str) -> NodeSpec:
    return next(s for s in graph if s.name == name)


def franka(policy: str, tmp_path: Path) -> NodeSpec:
    spec = _node(panda_graph(policy, ROBOT_IP), "franka")
    return dataclasses.replace(spec, params={**spec.params, "realtime": False})  # no PREEMPT_RT kernel here


def teleop(policy: str, tmp_path: Path) -> NodeSpec:
    """As docs/bringup.md and docker/compose.yaml start it: launch/teleop.yaml, here with a scripted source."""
    script = json.dumps([{"duration": 600.0}])
    return NodeSpec("d2ppo_teleop", "teleop_node", "d2ppo_teleop.teleop_node", "teleop",
                    param_files=("teleop.yaml",), params={"source": "scripted", "script": script})  # fmt: skip


def recorder(policy: str, tmp_path: Path) -> NodeSpec:
    """As docs/bringup.md and docker/compose.yaml start it: launch/recorder.yaml."""
    return NodeSpec("d2ppo_recorder", "recorder_node", "d2ppo_recorder.recorder_node", "recorder",
                    param_files=("recorder.yaml",), params={"output": str(tmp_path / "demos.hdf5")})  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Case:
    spec: Callable[[str, Path], NodeSpec]  # (policy, scratch dir) -> the node as its graph starts it
    misspelt: str  # parameter-file text with one misspelt key
    key: str
    suggestion: str
    started: str  # a log line the node prints only after its parameter check (and after connecting/loading)


CASES = {
    "franka": Case(
        franka,
        "/**:\n  ros__parameters:\n    safety:\n      workspace_mn: [0.3, -0.2, 0.1]\n",
        "safety.workspace_mn",
        "safety.workspace_min",
        "franka node: robot",
    ),
    "sim": Case(
        lambda policy, tmp: _node(sim_graph(policy), "sim"),
        "/**/sim:\n  ros__parameters:\n    startup_timout: 10.0\n",
        "startup_timout",
        "startup_timeout",
        "building Lift",
    ),
    "inference_sim": Case(
        lambda policy, tmp: _node(sim_graph(policy), "inference"),
        "/**/inference:\n  ros__parameters:\n    max_obs_ag: 0.3\n",
        "max_obs_ag",
        "max_obs_age",
        "replan=",
    ),
    "inference_panda": Case(
        lambda policy, tmp: _node(panda_graph(policy, ROBOT_IP), "inference"),
        "/**/inference:\n  ros__parameters:\n    trigerr: timer\n",
        "trigerr",
        "trigger",
        "replan=",
    ),
    "camera": Case(
        lambda policy, tmp: _node(panda_graph(policy, ROBOT_IP), "camera"),
        "/**/camera:\n  ros__parameters:\n    frame_timout: 3.0\n",
        "frame_timout",
        "frame_timeout",
        "realsense: agentview <- RealSense",
    ),
    "teleop": Case(
        teleop,
        "/**/teleop:\n  ros__parameters:\n    pos_gian: 0.2\n",
        "pos_gian",
        "pos_gain",
        "-> policy/action_chunk at 20 Hz",
    ),
    "recorder": Case(
        recorder,
        "/**/recorder:\n  ros__parameters:\n    min_step: 5\n",
        "min_step",
        "min_steps",
        "recording RealPandaLift into",
    ),
}


def command(spec: NodeSpec, tmp_path: Path, *extra_files: Path) -> list[str]:
    from d2ppo_bringup.node_processes import node_command

    argv = node_command(spec, tmp_path)
    for f in extra_files:
        argv += ["--params-file", str(f)]  # still inside node_command's --ros-args section
    return argv


def wait_exit(proc, timeout: float) -> int | None:
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    return proc.poll()


@pytest.mark.parametrize("case", sorted(CASES))
def test_misspelt_key_stops_the_node_naming_key_suggestion_and_file(case, start_node, tmp_path):
    c = CASES[case]
    spec = c.spec(NO_POLICY, tmp_path)
    bad = tmp_path / f"{spec.name}_typo.yaml"
    bad.write_text(c.misspelt)
    start = time.monotonic()
    proc = start_node(command(spec, tmp_path, bad), name=spec.name)
    rc = wait_exit(proc, EXIT_TIMEOUT)
    elapsed = time.monotonic() - start
    proc.wait_for_line(lambda line: False, 0.5)  # let the reader drain the last lines
    output = "\n".join(proc.lines)
    assert rc is not None, f"{spec.name} still running {EXIT_TIMEOUT:g} s after start with {bad}:\n{output}"
    assert rc != 0, output
    line = next((x for x in proc.lines if f"'{c.key}'" in x), "")
    assert f"did you mean '{c.suggestion}'?" in line and str(bad) in line, output
    assert "unknown parameter" in line, output
    assert c.started not in output, f"{spec.name} got past its parameter check ({elapsed:.1f} s):\n{output}"
    assert "Traceback" not in output, output


def started_cleanly(proc, started: str, timeout: float) -> None:
    ok = proc.wait_for_line(lambda line: started in line, timeout)
    output = "\n".join(proc.lines)
    assert ok, f"no {started!r} within {timeout:g} s (exit {proc.poll()}):\n{output}"
    assert "unknown parameter" not in output, output
    assert proc.poll() is None, output


@pytest.mark.parametrize("case", ["franka", "sim", "camera", "teleop", "recorder"])
def test_shipped_parameter_files_start_the_node(case, start_node, tmp_path):
    """The node gets past its parameter check with its graph's files alone (then it is stopped)."""
    c = CASES[case]
    spec = c.spec("", tmp_path)  # sim: no policy -> the default task (Lift), no torch
    proc = start_node(command(spec, tmp_path), name=spec.name)
    started_cleanly(proc, c.started, 120.0 if case == "sim" else 60.0)


@pytest.mark.parametrize("case", ["inference_sim", "inference_panda"])
def test_shipped_parameter_files_start_the_inference_node(case, start_node, tmp_path, tiny_policy):
    c = CASES[case]
    spec = c.spec(str(tiny_policy), tmp_path)
    proc = start_node(command(spec, tmp_path), name=spec.name)
    started_cleanly(proc, c.started, 120.0)


def test_documented_franka_command_line_starts_and_refuses_a_typo(start_node, tmp_path):
    """``franka_node --ros-args --params-file launch/franka.yaml --params-file launch/safety.yaml`` (node
    name ``franka_node``, as in the files' headers, docs/bringup.md and docker/compose.yaml)."""
    from d2ppo_bringup.node_processes import node_command

    exe = node_command(CASES["franka"].spec("", tmp_path), tmp_path)[0]
    files = ["--params-file", str(launch_dir() / "franka.yaml"), "--params-file", str(launch_dir() / "safety.yaml")]
    argv = [exe, "--ros-args", *files, "-p", f"robot_ip:={ROBOT_IP}", "-p", "realtime:=false"]
    bad = tmp_path / "typo.yaml"
    bad.write_text(CASES["franka"].misspelt)

    refused = start_node([*argv, "--params-file", str(bad)], name="franka_typo")
    assert wait_exit(refused, EXIT_TIMEOUT) not in (None, 0), "\n".join(refused.lines)
    refused.wait_for_line(lambda line: False, 0.5)
    assert any("/franka_node: 'safety.workspace_mn'" in x and str(bad) in x for x in refused.lines), refused.lines

    started_cleanly(start_node(argv, name="franka_node"), CASES["franka"].started, 60.0)


def test_helper_applies_node_keys_as_rclpy_does(ros_env, tmp_path):
    """The file lookup that names the file agrees with rclpy on which node keys reach which node."""
    import rclpy
    from d2ppo_control.ros_params import file_parameters, node_key_matches
    from rclpy.node import Node
    from rclpy.signals import SignalHandlerOptions

    f = tmp_path / "keys.yaml"
    keys = ["/**", "/**/franka", "franka", "/franka", "/*/franka", "/ns/franka", "/**/sim", "/ns/sim"]
    f.write_text(json.dumps({k: {"ros__parameters": {f"p{i}": i}} for i, k in enumerate(keys)}))
    context = rclpy.Context()
    rclpy.init(args=["x", "--ros-args", "--params-file", str(f)], context=context,
               domain_id=int(ros_env["ROS_DOMAIN_ID"]), signal_handler_options=SignalHandlerOptions.NO)  # fmt: skip
    try:
        for name, namespace in [("franka", ""), ("franka", "/ns"), ("franka", "/a/b"), ("sim", "/ns"), ("x", "")]:
            node = Node(name, namespace=namespace, context=context)
            fqn = node.get_fully_qualified_name()
            expected = {p for k, names in file_parameters(f).items() if node_key_matches(k, fqn) for p in names}
            assert set(node._parameter_overrides) == expected, fqn
            node.destroy_node()
    finally:
        rclpy.shutdown(context=context)
