"""The ros2 launch files build their nodes from the one graph declaration (needs launch_ros: a ROS 2
install or the project's Docker image; the pip environment has no launch_ros and skips this)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

LAUNCH = Path(__file__).resolve().parents[2] / "ros2_ws" / "src" / "d2ppo_bringup" / "launch"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name.replace(".", "_"), LAUNCH / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(("launch_file", "graph"), [("sim.launch.py", "sim"), ("panda.launch.py", "panda")])
def test_launch_file_starts_the_declared_graph(launch_file, graph):
    pytest.importorskip("launch_ros")
    from d2ppo_bringup.graph import panda_graph, sim_graph
    from launch.actions import DeclareLaunchArgument

    from launch import LaunchContext

    module = load(launch_file)
    description = module.generate_launch_description()
    context = LaunchContext()
    for action in description.entities:
        if isinstance(action, DeclareLaunchArgument):
            context.launch_configurations[action.name] = {"policy": "/p", "robot_ip": "127.0.0.1"}.get(
                action.name, action.default_value[0].text if action.default_value else ""
            )
    nodes = module._nodes(context)
    expected = sim_graph("/p") if graph == "sim" else panda_graph("/p", "127.0.0.1")
    assert [n.node_executable for n in nodes] == [s.executable for s in expected]
