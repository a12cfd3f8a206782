"""Camera + inference + franka on the real arm: ``ros2 launch d2ppo_bringup panda.launch.py policy:=<folder>
robot_ip:=<address>``. The inference node starts disabled (launch/panda.yaml); enable it with
``ros2 service call /policy/enable std_srvs/srv/SetBool "{data: true}"``.

The node graph is ``d2ppo_bringup.graph.panda_graph`` (also used by ``python -m d2ppo_bringup.run panda``).
Each node runs in the SROS2 enclave named like the node (``/camera``, ``/inference``, ``/franka``; with a
namespace ``/<ns>/<name>``), the names the runner and docs/bringup.md ("SROS2") use; without
ROS_SECURITY_ENABLE=true the enclave is ignored. The DDS domain and discovery range come from
launch/dds.env through the environment (docker/compose.yaml, docker/robot_entrypoint.sh).
"""

from d2ppo_bringup.graph import panda_graph
from d2ppo_bringup.launch_nodes import launch_nodes
from d2ppo_bringup.node_processes import enclave_name
from launch.actions import DeclareLaunchArgument, GroupAction, OpaqueFunction, SetEnvironmentVariable
from launch.substitutions import LaunchConfiguration

from launch import LaunchDescription

ARGUMENTS = {
    "policy": ("", "policy package folder"),
    "robot_ip": ("", "the arm's (or franky-sim's) address"),
    "namespace": ("", "ROS namespace for every node"),
    "use_sim_time": ("false", "true only when something publishes /clock"),
    "backend": ("torch", "torch | onnx"),
}


def _graph(context):
    arg = lambda name: LaunchConfiguration(name).perform(context)  # noqa: E731
    graph = panda_graph(
        policy=arg("policy"),
        robot_ip=arg("robot_ip"),
        use_sim_time=arg("use_sim_time").lower() in ("true", "1"),
        backend=arg("backend"),
    )
    return graph, arg("namespace")


def _nodes(context):
    graph, namespace = _graph(context)
    return launch_nodes(graph, namespace)


def _nodes_in_enclaves(context):
    """Each node in a scoped group that sets its enclave (a user's ROS_SECURITY_ENCLAVE_OVERRIDE wins)."""
    graph, namespace = _graph(context)
    nodes = launch_nodes(graph, namespace)
    if context.environment.get("ROS_SECURITY_ENCLAVE_OVERRIDE"):
        return nodes
    return [
        GroupAction([SetEnvironmentVariable("ROS_SECURITY_ENCLAVE_OVERRIDE", enclave_name(spec, namespace)), node])
        for spec, node in zip(graph, nodes)
    ]


def generate_launch_description():
    return LaunchDescription(
        [DeclareLaunchArgument(n, default_value=d, description=h) for n, (d, h) in ARGUMENTS.items()]
        + [OpaqueFunction(function=_nodes_in_enclaves)]
    )
