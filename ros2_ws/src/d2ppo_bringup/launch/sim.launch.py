"""robosuite sim + inference on sim time: ``ros2 launch d2ppo_bringup sim.launch.py policy:=<folder>``;
``realtime:=true latency_ms:=50`` runs the robot's graph with the arm swapped for the sim.

The node graph is ``d2ppo_bringup.graph.sim_graph`` (also used by ``python -m d2ppo_bringup.run sim``).
"""

from d2ppo_bringup.graph import sim_graph
from d2ppo_bringup.launch_nodes import launch_nodes
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration

from launch import LaunchDescription

ARGUMENTS = {
    "policy": ("", "policy package folder"),
    "namespace": ("", "ROS namespace for every node"),
    "use_sim_time": ("true", "inference on the sim's /clock"),
    "episodes": ("0", "episodes to run, then shut down (0 = until stopped)"),
    "seed": ("0", "sim and sampling seed"),
    "horizon": ("0", "control ticks per episode (0 = the task's evaluation horizon)"),
    "video": ("", "mp4 of the first episode's agentview camera"),
    "results": ("", "JSON summary of the episodes"),
    "replan": ("chunk", "chunk | tick"),
    "backend": ("auto", "auto (onnx when the package has policy.onnx) | torch | onnx"),
    "realtime": ("false", "true: physics on the wall clock, the inference node in its robot configuration"),
    "latency_ms": ("0", "realtime: camera delivery latency (ms)"),
    "jitter_ms": ("0", "realtime: +- uniform jitter on the camera latency (ms)"),
    "drop": ("0", "realtime: probability a camera frame is lost, [0, 1)"),
    "seam": ("", "replace | ensemble | inpaint (empty: the profiles' value)"),
    "robot_ip": ("", "unused by the sim (accepted so both launch files take the same arguments)"),
}


def _nodes(context):
    arg = lambda name: LaunchConfiguration(name).perform(context)  # noqa: E731
    graph = sim_graph(
        policy=arg("policy"),
        use_sim_time=arg("use_sim_time").lower() in ("true", "1"),
        episodes=int(arg("episodes")),
        seed=int(arg("seed")),
        horizon=int(arg("horizon")) or None,
        video_path=arg("video"),
        results_path=arg("results"),
        replan=arg("replan"),
        backend=arg("backend"),
        realtime=arg("realtime").lower() in ("true", "1"),
        camera_latency_ms=float(arg("latency_ms")),
        camera_jitter_ms=float(arg("jitter_ms")),
        camera_drop=float(arg("drop")),
        seam=arg("seam") or None,
    )
    return launch_nodes(graph, arg("namespace"))


def generate_launch_description():
    return LaunchDescription(
        [DeclareLaunchArgument(n, default_value=d, description=h) for n, (d, h) in ARGUMENTS.items()]
        + [OpaqueFunction(function=_nodes)]
    )
