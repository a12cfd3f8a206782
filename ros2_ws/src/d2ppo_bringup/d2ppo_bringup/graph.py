"""THE declaration of the node graphs. ``launch/*.launch.py`` (ros2 launch) and ``d2ppo_bringup.run``
(plain pip environments and CI, where launch_ros is missing) both build their processes from here,
so the two ways of starting the stack cannot drift apart.

Parameter files come from the repository's top-level ``launch/`` folder (the deployment profiles a
user edits); later files override earlier ones, and inline parameters override all files.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

GRAPHS = ("sim", "panda")


@dataclass(frozen=True)
class NodeSpec:
    """One node of a graph.

    Attributes:
        package: ROS package (``ros2 run <package> <executable>``).
        executable: console script the package installs.
        module: ``python -m`` entry point, for environments without the console script.
        name: node name (also the log prefix of the runner).
        param_files: file names in the launch folder, applied in order.
        params: inline parameters (override the files).
        remaps: (from, to) topic/service remappings.
        required: the graph ends when this node exits (the sim node after its episodes).
    """

    package: str
    executable: str
    module: str
    name: str
    param_files: tuple[str, ...] = ()
    params: dict[str, Any] = field(default_factory=dict)
    remaps: tuple[tuple[str, str], ...] = ()
    required: bool = False


def launch_dir() -> Path:
    """The folder with the parameter files (sim.yaml, panda.yaml, inference.yaml, safety.yaml, ...).

    ``D2PPO_LAUNCH_DIR`` wins; then the repository this package sits in (editable pip install,
    ``colcon build --symlink-install``); then the package's installed share folder.
    """
    env = os.environ.get("D2PPO_LAUNCH_DIR")
    if env:
        return Path(env)
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "launch" / "inference.yaml").is_file() and (parent / "ros2_ws").is_dir():
            return parent / "launch"
    try:
        from ament_index_python.packages import get_package_share_directory

        return Path(get_package_share_directory("d2ppo_bringup")) / "config"
    except Exception as e:  # PackageNotFoundError, or ament_index missing
        raise FileNotFoundError(
            "cannot find the parameter files: set D2PPO_LAUNCH_DIR to the repository's launch/ folder"
        ) from e


def _inference(policy: str, use_sim_time: bool, profile: str, extra: dict[str, Any]) -> NodeSpec:
    return NodeSpec(
        package="d2ppo_inference",
        executable="inference_node",
        module="d2ppo_inference.inference_node",
        name="inference",
        param_files=("inference.yaml", profile),
        params={"policy": policy, "use_sim_time": use_sim_time, **extra},
    )


def _policy_cameras(policy: str) -> list[str]:
    """The camera names a policy package's card lists (empty for a low-dim policy)."""
    card = Path(policy) / "policy.json"
    try:
        return list(json.loads(card.read_text())["obs"]["camera_names"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{card}: cannot read the policy's camera names ({e})") from e


def sim_graph(
    policy: str,
    use_sim_time: bool = True,
    episodes: int = 0,
    seed: int = 0,
    horizon: int | None = None,
    video_path: str = "",
    results_path: str = "",
    replan: str = "chunk",
    backend: str = "auto",
    realtime: bool = False,
    camera_latency_ms: float = 0.0,
    camera_jitter_ms: float = 0.0,
    camera_drop: float = 0.0,
    seam: str | None = None,
    lead: int | None = None,
) -> list[NodeSpec]:
    """robosuite sim node + inference node, lock-stepped on the sim's /clock; or, with ``realtime``, the sim
    stepping on the wall clock with camera faults injected and the inference node in its robot configuration
    (panda.yaml: frame trigger, pipelined) — the robot's graph with the arm swapped.

    ``seam`` / ``lead`` override the profiles' values (both nodes get the same seam)."""
    if realtime:
        from d2ppo_sim.realtime import CameraFaults

        CameraFaults(camera_latency_ms, camera_jitter_ms, camera_drop)  # bad values: an error before any start
        cameras = _policy_cameras(policy)
        if not cameras and (camera_latency_ms or camera_jitter_ms or camera_drop):
            raise ValueError(
                f"camera latency/jitter/drop need a policy that uses cameras; {policy} uses none (it reads no frames)"
            )
    sim_params: dict[str, Any] = {
        "policy": policy,
        "episodes": episodes,
        "seed": seed,
        "replan": replan,
        "video_path": video_path,
        "results_path": results_path,
        # The sim is the clock: it stamps with its own time and must not wait for a /clock.
        "use_sim_time": False,
    }
    if horizon is not None:
        sim_params["horizon"] = horizon
    if realtime:
        sim_params.update(
            realtime=True,
            camera_latency_ms=float(camera_latency_ms),
            camera_jitter_ms=float(camera_jitter_ms),
            camera_drop=float(camera_drop),
        )
        # the robot's inference configuration (panda.yaml), on the wall clock; the sim profile auto-enables
        inference_params: dict[str, Any] = {"backend": backend, "use_sim_time": False, "start_enabled": True}
        if not cameras:
            inference_params["trigger"] = "timer"  # no frames to trigger on: tick at the control rate
        profile = "panda.yaml"
    else:
        inference_params = {
            "backend": backend,
            "replan": replan,
            # One tick per observation set the sim publishes (all stamped t): no race with /clock.
            "trigger": "observation",
            # The sim's images must not be dropped; a dropped set costs a republish period.
            "image_reliability": "reliable",
            "seed": seed,
        }
        profile = "sim.yaml"
    if seam is not None:
        sim_params["seam"] = inference_params["seam"] = seam
    if lead is not None:
        inference_params["lead"] = int(lead)
    return [
        NodeSpec(
            package="d2ppo_sim",
            executable="sim_node",
            module="d2ppo_sim.sim_node",
            name="sim",
            param_files=("safety.yaml", "sim.yaml"),
            params=sim_params,
            required=episodes > 0,
        ),
        _inference(policy, use_sim_time and not realtime, profile, inference_params),
    ]


def panda_graph(policy: str, robot_ip: str, use_sim_time: bool = False, backend: str = "auto") -> list[NodeSpec]:
    """Camera node + inference node + franka node for the real arm (or franky-sim at robot_ip)."""
    return [
        NodeSpec(
            package="d2ppo_camera",
            executable="camera_node",
            module="d2ppo_camera.camera_node",
            name="camera",
            # cameras.yaml maps RealSense serials to the policy's camera names.
            param_files=("cameras.yaml", "panda.yaml"),
            params={"use_sim_time": use_sim_time},
        ),
        _inference(policy, use_sim_time, "panda.yaml", {"backend": backend}),
        NodeSpec(
            package="d2ppo_franka",
            executable="franka_node",
            module="d2ppo_franka.franka_node",
            name="franka",
            param_files=("franka.yaml", "safety.yaml", "panda.yaml"),
            params={"robot_ip": robot_ip, "use_sim_time": use_sim_time},
            required=True,
        ),
    ]


def param_files(spec: NodeSpec, directory: Path | None = None) -> list[Path]:
    """The spec's parameter files that exist, in order (a profile may leave one out)."""
    directory = directory or launch_dir()
    return [directory / f for f in spec.param_files if (directory / f).is_file()]


def node_fqn(spec: NodeSpec, namespace: str = "") -> str:
    """Fully qualified node name, e.g. ``/robot1/inference``."""
    ns = namespace.strip("/")
    return f"/{ns}/{spec.name}" if ns else f"/{spec.name}"


def inline_params_yaml(spec: NodeSpec, namespace: str = "") -> str:
    """The spec's inline parameters as a ROS parameter file keyed by the node's full name.

    Not ``-p name:=value``: rcl ranks parameter-file entries by the order their node keys first
    appear, and ``-p`` lands under ``/**``, which safety.yaml already opened, so a ``/**/sim``
    entry in sim.yaml would silently beat ``-p horizon:=20``. A file keyed by the full node name,
    passed last, always wins (launch_ros writes dict parameters the same way). JSON is YAML.
    """
    return json.dumps({node_fqn(spec, namespace): {"ros__parameters": dict(spec.params)}}, indent=1)


def ros_arguments(
    spec: NodeSpec, namespace: str = "", directory: Path | None = None, inline_params_file: Path | None = None
) -> list[str]:
    """``--ros-args`` for one node: name, namespace, parameter files, then the inline parameters.

    ``inline_params_file``: where to write the inline parameters (see ``inline_params_yaml``);
    without it they are passed as ``-p`` (fine when no file sets the same names).
    """
    args = ["--ros-args", "-r", f"__node:={spec.name}"]
    if namespace:
        args += ["-r", f"__ns:=/{namespace.strip('/')}"]
    for f in param_files(spec, directory):
        args += ["--params-file", str(f)]
    if spec.params and inline_params_file is not None:
        Path(inline_params_file).write_text(inline_params_yaml(spec, namespace))
        args += ["--params-file", str(inline_params_file)]
    else:
        for name, value in spec.params.items():
            args += ["-p", f"{name}:={json.dumps(value)}"]
    for src, dst in spec.remaps:
        args += ["-r", f"{src}:={dst}"]
    return args
