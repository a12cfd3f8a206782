"""``graph.NodeSpec`` -> launch_ros ``Node`` actions, for the ``ros2 launch`` files.

Imported only by the launch files: launch_ros exists on a ROS 2 install, not in the pip environment.
"""

from __future__ import annotations

from collections.abc import Sequence

from d2ppo_bringup.graph import NodeSpec, param_files


def launch_nodes(graph: Sequence[NodeSpec], namespace: str = "") -> list:
    from launch.actions import Shutdown
    from launch_ros.actions import Node

    nodes = []
    for spec in graph:
        nodes.append(
            Node(
                package=spec.package,
                executable=spec.executable,
                name=spec.name,
                namespace=namespace.strip("/"),
                parameters=[*(str(f) for f in param_files(spec)), dict(spec.params)],
                remappings=list(spec.remaps),
                output="screen",
                # A required node ending (the sim after its episodes) ends the launch, as in the runner.
                on_exit=Shutdown(reason=f"{spec.name} exited") if spec.required else None,
            )
        )
    return nodes
