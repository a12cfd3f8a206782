"""Sim/real action parity: the same action sequences through robosuite and through the franka node on franky-sim.

    python -m d2ppo_franka.parity [--sequences step4 step20 ramp rotation rollout] [--demo demos.hdf5[:demo_0]]
                                  [--responses direct robosuite] [--out parity_out]
    python -m d2ppo_franka.parity --calibrate        # fit d2ppo_control.osc_response's gains to robosuite

A policy trained in robosuite learned what its actions do *there*: robosuite's OSC_POSE sets the goal to the
measured pose + delta each control step and its arm lags that goal (6.3 mm per step in steady state for a nominal
25 mm). Each sequence (normalised OSC_POSE deltas, one per 20 Hz control tick) is replayed

* in robosuite (Lift, no cameras, :class:`d2ppo_sim.robosuite_sim.RobosuiteSim`): the reference;
* through the pure-Python response model (:class:`d2ppo_control.osc_response.OscResponse`): what the controller's
  ``response: robosuite`` targets are, before franky tracks them;
* through the real franka node process against franky-sim, once per ``response`` mode: the sequence goes out over
  DDS as timed chunks (``--horizon`` actions each, published at their stamps, like the inference node), the node's
  ``robot/ee_pose`` and ``controller/executed`` are recorded, and the pose is sampled at the node's control ticks
  (the tick that executed the first action + k periods).

The figures are end-effector displacements from each run's start pose, sampled at the control ticks (robosuite: after
k steps); per sequence and mode: RMS and max of the position error (m) and of the rotation error (rad) against
robosuite. The table is followed by one JSON line; ``parity.png`` plots the trajectories.

Limits. ``--limits shipped`` (default): the node runs with the shipped ``launch/franka.yaml`` and
``launch/safety.yaml``, and robosuite and the model get each sequence as that envelope's per-step limits pass it
(:func:`envelope_clipped`: 0.025 m and 0.05 rad per step; box and cone aside), so every run executes the same
actions: what a policy trained with the robot's limits would command. ``--limits parity`` widens the node's limits
to robosuite's full scale (0.05 m, 0.5 rad per axis) and replays the raw sequences (the recorded rollout has
full-scale actions). Clipped and dropped actions are counted in the table.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from d2ppo_control.osc import axis_angle_to_quat, quat_multiply, quat_normalize, quat_to_axis_angle
from d2ppo_control.osc_response import OscGains, OscResponse

REPO = Path(__file__).resolve().parents[4]
PERIOD = 0.05
#: m: the bar on the position error RMS (issue 10).
RMS_BAR = 0.01
SEQUENCE_NAMES = ("step4", "step20", "ramp", "rotation", "rollout")
DEFAULT_RESPONSES = ("direct", "robosuite")
#: franky-sim's arm starts here (rad); the node's home_joints, so every sequence starts from the same pose.
FRANKY_SIM_START_JOINTS = (0.0, 0.0, 0.0, -1.57, 0.0, 1.57, 0.785)
#: --limits parity: the envelope admits robosuite's full scale (0.05 m and 0.5 rad per axis and step).
PARITY_LIMITS = {
    "max_translation_per_step": 0.09,
    "max_velocity": 1.8,
    "max_rotation_per_step": 0.9,
    "max_angular_velocity": 18.0,
}
LIMITS = ("shipped", "parity")
#: franky-sim paced at 1/3 of real time and the node's clock stretched alike (see NodeRun): the loaded 2-core dev
#: machine keeps that pace; at 1 (real time) franky-sim fell to 0.57x here and the node missed ticks.
DEFAULT_SLOWDOWN = 3.0
#: trailing zero actions after each sequence, so the settling after the input stops is compared too.
SETTLE_STEPS = 12


class ParityError(Exception):
    """Bad input or a failed run; main() prints it as one line."""


# -- sequences ---------------------------------------------------------------------------------------------
def _actions(rows: list[np.ndarray]) -> np.ndarray:
    a = np.zeros((len(rows), 7))
    a[:, :6] = np.array(rows)
    a[:, 6] = -1.0  # gripper open
    return a


def _pad(actions: np.ndarray, n: int = SETTLE_STEPS) -> np.ndarray:
    zeros = np.zeros((n, 7))
    zeros[:, 6] = actions[-1, 6]
    return np.concatenate([actions, zeros])


def sequence(name: str, demo: str | None = None) -> np.ndarray:
    """The normalised action sequence ``[N, 7]`` called ``name`` (see SEQUENCE_NAMES), zero-padded at the end.

    * ``step4`` / ``step20``: +0.5 in x (25 mm goal steps) for 4 / 20 actions;
    * ``ramp``: x ramps 0 -> 0.5 -> -0.5 -> 0 over 40 actions while z ramps half as much the other way;
    * ``rotation``: yaw (base z) +0.1 (0.05 rad per step) for 10 actions, then -0.1 for 10;
    * ``rollout``: the actions of a recorded demo (robomimic HDF5, ``--demo FILE[:demo_key]``).
    """
    if name == "step4" or name == "step20":
        n = 4 if name == "step4" else 20
        return _pad(_actions([np.array([0.5, 0, 0, 0, 0, 0])] * n))
    if name == "ramp":
        x = np.concatenate([np.linspace(0.05, 0.5, 10), np.linspace(0.45, -0.5, 20), np.linspace(-0.45, 0.0, 10)])
        return _pad(_actions([np.array([v, 0, -0.5 * v, 0, 0, 0]) for v in x]))
    if name == "rotation":
        return _pad(_actions([np.array([0, 0, 0, 0, 0, 0.1])] * 10 + [np.array([0, 0, 0, 0, 0, -0.1])] * 10))
    if name == "rollout":
        return _pad(load_demo(demo)[0])
    raise ParityError(f"unknown sequence {name!r}; choose from {', '.join(SEQUENCE_NAMES)}")


def safety_limits(limits: str):
    """The envelope limits of ``--limits`` (``d2ppo_control.safety.SafetyLimits``): launch/safety.yaml, widened by
    PARITY_LIMITS for "parity"."""
    from d2ppo_control.safety import SafetyLimits

    shipped = SafetyLimits.from_yaml(REPO / "launch" / "safety.yaml")
    if limits == "shipped":
        return shipped
    if limits == "parity":
        return SafetyLimits.from_dict({**shipped.to_dict(), **PARITY_LIMITS})
    raise ParityError(f"unknown limits {limits!r}; choose from {', '.join(LIMITS)}")


def envelope_clipped(actions: np.ndarray, limits, period: float = PERIOD) -> tuple[np.ndarray, int]:
    """``actions`` ``[N, 7]`` as the envelope's per-step limits pass them (translation and rotation step and speed;
    the box and the orientation cone depend on the arm's pose and are left out); returns (actions, how many changed).
    """
    from d2ppo_control.safety import SafetyEnvelope, SafetyLimits

    unbounded = SafetyLimits.from_dict({**limits.to_dict(), "workspace_min": (-1e9,) * 3, "workspace_max": (1e9,) * 3})
    envelope = SafetyEnvelope(unbounded)
    out = []
    for a in np.clip(np.asarray(actions, dtype=np.float64), -1.0, 1.0):
        out.append(envelope.check(a, np.zeros(3), period).action)
    out = np.array(out)
    return out, int(np.sum(np.any(np.abs(out - np.clip(actions, -1.0, 1.0)) > 1e-12, axis=1)))


def load_demo(spec: str | None) -> tuple[np.ndarray, np.ndarray | None]:
    """``FILE[:demo_key]`` of a robomimic HDF5 -> (actions ``[N, 7]``, flattened MuJoCo state at its start or None)."""
    if not spec:
        raise ParityError("sequence 'rollout' needs --demo FILE[:demo_key] (a robomimic HDF5)")
    path, _, key = spec.partition(":") if not Path(spec).exists() else (spec, "", "")
    if not Path(path).is_file():
        raise ParityError(f"demo file {path} not found")
    import h5py

    try:
        with h5py.File(path, "r") as f:
            data = f["data"]
            key = key or sorted(data.keys())[0]
            if key not in data:
                raise ParityError(f"{path}: no demo {key!r} (has {', '.join(sorted(data.keys())[:5])}, ...)")
            actions = np.asarray(data[key]["actions"][:], dtype=np.float64)
            state = np.asarray(data[key]["states"][0]) if "states" in data[key] else None
    except (OSError, KeyError) as e:
        raise ParityError(f"{path}: not a robomimic HDF5 with data/<demo>/actions ({e})") from None
    if actions.ndim != 2 or actions.shape[1] != 7 or not np.isfinite(actions).all():
        raise ParityError(f"{path}:{key}: actions must be finite [N, 7], got {actions.shape}")
    return actions, state


# -- trajectories and their comparison ---------------------------------------------------------------------
@dataclass
class Trajectory:
    """End-effector displacement from the start pose at each control tick (row 0: the start, row k: after k actions).

    Attributes:
        pos: ``[N + 1, 3]`` m, base frame. rot: ``[N + 1, 3]`` rad, base-frame rotation vector of
            ``q_k ⊗ q_0⁻¹`` (comparable between robosuite's and franky's end-effector frames, which differ by a
            fixed rotation on the right).
        info: counters of the run (dropped, clipped, ...).
    """

    pos: np.ndarray
    rot: np.ndarray
    info: dict = field(default_factory=dict)

    @classmethod
    def from_poses(cls, pos: np.ndarray, quat: np.ndarray, info: dict | None = None) -> Trajectory:
        pos, quat = np.asarray(pos, dtype=np.float64), np.asarray(quat, dtype=np.float64)
        q0_inv = _conjugate(quat_normalize(quat[0]))
        rot = np.array([quat_to_axis_angle(quat_multiply(quat_normalize(q), q0_inv)) for q in quat])
        return cls(pos - pos[0], rot, dict(info or {}))


def _franky_time(robot) -> float:
    t = robot.state.time
    return float(t.to_sec() if hasattr(t, "to_sec") else t)


def _conjugate(q: np.ndarray) -> np.ndarray:
    return np.array([-q[0], -q[1], -q[2], q[3]])


def compare(reference: Trajectory, other: Trajectory) -> dict[str, float]:
    """Errors of ``other`` against ``reference`` over the common ticks: position (m) and rotation (rad) RMS / max,
    and both final displacements (m)."""
    n = min(len(reference.pos), len(other.pos))
    dp = np.linalg.norm(other.pos[:n] - reference.pos[:n], axis=1)
    dr = np.array(
        [
            np.linalg.norm(quat_to_axis_angle(quat_multiply(axis_angle_to_quat(a), _conjugate(axis_angle_to_quat(b)))))
            for a, b in zip(other.rot[:n], reference.rot[:n])
        ]
    )
    return {
        "pos_rms_m": float(np.sqrt(np.mean(dp**2))),
        "pos_max_m": float(dp.max()),
        "rot_rms_rad": float(np.sqrt(np.mean(dr**2))),
        "rot_max_rad": float(dr.max()),
        "final_m": float(np.linalg.norm(other.pos[n - 1])),
        "reference_final_m": float(np.linalg.norm(reference.pos[n - 1])),
    }


# -- robosuite ---------------------------------------------------------------------------------------------
class RobosuiteRunner:
    """Lift without cameras; each sequence from a fresh (seeded) reset, or from a demo's recorded start state."""

    def __init__(self, seed: int = 0):
        from d2ppo_sim.robosuite_sim import RobosuiteSim, SimTask

        self.sim = RobosuiteSim(SimTask(task="Lift", camera_names=()), seed=seed)
        self.controller = self.sim.env.robots[0].part_controllers["right"]  # robosuite's OSC_POSE

    def run(self, actions: np.ndarray, start_state: np.ndarray | None = None) -> Trajectory:
        sim = self.sim
        sim.reset()
        if start_state is not None:
            env = sim.env
            env.sim.set_state_from_flattened(start_state)
            env.sim.forward()
            # the controller's nullspace target (its initial joints) is not part of the state: set it to the demo's
            # start, so the replay does not depend on which reset came before
            self.controller.update(force=True)
            self.controller.update_initial_joints(np.array(sim._robot._joint_positions))
            sim._set_obs(env._get_observations(force_update=True))
        o = sim.observation()
        pos, quat = [o.ee_pos.copy()], [o.ee_quat.copy()]
        for a in np.asarray(actions, dtype=np.float64):
            sim.step(a)
            o = sim.observation()
            pos.append(o.ee_pos.copy())
            quat.append(o.ee_quat.copy())
        return Trajectory.from_poses(np.array(pos), np.array(quat))

    def close(self) -> None:
        self.sim.close()


def run_model(actions: np.ndarray, gains: OscGains | None = None) -> Trajectory:
    """The response model on its own, from rest with the tool pointing down (displacements only)."""
    model = OscResponse(np.zeros(3), np.array([1.0, 0.0, 0.0, 0.0]), gains)  # tool pointing down, like both arms
    pos, quat = model.rollout(actions)
    return Trajectory.from_poses(pos, quat)


# -- the franka node on franky-sim -------------------------------------------------------------------------
def _harness():
    """tests/franka/franka_harness.py (franky-sim, the node process, the rclpy probe) and tests/ros_domains.py."""
    for p in (REPO / "tests", REPO / "tests" / "franka"):
        if str(p) not in sys.path:
            sys.path.insert(0, str(p))
    try:
        import franka_harness
        import ros_domains
    except ImportError as e:
        raise ParityError(f"cannot import the franky-sim harness from {REPO / 'tests'}: {e}") from None
    return franka_harness, ros_domains


class NodeRun:
    """franky-sim on ``127.0.<domain>.1`` and one franka node process at a time, driven over DDS in ``domain``.

    **Time scale.** franky-sim's clock runs below real time on a loaded machine (0.57x measured here while other
    tests ran), so an arm driven at 20 Hz of wall time gets its targets up to twice as often, in its own time, as a
    real arm would, and cannot keep up. With ``slowdown`` S the simulator is paced at (at most) 1/S of real time
    (its own ``run_forever(realtime=S)``, as tests/franka do) and everything on the node's side is stretched by S:
    control rate 20/S Hz, chunk period, late tolerance and watchdog timeout × S. In the simulator's time that is the
    robot's 20 Hz exactly; the response model steps 50 ms of robosuite time per tick whatever the tick rate. The
    pace franky-sim actually kept is measured before each node starts (``sim_rate``).

    Args:
        domain: ROS_DOMAIN_ID (claim it with tests/ros_domains.py); also names franky-sim's loopback address.
        log_dir: logs of franky-sim and the node.
        limits: "shipped" (launch/safety.yaml) or "parity" (PARITY_LIMITS over it); velocity limits are divided and
            the watchdog timeout multiplied by ``slowdown``, so the per-step limits stay those of 20 Hz.
        params: further node parameter overrides.
        slowdown: S >= 1 (1: franky-sim's own CLI, as fast as the machine allows, node at 20 Hz).
    """

    def __init__(
        self,
        domain: int,
        log_dir: Path,
        limits: str = "shipped",
        params: dict | None = None,
        slowdown: float = 1.0,
    ):
        self.h, _ = _harness()
        self.domain = domain
        self.host = f"127.0.{domain}.1"
        self.log_dir = Path(log_dir)
        self.slowdown = float(slowdown)
        self.period = PERIOD * self.slowdown
        self.params = {
            "robot_ip": self.host,
            "realtime": False,
            "home_joints": list(FRANKY_SIM_START_JOINTS),
            "control_rate_hz": 1.0 / self.period,
            # two periods, like tests/franka: a node descheduled for more than a period on the shared 2-core box would
            # drop an action as stale (dropped actions are counted in the table)
            "late_tolerance": 2.0 * self.period,
            **self._limit_params(safety_limits(limits)),
            **(params or {}),
        }
        self.sim = self.h.start_franky_sim(self.host, self.log_dir, slowdown=self.slowdown if slowdown > 1 else None)
        self.sim_rate: list[float] = []  # measured simulator seconds per wall second, one per node start
        self.node = None
        self.probe = None
        self.response = None
        self._lock = threading.Lock()
        self._poses: list[tuple[float, np.ndarray, np.ndarray]] = []  # (header stamp s, pos, quat)
        self._executed: list[tuple[float, np.ndarray]] = []

    def _limit_params(self, lim) -> dict:
        s = self.slowdown
        return {
            "safety.max_translation_per_step": lim.max_translation_per_step,
            "safety.max_rotation_per_step": lim.max_rotation_per_step,
            "safety.max_velocity": lim.max_velocity / s,
            "safety.max_angular_velocity": lim.max_angular_velocity / s,
            "safety.watchdog_timeout": lim.watchdog_timeout * s,
        }

    def start_node(self, response: str) -> None:
        """(Re)start the node with ``response`` and wait until it is enabled and the arm stands still."""
        self.stop_node()
        self.response = response
        self.sim_rate.append(self.measure_sim_rate())
        self.node = self.h.start_franka_node(
            self.domain, {**self.params, "response": response}, self.log_dir, name=f"franka_node_{response}"
        )
        self.probe = self.h.RosProbe(self.domain)
        from geometry_msgs.msg import PoseStamped
        from trajectory_msgs.msg import JointTrajectory

        self.probe.node.create_subscription(PoseStamped, "robot/ee_pose", self._on_pose, 100)
        self.probe.node.create_subscription(JointTrajectory, "controller/executed", self._on_executed, 100)
        try:
            self.probe.wait_ready(timeout=60.0)
        except TimeoutError as e:
            raise ParityError(f"franka node ({response}) did not come up: {e}; log {self.node.log_path}") from None
        self._enable()
        self.probe.wait_still(timeout=20.0)

    def measure_sim_rate(self, seconds: float = 2.0) -> float:
        """franky-sim's seconds per wall second, read through a franky connection of our own (before the node's)."""
        import franky

        try:
            robot = franky.Robot(self.host, realtime_config=franky.RealtimeConfig.Ignore)
        except Exception as e:  # noqa: BLE001 - franky's own types; reported as one line
            raise ParityError(f"cannot connect to franky-sim at {self.host}: {type(e).__name__}: {e}") from None
        try:
            s0, w0 = _franky_time(robot), time.monotonic()
            time.sleep(seconds)
            return (_franky_time(robot) - s0) / (time.monotonic() - w0)
        finally:
            del robot

    def stop_node(self) -> None:
        if self.probe is not None:
            self.probe.close()
            self.probe = None
        if self.node is not None:
            self.node.stop()
            self.node = None

    def close(self) -> None:
        self.stop_node()
        self.sim.stop()

    def _on_pose(self, msg) -> None:
        p, o, s = msg.pose.position, msg.pose.orientation, msg.header.stamp
        with self._lock:
            self._poses.append((s.sec + s.nanosec * 1e-9, np.array([p.x, p.y, p.z]), np.array([o.x, o.y, o.z, o.w])))

    def _on_executed(self, msg) -> None:
        s = msg.header.stamp
        with self._lock:
            self._executed.append((s.sec + s.nanosec * 1e-9, np.array(msg.points[0].positions)))

    def _enable(self) -> None:
        resp = self.probe.set_enabled(True)
        if not resp.success:
            raise ParityError(f"controller/enable refused: {resp.message}")

    def _tick_phase(self, gripper: float) -> float:
        """The time (s) of one of the node's control ticks: that of a zero-motion action (which moves nothing)."""
        with self._lock:
            self._executed.clear()
        self.probe.publish_chunk(np.array([[0, 0, 0, 0, 0, 0, gripper]], dtype=np.float64), period=self.period)
        self.probe.wait_for(lambda: len(self._executed) > 0, 5.0 * self.slowdown, "a zero action executed")
        with self._lock:
            return self._executed[0][0]

    def home(self) -> None:
        """Back to FRANKY_SIM_START_JOINTS (controller/home) and still."""
        self._enable()  # the watchdog disables the controller after each sequence
        resp = self.probe.trigger("home")
        if not resp.success:
            raise ParityError(f"controller/home refused: {resp.message}")
        time.sleep(0.5)
        self.probe.wait_for(lambda: self.probe.latest_diag().get("homing") == "0", 30.0, "the home motion to end")
        self._enable()
        self.probe.wait_still(timeout=20.0)

    def run(self, actions: np.ndarray, horizon: int = 4) -> Trajectory:
        """Publish ``actions`` as timed chunks of ``horizon``, record, and sample the pose at the node's ticks.

        The chunks are stamped 0.3 period before the node's ticks (found with a zero-action chunk first), like a
        policy whose chunk arrives just before the tick that runs it: the executor runs the slot nearest each tick,
        so stamps half a period off the tick grid would have it skip an action at every chunk.
        """
        probe = self.probe
        actions = np.asarray(actions, dtype=np.float64)
        n = len(actions)
        period = self.period
        tick = self._tick_phase(actions[0, 6])
        before = probe.fresh_diag()
        with self._lock:
            self._executed.clear()
        t0 = tick + period * (np.ceil((time.time() + 0.5 * period - tick) / period) + 1) - 0.3 * period
        for k in range(0, n, horizon):
            stamp = t0 + k * period
            time.sleep(max(0.0, stamp - time.time()))
            probe.publish_chunk(actions[k : k + horizon], stamp=stamp, period=period)
        end = t0 + n * period + 0.3
        time.sleep(max(0.0, end - time.time()))
        after = probe.fresh_diag()
        with self._lock:
            executed = [(t, a) for t, a in self._executed if t >= t0 - period]
            poses = list(self._poses)
        if not executed:
            raise ParityError(f"the node ({self.response}) executed none of the {n} actions; log {self.node.log_path}")
        t_first = executed[0][0]
        ticks = t_first + period * np.arange(n + 1)
        stamps = np.array([t for t, _, _ in poses])
        if stamps[-1] < ticks[-1] - 0.02:
            raise ParityError(f"ee_pose stopped at {stamps[-1] - t_first:.2f} s into a {n * period:.2f} s sequence")
        pos = np.array([p for _, p, _ in poses])
        quat = np.array([q for _, _, q in poses])
        quat = quat * np.sign(np.sum(quat * quat[np.searchsorted(stamps, ticks[0])], axis=1, keepdims=True))
        sampled_pos = np.stack([np.interp(ticks, stamps, pos[:, i]) for i in range(3)], axis=1)
        sampled_quat = np.stack([np.interp(ticks, stamps, quat[:, i]) for i in range(4)], axis=1)
        keys = ("actions_executed", "actions_dropped_stale", "actions_rejected", "steps_held_back", "motions_sent")
        info = {k: int(float(after.get(k, 0)) - float(before.get(k, 0))) for k in keys}
        info["clipped"] = int(sum(float(after[k]) - float(before[k]) for k in after if k.startswith("safety_clipped_")))
        return Trajectory.from_poses(sampled_pos, sampled_quat, info)


# -- calibration -------------------------------------------------------------------------------------------
def calibration_sequences() -> dict[str, np.ndarray]:
    """robosuite responses the response model is fitted to: translation steps (±x, ±y, ±z at 0.5 for 4 and 20
    actions, x at full scale, the ramp) and rotations about each base axis at 0.1, 0.2, 0.5 and 0.9 for 8 actions."""
    out = {}
    for axis, name in enumerate("xyz"):
        for sign in (1.0, -1.0):
            for n in (4, 20):
                out[f"{'+' if sign > 0 else '-'}{name}{n}"] = _pad(_actions([np.eye(6)[axis] * 0.5 * sign] * n))
    out["+x10_full"] = _pad(_actions([np.eye(6)[0]] * 10))
    out["ramp"] = sequence("ramp")
    for axis, name in enumerate(("rx", "ry", "rz")):
        for mag in (0.1, 0.2, 0.5, 0.9):
            out[f"{name}_{mag}"] = _pad(_actions([np.eye(6)[axis + 3] * mag] * 8), 8)
    return out


def calibrate(runner: RobosuiteRunner) -> tuple[OscGains, dict[str, float]]:
    """Least-squares fit of kp/kd (translation) and kp_rot/kd_rot/max_angular_speed (rotation) to robosuite."""
    from scipy.optimize import least_squares

    seqs = calibration_sequences()
    measured = {name: runner.run(a) for name, a in seqs.items()}
    rotations = [n for n in seqs if n.startswith(("rx", "ry", "rz"))]
    translations = [n for n in seqs if n not in rotations]

    def pos_residuals(x) -> np.ndarray:
        g = OscGains(kp=x[0], kd=x[1])
        return np.concatenate([(run_model(seqs[n], g).pos - measured[n].pos).ravel() for n in translations])

    def rot_residuals(x) -> np.ndarray:
        g = OscGains(kp_rot=x[0], kd_rot=x[1], max_angular_speed=x[2])
        return np.concatenate([(run_model(seqs[n], g).rot - measured[n].rot).ravel() for n in rotations])

    nominal = OscGains.nominal()
    pos = least_squares(pos_residuals, [nominal.kp, nominal.kd], bounds=([1, 1], [400, 60]))
    rot = least_squares(rot_residuals, [nominal.kp, nominal.kd, 2.0], bounds=([1, 1, 0.1], [400, 60, 50]))
    gains = OscGains(kp=pos.x[0], kd=pos.x[1], kp_rot=rot.x[0], kd_rot=rot.x[1], max_angular_speed=rot.x[2])
    fit = {
        "pos_rms_m": float(np.sqrt(np.mean(pos.fun**2))),
        "rot_rms_rad": float(np.sqrt(np.mean(rot.fun**2))),
        "nominal_pos_rms_m": float(np.sqrt(np.mean(pos_residuals([nominal.kp, nominal.kd]) ** 2))),
        "nominal_rot_rms_rad": float(np.sqrt(np.mean(rot_residuals([nominal.kp, nominal.kd, np.inf]) ** 2))),
    }
    return gains, fit


# -- report ------------------------------------------------------------------------------------------------
def format_table(results: dict[str, dict[str, dict]]) -> str:
    head = (
        f"{'sequence':<9} {'run':<17} {'N':>3} {'final mm':>9} {'robosuite':>9} {'RMS mm':>7} {'max mm':>7} "
        f"{'rot RMS mrad':>12} {'rot max':>8}  notes"
    )
    lines = [head, "-" * len(head)]
    for seq, runs in results.items():
        for run, r in runs.items():
            notes = ", ".join(f"{k} {v}" for k, v in r.get("info", {}).items() if v and k != "actions_executed")
            if "actions_executed" in r.get("info", {}):
                notes = f"executed {r['info']['actions_executed']}/{r['n']}" + (f", {notes}" if notes else "")
            lines.append(
                f"{seq:<9} {run:<17} {r['n']:>3} {r['final_m'] * 1e3:>9.1f} {r['reference_final_m'] * 1e3:>9.1f} "
                f"{r['pos_rms_m'] * 1e3:>7.1f} {r['pos_max_m'] * 1e3:>7.1f} {r['rot_rms_rad'] * 1e3:>12.1f} "
                f"{r['rot_max_rad'] * 1e3:>8.1f}  {notes}"
            )
    return "\n".join(lines)


def plot(trajectories: dict[str, dict[str, Trajectory]], path: Path) -> None:
    """One row per sequence: x, y, z displacement (mm) and rotation angle (mrad) per tick, one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = len(trajectories)
    fig, axes = plt.subplots(rows, 4, figsize=(16, 2.6 * rows), squeeze=False)
    styles = {"robosuite": ("k", "-"), "model": ("tab:green", ":")}
    palette = iter(["tab:red", "tab:blue", "tab:orange", "tab:purple"])
    for r, (seq, runs) in enumerate(trajectories.items()):
        for run, traj in runs.items():
            if run not in styles:
                styles[run] = (next(palette, "tab:gray"), "--")
            color, ls = styles[run]
            t = np.arange(len(traj.pos))
            for c in range(3):
                axes[r, c].plot(t, traj.pos[:, c] * 1e3, color=color, ls=ls, label=run)
            axes[r, 3].plot(t, np.linalg.norm(traj.rot, axis=1) * 1e3, color=color, ls=ls, label=run)
        for c, label in enumerate(("x mm", "y mm", "z mm", "rotation mrad")):
            axes[r, c].set_title(f"{seq}: {label}", fontsize=9)
            axes[r, c].grid(alpha=0.3)
        axes[r, 0].legend(fontsize=7)
    for ax in axes[-1]:
        ax.set_xlabel("control tick (50 ms)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


# -- command line ------------------------------------------------------------------------------------------
def run_parity(
    names: list[str],
    responses: list[str],
    demo: str | None = None,
    domain: int | None = None,
    limits: str = "shipped",
    horizon: int = 4,
    seed: int = 0,
    log_dir: Path | None = None,
    node_params: dict | None = None,
    slowdown: float = DEFAULT_SLOWDOWN,
) -> tuple[dict[str, dict[str, dict]], dict[str, dict[str, Trajectory]], dict]:
    """Run every sequence in robosuite, the model and the node per response mode; returns (figures, trajectories)."""
    seqs = {name: sequence(name, demo) for name in names}  # bad names and files fail before anything starts
    lim = safety_limits(limits)
    clipped = {}
    if limits == "shipped":  # everyone executes what the robot's envelope lets through
        for name in seqs:
            seqs[name], clipped[name] = envelope_clipped(seqs[name], lim)
    conditions: dict = {}
    start_states = {"rollout": load_demo(demo)[1]} if "rollout" in seqs else {}
    runner = RobosuiteRunner(seed)
    try:
        trajs: dict[str, dict[str, Trajectory]] = {
            name: {
                "robosuite": runner.run(a, start_states.get(name)),
                "model": run_model(a),
            }
            for name, a in seqs.items()
        }
    finally:
        runner.close()
    for name, n in clipped.items():
        trajs[name]["model"].info["actions_clipped_for_all"] = n
    if responses:
        with ExitStack() as stack:
            if domain is None:
                _, ros_domains = _harness()
                domain = ros_domains.claim_domain(range(60, 80))
                stack.callback(ros_domains.release_domain, domain)
            if log_dir is None:
                log_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="parity-")))
            rig = NodeRun(domain, log_dir, limits, node_params, slowdown)
            stack.callback(rig.close)
            for response in responses:
                rig.start_node(response)
                for name, a in seqs.items():
                    rig.home()
                    trajs[name][f"node {response}"] = rig.run(a, horizon)
            conditions = {"slowdown": slowdown, "sim_rate": [round(r, 3) for r in rig.sim_rate]}
    results = {
        name: {
            run: {"n": len(seqs[name]), **compare(runs["robosuite"], t), "info": t.info}
            for run, t in runs.items()
            if run != "robosuite"
        }
        for name, runs in trajs.items()
    }
    return results, trajs, conditions


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m d2ppo_franka.parity", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--sequences",
        nargs="+",
        default=None,
        help=f"of {', '.join(SEQUENCE_NAMES)} (default: all but rollout; with --demo, all)",
    )
    p.add_argument("--demo", default=None, help="robomimic HDF5 [:demo_key] whose actions are the 'rollout' sequence")
    p.add_argument(
        "--responses",
        nargs="*",
        default=list(DEFAULT_RESPONSES),
        help="franka node response modes to run (none: robosuite and the model only)",
    )
    p.add_argument(
        "--limits",
        choices=LIMITS,
        default="shipped",
        help="shipped: launch/safety.yaml, and every run gets the actions as its per-step limits pass them; "
        "parity: the node's limits widened to robosuite's full scale, raw actions",
    )
    p.add_argument("--horizon", type=int, default=4, help="actions per published chunk")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--domain", type=int, default=None, help="ROS_DOMAIN_ID (default: claim one of 60-79)")
    p.add_argument(
        "--slowdown",
        type=float,
        default=DEFAULT_SLOWDOWN,
        help="pace franky-sim at 1/S real time and stretch the node's clock by S (>= 1; see NodeRun)",
    )
    p.add_argument("--relative-dynamics-factor", type=float, default=None, help="override the node's (0, 1]")
    p.add_argument("--out", type=Path, default=Path("parity_out"), help="folder for parity.png and parity.json")
    p.add_argument("--calibrate", action="store_true", help="fit the response model's gains to robosuite and exit")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.calibrate:
            runner = RobosuiteRunner(args.seed)
            try:
                gains, fit = calibrate(runner)
            finally:
                runner.close()
            print(
                f"fitted: kp {gains.kp:.1f} kd {gains.kd:.2f} kp_rot {gains.kp_rot:.1f} kd_rot {gains.kd_rot:.2f} "
                f"max_angular_speed {gains.max_angular_speed:.2f}"
            )
            keys = ("kp", "kd", "kp_rot", "kd_rot", "max_angular_speed")
            print(json.dumps({"gains": {k: getattr(gains, k) for k in keys}, **fit}))
            return 0
        names = args.sequences or [n for n in SEQUENCE_NAMES if n != "rollout" or args.demo]
        for name in names:
            if name not in SEQUENCE_NAMES:
                raise ParityError(f"unknown sequence {name!r}; choose from {', '.join(SEQUENCE_NAMES)}")
        for r in args.responses:
            if r not in DEFAULT_RESPONSES:
                raise ParityError(f"unknown response {r!r}; choose from {', '.join(DEFAULT_RESPONSES)}")
        if not args.slowdown >= 1.0:
            raise ParityError(f"--slowdown must be >= 1, got {args.slowdown}")
        if args.horizon < 1:
            raise ParityError(f"--horizon must be >= 1, got {args.horizon}")
        params = {}
        if args.relative_dynamics_factor is not None:
            params["relative_dynamics_factor"] = args.relative_dynamics_factor
        results, trajs, conditions = run_parity(
            names,
            args.responses,
            args.demo,
            args.domain,
            args.limits,
            args.horizon,
            args.seed,
            node_params=params,
            slowdown=args.slowdown,
        )
    except ParityError as e:
        print(f"parity: {e}", file=sys.stderr)
        return 2
    except FileNotFoundError as e:  # franky-sim's venv missing (scripts/setup_franky_sim.sh)
        print(f"parity: {e}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    plot(trajs, args.out / "parity.png")
    if conditions:
        print(
            f"franky-sim paced at 1/{conditions['slowdown']:g} real time, node at {20 / conditions['slowdown']:.3g} Hz; "
            f"simulator seconds per wall second measured before each node: {conditions['sim_rate']}"
        )
    print(format_table(results))
    print(f"plot: {args.out / 'parity.png'}")
    summary = {
        "bar_pos_rms_m": RMS_BAR,
        "limits": args.limits,
        **conditions,
        "sequences": results,
        "meets_bar": {
            run: all(runs[run]["pos_rms_m"] <= RMS_BAR for runs in results.values() if run in runs)
            for run in {r for runs in results.values() for r in runs}
        },
    }
    (args.out / "parity.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
