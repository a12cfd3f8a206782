"""Camera + inference + franka on the real arm: ``ros2 launch d2ppo_bringup panda.launch.py policy:=<folder>
robot_ip:=<address>``. The inference node starts disabled (launch/panda.yaml); enable it with
``ros2 service call /policy/enable std_srvs/srv/SetBool "{data: true}"``.

The node graph is ``d2ppo_bringup.graph.panda_graph`` (also used by ``python -m d2ppo_bringup.run panda``).
"""

from d2ppo_bringup.graph import panda_graph
from d2ppo_bringup.launch_nodes import launch_nodes
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration

from launch import LaunchDescription

ARGUMENTS = {
    "policy": ("", "policy package folder"),
    "robot_ip": ("", "the arm's (or franky-sim's) address"),
    "namespace": ("", "ROS namespace for every node"),
    "use_sim_time": ("false", "true only when something publishes /clock"),
    "backend": ("torch", "torch | onnx"),
}


def _nodes(context):
    arg = lambda name: LaunchConfiguration(name).perform(context)  # noqa: E731
    graph = panda_graph(
        policy=arg("policy"),
        robot_ip=arg("robot_ip"),
        use_sim_time=arg("use_sim_time").lower() in ("true", "1"),
        backend=arg("backend"),
    )
    return launch_nodes(graph, arg("namespace"))


def generate_launch_description():
    return LaunchDescription(
        [DeclareLaunchArgument(n, default_value=d, description=h) for n, (d, h) in ARGUMENTS.items()]
        + [OpaqueFunction(function=_nodes)]
    )
