"""Real parts for the franka node tests: simulator servers, the node process, and an rclpy probe.

* franky-sim (``.venv-franky-sim``, scripts/setup_franky_sim.sh) and franka-sim (``.venv-franka-sim``,
  scripts/setup_franka_sim.sh) run as their own processes on a loopback address of their own, so test
  modules never share a robot. Both hold ports 1337/1338 on that address (fixed by libfranka).
* The franka node runs as its real console script; the test talks to it over DDS in an isolated
  ``ROS_DOMAIN_ID`` with UDP transport only (a SIGKILLed Fast DDS process leaves shared-memory segments).
* Every process is started in its own session and stopped with SIGINT, then SIGKILL (franky-sim ignores
  SIGTERM).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
FRANKY_SIM_VENV = REPO / ".venv-franky-sim"
FRANKA_SIM_VENV = REPO / ".venv-franka-sim"
NODE_EXE = Path(sys.executable).with_name("franka_node")
STREAMER = Path(__file__).with_name("chunk_streamer.py")


def ros_env(domain_id: int) -> dict[str, str]:
    env = dict(os.environ)
    env["ROS_DOMAIN_ID"] = str(domain_id)
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"  # DESIGN.md: tests discover on localhost only
    env["FASTDDS_BUILTIN_TRANSPORTS"] = "UDPv4"
    env.pop("RMW_IMPLEMENTATION", None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def stop_process(proc: subprocess.Popen | None, grace: float = 5.0) -> None:
    """SIGINT the process group, then SIGKILL what is left."""
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(grace)
    except (subprocess.TimeoutExpired, ProcessLookupError):
        pass
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(5.0)


class LoggedProcess:
    """A child process in its own session whose output goes to a file (a full pipe would block it)."""

    def __init__(self, cmd: list[str], log_path: Path, env: dict[str, str] | None = None):
        self.log_path = log_path
        self._log = open(log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=REPO, start_new_session=True
        )

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_output(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.output():
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.proc.args[0]} exited ({self.proc.returncode}):\n{self.output()[-3000:]}")
            time.sleep(0.1)
        raise TimeoutError(f"no {text!r} from {self.proc.args} within {timeout} s:\n{self.output()[-3000:]}")

    def stop(self) -> None:
        stop_process(self.proc)
        self._log.close()


SLOW_FRANKY_SIM_LAUNCHER = """
import sys
import franky_sim
from franky_sim.mujoco_simulator import MujocoSimulator
host, slowdown = sys.argv[1], float(sys.argv[2])
with MujocoSimulator(enable_visualization=False) as sim:
    robot = sim.add_robot()
    with franky_sim.SimulationServer(sim, hostname_candidates=[host]) as server:
        print(f"Connect to the server using '{robot.hostname}' as the robot IP address", flush=True)
        try:
            server.run_forever(realtime=slowdown)  # each 1 ms step takes at least slowdown ms of wall time
        except KeyboardInterrupt:
            pass
"""


def start_franky_sim(host: str, log_dir: Path, slowdown: float | None = None) -> LoggedProcess:
    """franky-sim (MuJoCo) serving on ``host``.

    Args:
        slowdown: run the simulation at most ``1 / slowdown`` of real time (franky-sim's own pacing, via
            ``SimulationServer.run_forever(realtime=slowdown)``), i.e. as slow as it gets on a heavily loaded
            machine, deterministically. None: the ``franky-sim`` CLI (real time, or less when loaded).
    """
    exe = FRANKY_SIM_VENV / "bin" / "franky-sim"
    if not exe.exists():
        raise FileNotFoundError(f"{exe} missing: run scripts/setup_franky_sim.sh")
    if slowdown is None:
        cmd = [str(exe), "-s", "mujoco", "--hostname", host]
    else:
        launcher = log_dir / "launch_slow_franky_sim.py"
        launcher.write_text(SLOW_FRANKY_SIM_LAUNCHER)
        cmd = [str(FRANKY_SIM_VENV / "bin" / "python"), str(launcher), host, str(float(slowdown))]
    sim = LoggedProcess(cmd, log_dir / f"franky-sim-{host}.log")
    try:
        sim.wait_for_output("Connect to the server", 60.0)
    except BaseException:
        sim.stop()
        raise
    return sim


FRANKA_SIM_LAUNCHER = """
import sys
from franka_sim import FrankaSimServer
# The CLI binds 0.0.0.0; bind the test's own loopback address instead so tests cannot collide.
server = FrankaSimServer(host=sys.argv[1], enforce_comm_constraints=True, enforce_motion_limits=True,
                         joint_discontinuity_scale=3.0)
print("franka-sim serving on", sys.argv[1], flush=True)
try:
    server.start()
except KeyboardInterrupt:
    pass
"""


def start_franka_sim(host: str, log_dir: Path) -> LoggedProcess:
    """franka-sim with limit and communication enforcement: it raises real libfranka reflexes.

    Offline model: FR3_MJCF -> a copy of franky-sim's assets/fr3.xml whose ``meshdir="assets"`` resolves
    through an ``assets -> franky_sim/assets/meshes`` link (franka-sim would otherwise download the model).
    """
    py = FRANKA_SIM_VENV / "bin" / "python"
    if not py.exists():
        raise FileNotFoundError(f"{py} missing: run scripts/setup_franka_sim.sh")
    franky_assets = next((FRANKY_SIM_VENV / "lib").glob("python3*/site-packages/franky_sim/assets"))
    model_dir = Path(tempfile.mkdtemp(prefix="fr3-mjcf-", dir=log_dir))
    shutil.copy(franky_assets / "fr3.xml", model_dir / "fr3.xml")
    (model_dir / "assets").symlink_to(franky_assets / "meshes")
    launcher = model_dir / "launch_franka_sim.py"
    launcher.write_text(FRANKA_SIM_LAUNCHER)
    env = dict(os.environ, FR3_MJCF=str(model_dir / "fr3.xml"))
    sim = LoggedProcess([str(py), str(launcher), host], log_dir / f"franka-sim-{host}.log", env=env)
    try:
        sim.wait_for_output("franka-sim serving on", 60.0)
        time.sleep(3.0)  # the server starts listening after building the MuJoCo model (~2 s here)
    except BaseException:
        sim.stop()
        raise
    return sim


def start_franka_node(
    domain_id: int, params: dict, log_dir: Path, name: str = "franka_node", ros_args: tuple[str, ...] = ()
) -> LoggedProcess:
    """The node's console script with the shipped parameter files plus ``params`` as overrides."""
    import yaml

    override = log_dir / f"{name}-params.yaml"
    override.write_text(yaml.safe_dump({"/**": {"ros__parameters": params}}))
    cmd = [
        str(NODE_EXE),
        "--ros-args",
        "--params-file",
        str(REPO / "launch" / "franka.yaml"),
        "--params-file",
        str(REPO / "launch" / "safety.yaml"),
        "--params-file",
        str(override),
        *ros_args,
    ]
    return LoggedProcess(cmd, log_dir / f"{name}.log", env=ros_env(domain_id))


class RosProbe:
    """The test's side of DDS: publishes chunks, records poses/joints/diagnostics, calls services."""

    def __init__(self, domain_id: int, namespace: str = ""):
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from geometry_msgs.msg import PoseStamped
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.signals import SignalHandlerOptions
        from sensor_msgs.msg import JointState
        from std_srvs.srv import SetBool, Trigger
        from trajectory_msgs.msg import JointTrajectory

        # UDP like the node processes; set only while the participant is created (read at creation), so
        # the rest of the pytest process keeps its environment.
        saved = os.environ.get("FASTDDS_BUILTIN_TRANSPORTS")
        os.environ["FASTDDS_BUILTIN_TRANSPORTS"] = "UDPv4"
        try:
            self.context = rclpy.Context()
            # no signal handlers: pytest keeps Ctrl-C, and the probe never shuts down under a test's feet
            rclpy.init(context=self.context, domain_id=domain_id, signal_handler_options=SignalHandlerOptions.NO)
            self.node = rclpy.create_node("franka_test_probe", context=self.context, namespace=namespace)
        finally:
            if saved is None:
                os.environ.pop("FASTDDS_BUILTIN_TRANSPORTS", None)
            else:
                os.environ["FASTDDS_BUILTIN_TRANSPORTS"] = saved
        self.chunk_pub = self.node.create_publisher(JointTrajectory, "policy/action_chunk", 10)
        self.last_chunk_end = -np.inf  # time.time() at which the last published action is due
        self.poses: list[tuple[float, np.ndarray]] = []  # (receive time.time(), xyz)
        self.quats: list[np.ndarray] = []  # xyzw, one per entry of poses
        self.joint_msgs: list[tuple[float, object]] = []
        self.diags: list[tuple[float, dict[str, str], int, str]] = []
        self._lock = threading.Lock()
        self.node.create_subscription(PoseStamped, "robot/ee_pose", self._on_pose, 50)
        self.node.create_subscription(JointState, "robot/joint_states", self._on_joints, 50)
        self.node.create_subscription(DiagnosticArray, "diagnostics", self._on_diag, 50)
        self.enable_cli = self.node.create_client(SetBool, "controller/enable")
        self.home_cli = self.node.create_client(Trigger, "controller/home")
        self.stop_cli = self.node.create_client(Trigger, "controller/stop")
        self._SetBool, self._Trigger = SetBool, Trigger
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._running = True
        self._thread.start()

    def _spin(self) -> None:
        while self._running and self.context.ok():
            self.executor.spin_once(timeout_sec=0.05)

    def close(self) -> None:
        self._running = False
        self._thread.join(2.0)
        self.executor.shutdown()
        self.node.destroy_node()
        self.context.try_shutdown()

    # -- recording ---------------------------------------------------------------------------------------
    def _on_pose(self, msg) -> None:
        p, o = msg.pose.position, msg.pose.orientation
        with self._lock:
            self.poses.append((time.time(), np.array([p.x, p.y, p.z])))
            self.quats.append(np.array([o.x, o.y, o.z, o.w]))

    def _on_joints(self, msg) -> None:
        with self._lock:
            self.joint_msgs.append((time.time(), msg))

    def _on_diag(self, msg) -> None:
        for st in msg.status:
            with self._lock:
                self.diags.append((time.time(), {kv.key: kv.value for kv in st.values}, st.level[0], st.message))

    def pose(self) -> np.ndarray:
        with self._lock:
            return self.poses[-1][1].copy()

    def poses_since(self, t: float) -> list[tuple[float, np.ndarray]]:
        with self._lock:
            return [(ts, p) for ts, p in self.poses if ts >= t]

    def latest_diag(self) -> dict[str, str]:
        with self._lock:
            return dict(self.diags[-1][1])

    def counter(self, key: str) -> float:
        return float(self.latest_diag()[key])

    def fresh_diag(self, timeout: float = 3.0) -> dict[str, str]:
        """Diagnostics published after this call (the node publishes them at 2 Hz)."""
        n = len(self.diags)
        self.wait_for(lambda: len(self.diags) > n, timeout, "fresh diagnostics")
        return self.latest_diag()

    # -- waiting -----------------------------------------------------------------------------------------
    @staticmethod
    def wait_for(predicate, timeout: float, what: str, period: float = 0.02) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(period)
        raise TimeoutError(f"timed out after {timeout} s waiting for {what}")

    def wait_ready(self, timeout: float = 30.0) -> None:
        self.wait_for(lambda: len(self.poses) > 0 and len(self.diags) > 0, timeout, "ee_pose and diagnostics")
        self.wait_for(lambda: self.chunk_pub.get_subscription_count() > 0, timeout, "chunk subscriber")
        for cli in (self.enable_cli, self.home_cli, self.stop_cli):
            if not cli.wait_for_service(timeout_sec=timeout):
                raise TimeoutError(f"service {cli.srv_name} not available")

    def wait_still(
        self, tol: float = 2e-4, window: float = 0.3, timeout: float = 10.0, keepalive: bool = False
    ) -> np.ndarray:
        """Wait until the EE moved less than ``tol`` m over ``window`` s; returns the pose.

        keepalive: meanwhile publish a zero-motion one-action chunk (gripper 0: keep its state) every 0.2 s,
        starting once the last published chunk's actions are all due — a policy asking to stay. Without
        chunks the watchdog (0.5 s) would brake an arm that is still on its way to the last target.
        """
        last_keepalive = -np.inf

        def still() -> bool:
            nonlocal last_keepalive
            now = time.time()
            if keepalive and now > self.last_chunk_end + 0.05 and now - last_keepalive >= 0.2:
                last_keepalive = self.publish_chunk(np.zeros((1, 7)))
            recent = self.poses_since(time.time() - window)
            if len(recent) < 5:
                return False
            pts = np.array([p for _, p in recent])
            return float(np.linalg.norm(pts.max(0) - pts.min(0))) < tol

        self.wait_for(still, timeout, "the arm to stand still")
        return self.pose()

    # -- acting ------------------------------------------------------------------------------------------
    def publish_chunk(
        self, actions: np.ndarray, stamp: float | None = None, period: float = 0.05, source: str = "policy"
    ) -> float:
        from d2ppo_control.chunk import ActionChunk
        from d2ppo_control.ros_conversions import chunk_to_msg

        stamp = time.time() if stamp is None else stamp
        chunk = ActionChunk(stamp=stamp, period=period, actions=np.asarray(actions), source=source)
        self.chunk_pub.publish(chunk_to_msg(chunk))
        self.last_chunk_end = max(self.last_chunk_end, chunk.end_time)
        return stamp

    def _call(self, client, request, timeout: float = 10.0):
        future = client.call_async(request)
        self.wait_for(future.done, timeout, f"service {client.srv_name}")
        return future.result()

    def set_enabled(self, on: bool):
        req = self._SetBool.Request()
        req.data = on
        return self._call(self.enable_cli, req)

    def set_parameter(self, node: str, name: str, value: str):
        """Set a string parameter of ``node`` (e.g. "/franka_node") through its set_parameters service;
        returns the SetParametersResult."""
        from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
        from rcl_interfaces.srv import SetParameters

        client = self.node.create_client(SetParameters, f"{node}/set_parameters")
        try:
            if not client.wait_for_service(timeout_sec=10.0):
                raise TimeoutError(f"{node}/set_parameters not available")
            req = SetParameters.Request()
            req.parameters = [
                Parameter(name=name, value=ParameterValue(type=ParameterType.PARAMETER_STRING, string_value=value))
            ]
            return self._call(client, req).results[0]
        finally:
            self.node.destroy_client(client)

    def trigger(self, which: str):
        return self._call({"home": self.home_cli, "stop": self.stop_cli}[which], self._Trigger.Request())


def actions(n: int, x=0.0, y=0.0, z=0.0, rx=0.0, ry=0.0, rz=0.0, g=-1.0) -> np.ndarray:
    """n identical normalised actions."""
    return np.tile(np.array([x, y, z, rx, ry, rz, g], dtype=np.float64), (n, 1))
