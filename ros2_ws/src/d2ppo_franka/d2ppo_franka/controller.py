"""The Franka controller: chunk execution on a real arm, as a plain class (the ROS node only wires it up).

Per control tick (:meth:`FrankaController.step`):

1. notice an asynchronous reflex (franky reports it at the next poll/move) and run bounded recovery;
2. pick the *reference pose* the next delta is applied to (see below);
3. ask the shared :class:`~d2ppo_control.executor.ChunkExecutor` (which runs the
   :class:`~d2ppo_control.safety.SafetyEnvelope`) for this tick's command;
4. move: ``delta_to_target`` (robosuite OSC_POSE semantics) -> asynchronous absolute Cartesian motion;
   gripper through a hysteresis latch. A zero-motion action keeps the current target and sends nothing
   (see below). hold (nothing due, envelope rejection): no new target — the arm settles on, and holds,
   the last target the envelope accepted. Watchdog trip: by default (``watchdog_action: brake``) a hold at
   the pose measured at the trip; ``settle`` lets the arm settle on the last accepted target instead.
   Disable and stop act at once: disable holds the pose measured now, stop calls franky's stop.

No command reaches the arm except through the executor, i.e. through the envelope; the only others are
holds at the measured pose (disable, watchdog brake), franky's stop and the operator's home motion (whose
target is checked against the joint limits, the box and the orientation cone before it starts).

**Nothing resumes without an operator.** The controller starts disabled (``start_enabled: false``). A
reflex (recovered or not), a lost connection or a watchdog trip disables it, and ``disabled_reason`` in
``/diagnostics`` says why; only ``controller/enable`` resumes. Automatic reflex recovery (franky's
``recover_from_errors``) is capped at ``safety.max_reflex_retries`` attempts per enable; beyond, or when
recovery fails, the controller latches a fault that only ``enable`` (which recovers first) clears.

**Blocking work off the control tick.** Connecting, reflex recovery and starting the home motion (which
stops the running motion and waits for it) run on a worker thread (:class:`_Job`); the tick holds and
touches the arm not at all while one runs, so ``controller/stop`` and ``disable`` are served within one
control period whatever the arm is doing. A stop during a job cancels what the job would do next.

**Reference pose.** robosuite applies each delta to the *achieved* pose, and its OSC lags the goal, so a
constant action moves the sim arm at a steady speed. franky's motion generator instead runs each target to
completion at bounded velocity (``relative_dynamics_factor``); applying deltas to the measured pose of a
lagging arm would shrink every step. The controller therefore applies each delta to the previous *commanded*
target (the measured pose only when it has none). A step that would take the target further away from an
arm already more than ``max_tracking_lead`` metres / ``max_tracking_lead_rot`` radians behind it is held
back (:func:`lead_gated_target`; ``steps_held_back``), so the target is never more than lead + one step
ahead of the arm, i.e. the arm travels at most that far once actions stop. The measured pose never enters
the target: re-basing targets on a lagging (or sagging, in franky-sim) measurement feeds its error back into
the next target. Every target still passes the envelope (workspace, step, velocity).

**Response** (``response``). ``direct`` (above): the target moves by the full delta. ``robosuite``: the target is the
pose of a reference model of robosuite's closed-loop OSC_POSE response (:mod:`d2ppo_control.osc_response`: goal =
model pose + delta, the spring integrated for one period), so a policy's actions move the arm as they moved the sim
arm it was trained on (+0.5 in x: ~6 mm per step in steady state, not 25). The envelope checks the action against
the model pose; the model's step never exceeds one envelope step and never carries the target out of the box or cone
(``model_steps_limited``); the tracking lead applies to the model targets. A zero-motion action lets the model
coast (its velocity decays); once a coast step is shorter than MODEL_REST_TOLERANCE the model is put at rest on the
target already sent, and zero actions keep it and send nothing, as in ``direct``. Measured parity:
``python -m d2ppo_franka.parity`` and the package README.

**Zero motion sends nothing.** A zero-motion action (translation and rotation components all 0: teleop
with hands off, a policy asking to stay) keeps the current target, whatever the lead, and starts no new
franky motion: the running motion already holds that target. Re-sending it is not harmless: franky starts
every new motion from the robot's *reported* commanded velocity and acceleration (``O_dP_EE_c``,
``O_ddP_EE_c``). franky-sim reports them as low-pass-filtered finite differences that lag the true
command, so a motion re-issued every tick towards an unchanged target restarts from a stale, too-fast
state each time; measured with franky-sim slowed 3-5x (as on a loaded machine) the arm was pumped past its
fixed target by up to 10 cm and kept moving for as long as zero actions came (tests/franka,
test_franka_node_zero_actions.py).
"""

from __future__ import annotations

import dataclasses
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from d2ppo_control.chunk import SOURCES, ActionChunk
from d2ppo_control.executor import HOLD, ChunkExecutor, Command
from d2ppo_control.osc import (
    axis_angle_to_quat,
    delta_to_target,
    quat_multiply,
    quat_normalize,
    quat_to_axis_angle,
    target_to_delta,
)
from d2ppo_control.osc_response import OscGains, OscResponse
from d2ppo_control.safety import SafetyEnvelope, SafetyLimits

from d2ppo_franka.arm import ArmError, ArmState, ConnectionLost, ReflexError
from d2ppo_franka.kinematics import JOINT_LIMITS_HIGH, JOINT_LIMITS_LOW, forward_kinematics

#: Panda/FR3 "ready" pose (rad), the usual franka_ros / robosuite start configuration.
DEFAULT_HOME_JOINTS = (0.0, -0.785, 0.0, -2.356, 0.0, 1.571, 0.785)
#: joint-space samples of the home motion's sweep checked against the box before it starts.
HOME_SWEEP_SAMPLES = 20
#: rad: homing is done when every joint is this close to home_joints and the motion ended.
HOME_TOLERANCE = 0.02
#: s: a home motion that has not started moving by then (and is not home) counts as ended.
HOME_START_GRACE = 1.0
#: m / rad: an arm this close to its commanded target stands on it; a hold at the measured pose (watchdog
#: brake, disable) is then not sent. A near-zero-length motion from rest is needless and is where franky's
#: planner failed here once ("Motion planner failed with error code -111", 1 of 7 teleop runs).
AT_TARGET_TOLERANCE = 1e-3
AT_TARGET_TOLERANCE_ROT = 0.01
#: What the controller does when the executor's watchdog trips (ControllerConfig.watchdog_action).
WATCHDOG_ACTIONS = ("brake", "settle")
#: How an action moves the target (ControllerConfig.response).
RESPONSES = ("robosuite", "direct")
#: m / rad: ``response: robosuite``: a zero-motion action whose model step ends this close to the last sent target
#: puts the model at rest on that target and sends nothing, like ``direct`` does at once (the coast after a motion,
#: 4, 1.6, 0.6 mm for a 0.13 m/s model, is sent until then).
MODEL_REST_TOLERANCE = 5e-4
MODEL_REST_TOLERANCE_ROT = 5e-3
#: periods between two executed actions beyond which the model is stopped first (a pause, not a skipped slot).
MODEL_MAX_GAP = 3.5


@dataclass
class ControllerConfig:
    """Node parameters of the controller (launch/franka.yaml); safety limits live in SafetyLimits."""

    control_rate_hz: float = 20.0
    #: seconds an action may be overdue and still run; <= 0 means one control period.
    late_tolerance: float = -1.0
    #: m / rad the arm may lag behind its target and still have further steps added to it; beyond, steps that
    #: take the target further away are held back. Bounds how far the arm travels on after the last action
    #: (lead + one step).
    max_tracking_lead: float = 0.03
    max_tracking_lead_rot: float = 0.5
    #: How an action moves the target. "robosuite": the target is the pose of a reference model of robosuite's
    #: closed-loop OSC_POSE response (d2ppo_control.osc_response: goal = model pose + delta, a critically damped
    #: spring towards it for one period), so the arm moves like the sim arm a policy was trained on (6 mm per step
    #: for a +0.5 action in steady state; within 1 cm RMS of robosuite on the parity sequences). "direct": previous
    #: target + the full delta (25 mm for +0.5), what the envelope and tracking-lead tests pin. Record demos and
    #: deploy with the same response.
    response: str = "robosuite"
    #: "brake": on a watchdog trip hold at the pose measured then (the arm comes to rest within its braking
    #: distance); "settle": let the arm settle on the last accepted target (up to lead + one step away).
    watchdog_action: str = "brake"
    gripper_close_threshold: float = 0.5
    gripper_open_threshold: float = -0.5
    home_joints: tuple[float, ...] = DEFAULT_HOME_JOINTS
    #: (0, 1]: multiplies the robot's relative_dynamics_factor for the home motion (never faster than chunks).
    home_dynamics_factor: float = 1.0
    #: False (the robot profile): execute nothing until an operator calls controller/enable.
    start_enabled: bool = False
    #: the chunk source executed ("policy" or "teleop", a chunk's header.frame_id); settable at run time.
    source: str = "policy"
    #: how a new chunk meets the previous one: "replace", "ensemble" (ACT temporal ensembling) or "inpaint"
    #: (conditioned in the inference node, executed like replace); the inference node's ``seam`` must match.
    seam: str = "ensemble"
    reconnect_period: float = 2.0

    @property
    def period(self) -> float:
        return 1.0 / self.control_rate_hz

    def __post_init__(self) -> None:
        if not (self.control_rate_hz > 0.0):
            raise ValueError(f"control_rate_hz must be > 0, got {self.control_rate_hz}")
        if not (self.gripper_open_threshold < self.gripper_close_threshold):
            raise ValueError("gripper_open_threshold must be below gripper_close_threshold (hysteresis)")
        if len(self.home_joints) != 7:
            raise ValueError(f"home_joints needs 7 values, got {len(self.home_joints)}")
        if self.watchdog_action not in WATCHDOG_ACTIONS:
            raise ValueError(f"watchdog_action must be one of {WATCHDOG_ACTIONS}, got {self.watchdog_action!r}")
        if not (self.max_tracking_lead >= 0.0 and self.max_tracking_lead_rot >= 0.0):
            raise ValueError("max_tracking_lead and max_tracking_lead_rot must be >= 0")
        if not (0.0 < self.home_dynamics_factor <= 1.0):
            raise ValueError(f"home_dynamics_factor must be in (0, 1], got {self.home_dynamics_factor}")
        if self.source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {self.source!r}")
        if self.response not in RESPONSES:
            raise ValueError(f"response must be one of {RESPONSES}, got {self.response!r}")


class GripperLatch:
    """Hysteresis on the gripper action: close above ``close_above``, open below ``open_below``, otherwise
    keep the last state, so a policy output hovering near 0 does not chatter the fingers."""

    def __init__(self, close_above: float = 0.5, open_below: float = -0.5):
        self.close_above = float(close_above)
        self.open_below = float(open_below)
        self.closed: bool | None = None  # None until the first decisive action

    def update(self, value: float) -> bool | None:
        """Feed one gripper action; returns the desired state (True = closed) or None if still unknown."""
        if value > self.close_above:
            self.closed = True
        elif value < self.open_below:
            self.closed = False
        return self.closed


def _quat_angle(a: np.ndarray, b: np.ndarray) -> float:
    """Angle (rad) of the rotation between two xyzw quaternions."""
    a, b = quat_normalize(a), quat_normalize(b)
    d = quat_multiply(b, _quat_conjugate(a))
    return 2.0 * math.atan2(float(np.linalg.norm(d[:3])), abs(float(d[3])))


def lead_gated_target(
    target_pos: np.ndarray,
    target_quat: np.ndarray,
    new_pos: np.ndarray,
    new_quat: np.ndarray,
    ee_pos: np.ndarray,
    ee_quat: np.ndarray,
    max_lead: float,
    max_lead_rot: float,
) -> tuple[np.ndarray, np.ndarray, bool]:
    """The next target: ``new_*`` (the current target moved by one step), except that a step which would take
    the target further from an arm already more than ``max_lead`` metres (``max_lead_rot`` radians) behind it
    keeps the current position (orientation) instead.

    While the arm tracks its target within the lead a chunk's steps add up in full; beyond it only steps that
    bring the target back towards the arm (a reversal) are taken. By induction the target stays within
    lead + one step of the arm (as long as the arm moves towards its target).

    Args:
        target_pos, new_pos, ee_pos: ``[3]`` metres, base frame. target_quat, new_quat, ee_quat: ``[4]`` xyzw.
    Returns:
        ``(pos [3], quat [4] xyzw, held_back)``: held_back is True when either part was kept.
    """
    ee_pos = np.asarray(ee_pos, dtype=np.float64)
    lag = float(np.linalg.norm(np.asarray(target_pos) - ee_pos))
    hold_pos = lag > max_lead and float(np.linalg.norm(np.asarray(new_pos) - ee_pos)) > lag
    lag_rot = _quat_angle(target_quat, ee_quat)
    hold_rot = lag_rot > max_lead_rot and _quat_angle(new_quat, ee_quat) > lag_rot
    pos = np.asarray(target_pos if hold_pos else new_pos, dtype=np.float64)
    quat = np.asarray(target_quat if hold_rot else new_quat, dtype=np.float64)
    return pos, quat, hold_pos or hold_rot


def _quat_conjugate(q: np.ndarray) -> np.ndarray:
    return np.array([-q[0], -q[1], -q[2], q[3]])


class _Job:
    """Blocking arm work (connect, recovery, starting the home motion) on a thread of its own; the control
    tick polls :attr:`done` and takes the outcome with :meth:`result`."""

    def __init__(self, name: str, fn: Callable[[threading.Event], object]):
        self.name = name
        self.cancelled = threading.Event()  # set by stop/disable: the job must not start motion after it
        self._outcome: object = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(fn,), name=f"arm-{name}", daemon=True)
        self._thread.start()

    def _run(self, fn) -> None:
        try:
            self._outcome = fn(self.cancelled)
        except BaseException as e:  # noqa: BLE001 - handed to the control tick
            self._error = e

    @property
    def done(self) -> bool:
        return not self._thread.is_alive()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def result(self):
        if self._error is not None:
            raise self._error
        return self._outcome


@dataclass
class ControllerCounters:
    reflexes: int = 0
    reflex_recoveries: int = 0
    recovery_attempts: int = 0
    recovery_failures: int = 0
    connection_losses: int = 0
    chunks_ignored_disabled: int = 0
    active_stops: int = 0
    gripper_commands: int = 0
    homes: int = 0
    #: Cartesian motions sent to the arm for executed actions.
    motions_sent: int = 0
    #: executed zero-motion actions that kept the current target (no motion sent).
    targets_kept: int = 0
    #: steps not added to the target because the arm lagged more than max_tracking_lead behind it.
    steps_held_back: int = 0
    watchdog_brakes: int = 0
    #: response "robosuite": model steps cut to the envelope's per-step limits or kept inside the box / cone.
    model_steps_limited: int = 0
    #: times the controller disabled itself (reflex, connection loss, watchdog trip, clock jump).
    auto_disables: int = 0
    homes_refused: int = 0


class FrankaController:
    """Executes action chunks on an arm through the executor and envelope, with reflex recovery."""

    def __init__(self, arm, limits: SafetyLimits, config: ControllerConfig | None = None):
        """
        Args:
            arm: a :class:`~d2ppo_franka.arm.FrankyArm` (or anything with its methods).
        """
        self.arm = arm
        self.config = config or ControllerConfig()
        self.limits = limits
        tolerance = self.config.late_tolerance if self.config.late_tolerance > 0.0 else None
        self.envelope = SafetyEnvelope(limits)
        self.executor = ChunkExecutor(
            self.envelope, self.config.period, tolerance, source=self.config.source, seam=self.config.seam
        )
        self.gripper = GripperLatch(self.config.gripper_close_threshold, self.config.gripper_open_threshold)
        self.counters = ControllerCounters()
        self.enabled = bool(self.config.start_enabled)
        self.disabled_reason = "" if self.enabled else "not enabled yet (start_enabled: false)"
        self.faulted = False
        self.fault_message = ""
        self.homing = False
        self.state: ArmState | None = None
        self.last_command: Command = Command(HOLD, None, "waiting")
        #: ``[7]`` the action the latest tick actually sent (after the envelope and the tracking lead), else None.
        self.last_executed: np.ndarray | None = None
        self._target: tuple[np.ndarray, np.ndarray] | None = None  # last commanded (pos, quat)
        self._model: OscResponse | None = None  # response "robosuite": the emulated sim arm; its pose is the target
        self._model_due: float | None = None  # due time of the action the model last stepped for
        self._gripper_commanded: bool | None = None
        self._stopped = False  # an active stop was sent since the last move
        self._recovery_attempts = 0  # recover_from_errors() calls since the last enable
        self._last_connect_try = -math.inf
        self._job: _Job | None = None
        self._enable_after_job = False
        self._jumps_seen = 0  # the executor's clock_jumps_back as of the last enabled control tick
        self.last_error = ""
        self.watchdog_hold_latency: float | None = None
        self._last_step_at = 0.0
        self._homing_since = 0.0

    # -- inputs ------------------------------------------------------------------------------------------
    def submit_chunk(self, chunk: ActionChunk, now: float) -> int:
        """Hand a chunk to the executor; ignored (and counted) while disabled, homing, busy or faulted."""
        if not self.enabled or self.homing or self.faulted or self._job is not None:
            self.counters.chunks_ignored_disabled += 1
            return 0
        return self.executor.submit(chunk, now)

    def set_source(self, source: str) -> None:
        """Execute only ``source``'s chunks from now on ("policy" or "teleop"); pending actions are dropped."""
        if source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
        self.executor.set_source(source)
        self.config.source = source

    def set_enabled(self, enabled: bool) -> tuple[bool, str]:
        """Enable (the operator's action): recover a faulted robot first, then accept chunks. Disable: drop
        pending actions, interrupt a home motion, and actively hold still."""
        self.executor.reset()
        self.gripper.closed = self._gripper_commanded  # forget a gripper change not yet started
        if not enabled:
            self._disable("disabled by the operator")
            return True, "disabled: holding still, chunks ignored"
        if self._job is not None:
            if self._job.name == "recovery":
                self._enable_after_job = True
                return True, "recovering robot errors; enabled once recovery succeeds"
            return False, f"busy ({self._job.name}); try again when it has finished"
        if not self.arm.connected:
            return False, f"not connected: {self.last_error}"
        self._recovery_attempts = 0  # the operator's enable acknowledges earlier reflexes
        if self.faulted:
            self._enable_after_job = True
            self._start_recovery(attempts=1)
            return True, "recovering robot errors; enabled once recovery succeeds"
        self._set_enabled_now()
        return True, "enabled"

    def _set_enabled_now(self) -> None:
        self._jumps_seen = self.executor.counters["clock_jumps_back"]  # jumps before the enable are history
        self.faulted, self.fault_message = False, ""
        self.enabled = True
        self.disabled_reason = ""
        self._target = None
        self.executor.reset()

    def stop(self) -> tuple[bool, str]:
        """Stop now and disable (until /controller/enable true). Served within one control period: while a
        connect or recovery runs on the worker nothing moves and whatever the job would start is cancelled."""
        if self._job is not None and self._job.done:
            self._finish_job(self._last_step_at)  # a home motion it started is stopped below, now
        self.homing = False  # the stop below interrupts a home motion too
        self._disable("stopped by the operator", active_hold=False)
        self.counters.active_stops += 1
        if self._job is not None:
            return True, f"stopped ({self._job.name} in progress: it will start no motion); call enable to resume"
        if not self.arm.connected:
            return True, "stopped (not connected)"
        try:
            self.arm.stop()
        except ArmError as e:
            return False, str(e)
        self._target = None
        self._stopped = True
        return True, "stopped; call enable to resume"

    def home(self) -> tuple[bool, str]:
        """Start a joint motion to ``home_joints``: only when enabled and not faulted, with a target inside the
        joint limits and the envelope (box, fingertips, orientation cone); chunks are ignored until it ends;
        disable and stop interrupt it."""
        refusal = None
        if not self.arm.connected:
            refusal = "not connected"
        elif self.faulted:
            refusal = f"faulted ({self.fault_message}); enable first"
        elif not self.enabled:
            refusal = f"disabled ({self.disabled_reason}); enable first"
        elif self._job is not None or self.homing:
            refusal = f"busy ({self._job.name if self._job else 'homing'})"
        else:
            refusal = self.check_home_target()
        if refusal is not None:
            self.counters.homes_refused += 1
            return False, f"home refused: {refusal}"
        self.executor.reset()
        self._target = None
        joints = np.array(self.config.home_joints)
        factor = self.config.home_dynamics_factor

        def start_home(cancelled: threading.Event) -> bool:
            # stops the Cartesian motion first (blocks briefly), then starts the joint motion unless cancelled
            return bool(self.arm.move_joints(joints, factor, cancelled=cancelled))

        self.homing = True
        self._homing_since = self._last_step_at
        self._job = _Job("home", start_home)
        self.counters.homes += 1
        return True, "homing started"

    def check_home_target(self) -> str | None:
        """Why ``home_joints`` may not be driven to (joint limits, TCP or fingertips outside the box, tool
        outside the orientation cone), or None when it may."""
        q = np.asarray(self.config.home_joints, dtype=np.float64)
        outside = np.flatnonzero((q < JOINT_LIMITS_LOW) | (q > JOINT_LIMITS_HIGH))
        if outside.size:
            return f"home_joints outside the joint limits at joint(s) {[int(i) + 1 for i in outside]}"
        pos, quat = forward_kinematics(q)
        problem = self.envelope.pose_problem(pos, quat)
        if problem:
            return f"home pose {np.round(pos, 3).tolist()} {problem}"
        if self.state is not None:
            # the joint motion's sweep, sampled: the TCP and fingertips stay inside the box on the way too
            q0 = np.asarray(self.state.joint_positions, dtype=np.float64)
            for s in np.linspace(0.0, 1.0, HOME_SWEEP_SAMPLES):
                p, r = forward_kinematics(q0 + s * (q - q0))
                problem = self.envelope.pose_problem(p, r, cone=False)
                if problem:
                    return f"the way home passes {np.round(p, 3).tolist()}, which {problem}"
        return None

    # -- the control tick --------------------------------------------------------------------------------
    def step(self, now: float) -> Command:
        """One control tick at ``now`` (seconds, the clock chunk stamps use)."""
        self._last_step_at = now
        self.last_executed = None
        if self._job is not None:
            if not self._job.done:
                return self._hold(self._job.name)
            self._finish_job(now)
        if not self.arm.connected:
            self._try_connect(now)
            return self._hold("disconnected")
        if self._job is not None:  # _finish_job may have started the next job
            return self._hold(self._job.name)
        try:
            moving = self.arm.poll()
            self.state = self.arm.read_state()
        except ReflexError as e:
            self._handle_reflex(e, now)
            return self._hold("reflex")
        except ConnectionLost as e:
            self._handle_connection_lost(e)
            return self._hold("disconnected")

        if self.homing:
            # poll() is False for a moment before an asynchronous motion starts: done means "arrived".
            err = float(np.abs(self.state.joint_positions - np.array(self.config.home_joints)).max())
            if moving or (err > HOME_TOLERANCE and now - self._homing_since < HOME_START_GRACE):
                return self._hold("homing")
            self.homing = False
            if err > HOME_TOLERANCE:
                self.last_error = f"home motion ended {err:.3f} rad from home_joints"
        if self.faulted:
            return self._hold("faulted")
        if not self.enabled:
            return self._hold("disabled")

        ref_pos, ref_quat = self._reference(self.state)
        trips = self.executor.counters["watchdog_trips"]
        cmd = self.executor.tick(now, ref_pos, ref_quat)
        self.last_command = cmd
        # a backward jump noticed in submit (and cleared there by a chunk on the new time line) counts too
        jumped = self.executor.counters["clock_jumps_back"] != self._jumps_seen
        self._jumps_seen = self.executor.counters["clock_jumps_back"]
        tripped = self.executor.counters["watchdog_trips"] != trips or jumped
        try:
            if tripped:
                self.watchdog_hold_latency = now - (self._watchdog_deadline() or now)
                if self.config.watchdog_action == "brake":
                    self._brake(self.state)
                self._disable(
                    "clock jumped backwards" if jumped else "watchdog: no valid action chunk in time", active_hold=False
                )
                return cmd
            if cmd.is_move:
                self.last_executed = self._move(cmd, ref_pos, ref_quat)
                self.gripper.update(float(cmd.action[6]))
            self._service_gripper()
        except ReflexError as e:
            self._handle_reflex(e, now)
            return self._hold("reflex")
        except ConnectionLost as e:
            self._handle_connection_lost(e)
            return self._hold("disconnected")
        return cmd

    def _move(self, cmd: Command, ref_pos: np.ndarray, ref_quat: np.ndarray) -> np.ndarray:
        """Send one accepted action; returns the action actually sent (the tracking lead may hold a step back)."""
        if self.config.response == "robosuite":
            return self._move_with_model(cmd, ref_pos, ref_quat)
        executed = np.array(cmd.action, dtype=np.float64)
        if not np.any(cmd.action[:6]):
            # zero motion: the running motion holds the target (without a target of ours the arm holds where
            # it is; a zero-length motion from rest is where franky's planner failed)
            self.counters.targets_kept += 1
            return executed
        target_pos, target_quat = delta_to_target(
            cmd.action, ref_pos, ref_quat, self.limits.pos_scale, self.limits.rot_scale
        )
        held_back = False
        if self._target is not None:
            target_pos, target_quat, held_back = lead_gated_target(
                *self._target,
                target_pos,
                target_quat,
                self.state.ee_pos,
                self.state.ee_quat,
                self.config.max_tracking_lead,
                self.config.max_tracking_lead_rot,
            )
        self.counters.steps_held_back += int(held_back)
        if held_back:
            executed[:6] = target_to_delta(
                ref_pos, ref_quat, target_pos, target_quat, self.limits.pos_scale, self.limits.rot_scale
            )
        if self._target is None or not (
            np.array_equal(target_pos, self._target[0]) and np.array_equal(target_quat, self._target[1])
        ):
            self.arm.move_to(target_pos, target_quat)
            self.counters.motions_sent += 1
            self._target = (target_pos, target_quat)
            self._stopped = False
        return executed

    def _move_with_model(self, cmd: Command, ref_pos: np.ndarray, ref_quat: np.ndarray) -> np.ndarray:
        """``response: robosuite``: step the response model with the accepted action and send its pose.

        The envelope checked the action against the reference (= the model pose): the goal ``ref + delta`` is inside
        the limits. The model pose lags that goal (robosuite's arm does); its step is bounded by the envelope's
        per-step limits and must not carry the target out of the box or cone (momentum after a reversal could): such
        a step is cut and the model stopped (``model_steps_limited``). Zero-motion actions let the model coast to
        rest (its velocity decays) and then keep the target and send nothing, like ``direct``.
        """
        executed = np.array(cmd.action, dtype=np.float64)
        model = self._synced_model(ref_pos, ref_quat, cmd.due)
        zero = not np.any(cmd.action[:6])
        if zero and model.at_rest:
            self.counters.targets_kept += 1
            return executed
        a = np.clip(executed[:6], -1.0, 1.0)
        new_pos, new_quat = model.step(a[:3] * self.limits.pos_scale, a[3:6] * self.limits.rot_scale)
        new_pos, new_quat = self._bounded_model_step(model, ref_pos, ref_quat, new_pos, new_quat)
        if zero and self._target is not None and self._near(new_pos, new_quat, *self._target):
            model.reset(*self._target)  # the coast has ended: at rest on the target already sent
            self.counters.targets_kept += 1
            return executed
        if self._target is not None:
            gated_pos, gated_quat, held_back = lead_gated_target(
                *self._target,
                new_pos,
                new_quat,
                self.state.ee_pos,
                self.state.ee_quat,
                self.config.max_tracking_lead,
                self.config.max_tracking_lead_rot,
            )
            if held_back:  # the model waits, at rest, where the target stays
                self.counters.steps_held_back += 1
                if not np.array_equal(gated_pos, new_pos):
                    model.hold_position(gated_pos)
                    executed[:3] = 0.0
                if not np.array_equal(gated_quat, new_quat):
                    model.hold_orientation(gated_quat)
                    executed[3:6] = 0.0
                new_pos, new_quat = model.pos.copy(), model.quat.copy()
        if self._target is None or not (
            np.array_equal(new_pos, self._target[0]) and np.array_equal(new_quat, self._target[1])
        ):
            self.arm.move_to(new_pos, new_quat)
            self.counters.motions_sent += 1
            self._target = (new_pos, new_quat)
            self._stopped = False
        return executed

    def _synced_model(self, ref_pos: np.ndarray, ref_quat: np.ndarray, due: float | None) -> OscResponse:
        """The response model, at rest on the reference whenever the target was set elsewhere (enable, stop,
        brake, home: the model pose is the target only while this path sets it), and stopped after a pause of more
        than MODEL_MAX_GAP periods without an action (the arm settled on the target meanwhile). A slot or two
        skipped (a late chunk joined at its current slot, a tick lost to a busy machine) keeps it moving: robosuite's
        arm has no pauses, and restarting from rest after every lost slot would slow the arm down."""
        m = self._model
        if m is None:
            m = self._model = OscResponse(ref_pos, ref_quat, OscGains())
        elif self._target is None or not (
            np.array_equal(m.pos, self._target[0]) and np.array_equal(m.quat, self._target[1])
        ):
            m.reset(ref_pos, ref_quat)
        elif due is None or self._model_due is None or due - self._model_due > MODEL_MAX_GAP * self.config.period:
            m.stop()
        self._model_due = due
        return m

    def _bounded_model_step(
        self, model: OscResponse, ref_pos: np.ndarray, ref_quat: np.ndarray, pos: np.ndarray, quat: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """The model's new pose, no further from the reference than one step the envelope accepts
        (``max_translation_per_step``, ``max_velocity`` · period; rotation alike), and inside the box and cone
        unless the reference itself is outside. A cut step stops the model there."""
        lim = self.limits
        period = self.config.period
        max_len = min(lim.max_translation_per_step, lim.max_velocity * period)
        max_rot = min(lim.max_rotation_per_step, lim.max_angular_velocity * period)
        limited = False
        step = pos - ref_pos
        length = float(np.linalg.norm(step))
        if length > max_len:
            pos, limited = ref_pos + step * (max_len / length), True
        rot = quat_to_axis_angle(quat_multiply(quat, _quat_conjugate(quat_normalize(ref_quat))))
        angle = float(np.linalg.norm(rot))
        if angle > max_rot:
            quat = quat_normalize(quat_multiply(axis_angle_to_quat(rot * (max_rot / angle)), quat_normalize(ref_quat)))
            limited = True
        if self.envelope.pose_problem(pos, quat) and (
            not self.envelope.pose_problem(ref_pos, ref_quat)
            or self.envelope.pose_violation(pos, quat) > self.envelope.pose_violation(ref_pos, ref_quat) + 1e-12
        ):
            # into the envelope's box / cone from inside, or further out from outside: the step is cut
            pos, quat, limited = np.array(ref_pos, dtype=np.float64), np.array(ref_quat, dtype=np.float64), True
        if limited:
            self.counters.model_steps_limited += 1
            model.reset(pos, quat)
            pos, quat = model.pos.copy(), model.quat.copy()
        # the invariant the envelope's per-step limits rely on
        assert float(np.linalg.norm(pos - ref_pos)) <= max_len * (1.0 + 1e-9) + 1e-12
        assert _quat_angle(quat, ref_quat) <= max_rot * (1.0 + 1e-6) + 1e-9
        return pos, quat

    @staticmethod
    def _near(pos: np.ndarray, quat: np.ndarray, other_pos: np.ndarray, other_quat: np.ndarray) -> bool:
        return (
            float(np.linalg.norm(pos - other_pos)) <= MODEL_REST_TOLERANCE
            and _quat_angle(quat, other_quat) <= MODEL_REST_TOLERANCE_ROT
        )

    # -- helpers -----------------------------------------------------------------------------------------
    def _hold(self, reason: str) -> Command:
        self.last_command = Command(HOLD, None, reason)
        return self.last_command

    def _disable(self, reason: str, active_hold: bool = True) -> None:
        """Stop executing chunks until an operator enables again; ``reason`` goes to /diagnostics."""
        was_enabled = self.enabled
        self.enabled = False
        self._enable_after_job = False
        if self._job is not None:
            self._job.cancelled.set()
        self.executor.reset()
        self.disabled_reason = reason
        if was_enabled and "operator" not in reason:
            self.counters.auto_disables += 1
        if self.homing and self._job is None and self.arm.connected:
            self.homing = False
            try:
                self.arm.stop()  # interrupt the home motion
            except ArmError:
                pass  # the next tick's poll reports and handles it
            self._target = None
            self._stopped = True
        elif active_hold:
            self._active_stop()

    def _watchdog_deadline(self) -> float | None:
        last = self.executor.last_valid_at
        return None if last is None else last + self.limits.watchdog_timeout

    def _reference(self, state: ArmState) -> tuple[np.ndarray, np.ndarray]:
        """The pose the next delta applies to: the last commanded target, else the measured pose."""
        return self._target if self._target is not None else (state.ee_pos, state.ee_quat)

    def _at_target(self, state: ArmState) -> bool:
        """Whether the arm stands on its commanded target (within AT_TARGET_TOLERANCE); False without one."""
        if self._target is None:
            return False
        pos, quat = self._target
        return (
            float(np.linalg.norm(pos - state.ee_pos)) <= AT_TARGET_TOLERANCE
            and _quat_angle(quat, state.ee_quat) <= AT_TARGET_TOLERANCE_ROT
        )

    def _brake(self, state: ArmState) -> None:
        """Watchdog brake: hold at the pose measured now. franky's motion generator decelerates within its
        dynamics limits (overshooting by its braking distance) and returns to this pose; the next chunk's
        deltas apply to it. Not sent when no target of ours is set (nothing of ours moves the arm) or the arm
        already stands on it."""
        if self._target is None or self._at_target(state):
            return
        pos, quat = state.ee_pos.copy(), state.ee_quat.copy()
        self.arm.move_to(pos, quat)
        self._target = (pos, quat)
        self.counters.watchdog_brakes += 1

    def _active_stop(self) -> None:
        """Hold still where the arm is now: a holding motion to the measured pose (stays in Cartesian
        control, no preemption error, no sag). Sent once per stop, unless the arm already stands on its
        target (the running motion holds it there)."""
        if self._stopped or not self.arm.connected or self._job is not None:
            return
        try:
            state = self.arm.read_state()
            if state.in_motion and not self._at_target(state):
                self.arm.move_to(state.ee_pos, state.ee_quat)
        except ArmError:
            return  # the next tick's poll reports and handles it
        self._target = None
        self._stopped = True
        self.counters.active_stops += 1

    def _service_gripper(self) -> None:
        """Bring the gripper to the latch's state; a change requested while the previous gripper command
        still runs is started on a later tick (franky blocks on overlapping gripper commands)."""
        desired = self.gripper.closed
        if desired is None or desired == self._gripper_commanded:
            return
        if self.arm.gripper_command(close=desired):  # False while the previous command still runs
            self._gripper_commanded = desired
            self.counters.gripper_commands += 1

    def _handle_reflex(self, error: ReflexError, now: float) -> None:
        """Count the reflex, disable, and recover on the worker within the per-enable attempt budget
        (``safety.max_reflex_retries``); beyond it the fault latches until the operator's enable."""
        self.counters.reflexes += 1
        self.last_error = str(error)
        self._target = None
        self._stopped = True
        self._disable(f"reflex: {error}", active_hold=False)
        self.homing = False
        budget = self.limits.max_reflex_retries - self._recovery_attempts
        if budget <= 0:
            self.counters.recovery_failures += 1
            self.faulted = True
            self.fault_message = (
                f"{self._recovery_attempts} recovery attempt(s) since the last enable "
                f"(max_reflex_retries {self.limits.max_reflex_retries}); last: {error}"
            )
            return
        self._start_recovery(budget)

    def _start_recovery(self, attempts: int) -> None:
        def recover(cancelled: threading.Event) -> tuple[bool, int]:
            used = 0
            for _ in range(attempts):
                used += 1
                if self.arm.recover():
                    return True, used
            return False, used

        self._job = _Job("recovery", recover)

    def _finish_job(self, now: float) -> None:
        job, self._job = self._job, None
        try:
            outcome = job.result()
        except ConnectionLost as e:
            self._handle_connection_lost(e)
            return
        except ArmError as e:
            self.last_error = str(e)
            if job.name == "home":
                self.homing = False
                self._disable(f"home motion failed: {e}", active_hold=False)
            elif job.name == "recovery":
                self.faulted, self.fault_message = True, f"recovery failed: {e}"
            return
        if job.name == "connect":
            self.executor.reset()
            self._target = None
            self._gripper_commanded = None
        elif job.name == "home":
            if not outcome or job.cancelled.is_set():
                self.homing = False
                if outcome:  # the motion started before the cancel was seen: stop it now
                    try:
                        self.arm.stop()
                    except ArmError:
                        pass
        elif job.name == "recovery":
            recovered, used = outcome
            self._recovery_attempts += used
            self.counters.recovery_attempts += used
            if recovered:
                self.counters.reflex_recoveries += 1
                if self._enable_after_job and not job.cancelled.is_set():
                    self._set_enabled_now()
                elif self.faulted:
                    self.faulted, self.fault_message = False, ""
            else:
                self.counters.recovery_failures += 1
                self.faulted = True
                self.fault_message = f"recovery failed after {used} attempt(s): {self.last_error}"
            self._enable_after_job = False

    def _handle_connection_lost(self, error: ConnectionLost) -> None:
        self.counters.connection_losses += 1
        self.last_error = str(error)
        self._target = None
        self.homing = False
        self._disable(f"connection lost: {error}", active_hold=False)
        self.arm.disconnect()

    def _try_connect(self, now: float) -> None:
        if now - self._last_connect_try < self.config.reconnect_period:
            return
        self._last_connect_try = now

        def connect(cancelled: threading.Event) -> None:
            self.arm.connect()

        self._job = _Job("connect", connect)

    @property
    def busy(self) -> bool:
        """True while the worker runs a job (connect, recovery, home start): nobody else may use the arm."""
        return self._job is not None and not self._job.done

    def wait_idle(self, timeout: float = 10.0) -> None:
        """Wait for the worker's job to end (for shutdown and tests)."""
        if self._job is not None:
            self._job.join(timeout)

    # -- reporting ---------------------------------------------------------------------------------------
    def diagnostics(self) -> tuple[int, str, dict[str, int | float | str]]:
        """(level 0 OK / 1 WARN / 2 ERROR, message, flat values) for /diagnostics."""
        values: dict[str, int | float | str] = dict(self.executor.stats())
        values.update(dataclasses.asdict(self.counters))
        values.update(
            watchdog_action=self.config.watchdog_action,
            connected=int(self.arm.connected),
            enabled=int(self.enabled),
            disabled_reason=self.disabled_reason,
            faulted=int(self.faulted),
            fault_message=self.fault_message,
            homing=int(self.homing),
            busy=self._job.name if self._job is not None else "",
            recovery_attempts_since_enable=self._recovery_attempts,
            last_command=self.last_command.kind,
            last_reason=self.last_command.reason,
            watchdog_hold_latency_s=-1.0 if self.watchdog_hold_latency is None else self.watchdog_hold_latency,
            last_error=self.last_error,
        )
        if self.state is not None:
            values.update(
                ee_x=float(self.state.ee_pos[0]), ee_y=float(self.state.ee_pos[1]), ee_z=float(self.state.ee_pos[2])
            )
        if not self.arm.connected:
            busy = " (connecting)" if self._job is not None and self._job.name == "connect" else ""
            return 2, f"disconnected from {getattr(self.arm, 'robot_ip', '?')}{busy}: {self.last_error}", values
        if self.faulted:
            return 2, f"faulted, holding: {self.fault_message}", values
        if self._job is not None:
            return 1, f"{self._job.name} in progress, holding", values
        if self.homing:
            return 0, "homing", values
        if not self.enabled:
            return 1, f"disabled, holding still: {self.disabled_reason}", values
        return 0, "running", values
