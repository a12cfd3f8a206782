"""robosuite sim node: the real drivers' topics from a simulated Panda. ROS plumbing only.

Episode logic is ``LockstepSim``; the env is ``RobosuiteSim``. The node drives its own loop (no timers).
Two modes:

* lock-step (default): publish /clock and the observation at sim time t, wait for the due chunk, step,
  repeat — the training success rate, independent of how fast anything runs;
* real-time (``realtime: true``): physics steps at the control rate on the wall clock whether or not a
  chunk arrived (holding when nothing is due), robot state is published at once, and each camera frame,
  stamped with its capture time, is delivered like a driver's with injectable latency, jitter and loss
  (``camera_latency_ms``, ``camera_jitter_ms``, ``camera_drop``; :mod:`d2ppo_sim.realtime`). The inference
  node runs unmodified in its robot configuration: the robot's graph with the arm swapped.

Parameters:
  policy (str)            policy package: task, env_args, render profile, cameras, image size, act_steps
  task (str)              used when no policy is given (cameras from camera_names, image_size)
  camera_names (str[]), image_size (int), act_steps (int)   only without a policy
  episodes (int)          0 = run until stopped; otherwise exit after that many (results in results_path)
  seed (int), horizon (int, control ticks; 0 = the task's evaluation horizon, as d2ppo.evaluate uses)
  replan (str)            "chunk" | "tick": must match the inference node's (when to wait for a chunk)
  video_path (str), video_episodes (int), video_camera (str), video_size (int)
  results_path (str)      JSON summary written after every episode
  lockstep_timeout (float)   wall seconds to wait for a due chunk before stepping on (holding)
  startup_timeout (float)    wall seconds to wait for the very first chunk (inference start-up)
  republish_period (float)   wall seconds between re-sends of an observation while waiting
  realtime (bool)         real-time mode (above); camera_latency_ms, camera_jitter_ms (float >= 0),
                          camera_drop (probability in [0, 1)) shape camera delivery in that mode
  source (str), seam (str)   the executor's chunk source and seam strategy (as on the franka node)
  safety.* (from launch/safety.yaml, overridden by launch/sim.yaml): SafetyLimits fields
"""

from __future__ import annotations

import json
import queue
import sys
import threading
import time
from pathlib import Path

import numpy as np
import rclpy
from d2ppo_control.chunk import ActionChunk
from d2ppo_control.executor import ChunkExecutor
from d2ppo_control.ros_conversions import (
    ChunkMessageError,
    chunk_from_msg,
    diagnostic_status,
    executed_msg,
    sec_to_stamp,
)
from d2ppo_control.ros_params import refuse_undeclared_parameters
from d2ppo_control.safety import SafetyEnvelope, SafetyLimits
from d2ppo_inference.policy_runner import EE_POSE_INPUT, JOINT_STATES_INPUT, camera_input
from d2ppo_inference.ros_messages import camera_frame_id, ee_pose_msg, image_msg, joint_state_msg
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from rclpy.subscription import MessageInfo
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Bool
from std_srvs.srv import SetBool, Trigger
from trajectory_msgs.msg import JointTrajectory

from d2ppo_sim.lockstep import LockstepSim
from d2ppo_sim.realtime import CameraDelay, CameraFaults
from d2ppo_sim.robosuite_sim import DEFAULT_CAMERAS, RobosuiteSim, SimTask
from d2ppo_sim.video import EpisodeVideo


class StartupTimeout(RuntimeError):
    pass


class SimNode(Node):
    def __init__(self):
        super().__init__("sim")
        declare = self.declare_parameter
        declare("policy", "")
        declare("task", "Lift")
        declare("camera_names", list(DEFAULT_CAMERAS))
        declare("image_size", 96)
        declare("act_steps", 4)
        declare("episodes", 0)
        declare("seed", 0)
        declare("horizon", 0)
        declare("replan", "chunk")
        declare("video_path", "")
        declare("video_episodes", 1)
        declare("video_camera", "agentview")
        declare("video_size", 256)
        declare("results_path", "")
        declare("lockstep_timeout", 2.0)
        declare("startup_timeout", 120.0)
        declare("republish_period", 0.5)
        declare("source", "policy")  # whose chunks run ("policy" | "teleop"; chunk header.frame_id)
        declare("seam", "replace")  # replace | ensemble | inpaint (see d2ppo_control.executor)
        declare("realtime", False)
        declare("camera_latency_ms", 0.0)
        declare("camera_jitter_ms", 0.0)
        declare("camera_drop", 0.0)
        defaults = SafetyLimits().to_dict()
        for name, value in defaults.items():
            declare(f"safety.{name}", list(value) if isinstance(value, tuple) else value)
        refuse_undeclared_parameters(self)  # before loading the policy and building the sim
        p = lambda name: self.get_parameter(name).value  # noqa: E731

        limits = SafetyLimits.from_dict({name: p(f"safety.{name}") for name in defaults})
        self.realtime = bool(p("realtime"))
        self.camera_faults = CameraFaults(
            float(p("camera_latency_ms")), float(p("camera_jitter_ms")), float(p("camera_drop"))
        )  # ValueError (a clear message) before the sim is built
        if p("policy"):
            from d2ppo.package import load_policy

            policy = load_policy(p("policy"))
            task, act_steps = SimTask.from_policy(policy), policy.act_steps
        else:
            task = SimTask(task=p("task"), camera_names=tuple(p("camera_names")), image_size=p("image_size"))
            act_steps = p("act_steps")
        if p("replan") not in ("chunk", "tick"):
            raise ValueError(f"parameter 'replan' must be 'chunk' or 'tick', got {p('replan')!r}")
        self.episodes = int(p("episodes"))
        self.lockstep_timeout = float(p("lockstep_timeout"))
        self.startup_timeout = float(p("startup_timeout"))
        self.republish_period = float(p("republish_period"))
        self.results_path = p("results_path")
        self.video_path, self.video_episodes = p("video_path"), int(p("video_episodes"))
        self.video_camera, self.video_size = p("video_camera"), int(p("video_size"))

        from d2ppo.evaluate import DEFAULT_HORIZON

        horizon = int(p("horizon")) or DEFAULT_HORIZON.get(task.task, 400)
        self.get_logger().info(
            f"building {task.task} (cameras {list(task.camera_names)}, {task.image_size}px, "
            f"render {task.render_profile}), seed {p('seed')}, horizon {horizon}"
        )
        sim = RobosuiteSim(task, seed=int(p("seed")))
        self.lock = LockstepSim(
            sim,
            ChunkExecutor(SafetyEnvelope(limits), sim.period, source=p("source"), seam=p("seam")),
            replan_every=act_steps if p("replan") == "chunk" else 1,
            horizon=horizon,
        )
        self.camera_names = task.camera_names
        self.camera_delay = CameraDelay(self.camera_faults, seed=int(p("seed")))
        self.chunks_rejected = 0
        self._reset_requested = False
        self._video: EpisodeVideo | None = None

        # lock-step: no image may be lost; real time: like a camera driver (the robot profile's inference node
        # subscribes best effort, which matches either)
        reliable = QoSProfile(depth=2, reliability=ReliabilityPolicy.RELIABLE)
        image_qos = QoSProfile(depth=2, reliability=ReliabilityPolicy.BEST_EFFORT) if self.realtime else reliable
        if not self.realtime:
            self.clock_pub = self.create_publisher(Clock, "/clock", 10)
        self.image_pubs = {cam: self.create_publisher(Image, camera_input(cam), image_qos) for cam in task.camera_names}
        self.joint_pub = self.create_publisher(JointState, JOINT_STATES_INPUT, 10)
        self.ee_pub = self.create_publisher(PoseStamped, EE_POSE_INPUT, 10)
        # Transient-local: a monitor that subscribes late still receives every episode's outcome.
        results_qos = QoSProfile(depth=100, durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.success_pub = self.create_publisher(Bool, "sim/success", results_qos)
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        if self.realtime:
            # Chunks are received on a thread of their own, stamped with their true arrival time: the physics
            # step blocks this node's loop for ~30 ms, and a chunk waiting that long would be measured (and
            # executed) late, as no robot controller would. The loop submits them before each tick.
            self._inbox: queue.SimpleQueue = queue.SimpleQueue()
            self._rx_node = rclpy.create_node(f"{self.get_name()}_chunk_rx", namespace=self.get_namespace())
            self.chunk_sub = self._rx_node.create_subscription(
                JointTrajectory, "policy/action_chunk", self._receive_chunk, 10
            )
            self._rx_executor = SingleThreadedExecutor()
            self._rx_executor.add_node(self._rx_node)
            threading.Thread(target=self._rx_executor.spin, name="chunk-rx", daemon=True).start()
        else:
            self.chunk_sub = self.create_subscription(JointTrajectory, "policy/action_chunk", self._on_chunk, 10)
        self.executed_pub = self.create_publisher(JointTrajectory, "controller/executed", 10)
        self.create_service(SetBool, "controller/enable", self._on_enable)
        self.create_service(Trigger, "sim/reset", self._on_reset)
        self._ros_executor = SingleThreadedExecutor()
        self._ros_executor.add_node(self)

    # --- callbacks ------------------------------------------------------------------------------
    def _parse_chunk(self, msg: JointTrajectory) -> ActionChunk | None:
        """The chunk in a message, or None (counted, logged) for a malformed one."""
        try:
            return chunk_from_msg(msg, default_period=self.lock.period)
        except ChunkMessageError as e:
            self.chunks_rejected += 1
            self.get_logger().warning(f"rejected action chunk: {e}", throttle_duration_sec=5.0)
            return None

    def _on_chunk(self, msg: JointTrajectory) -> None:
        chunk = self._parse_chunk(msg)
        if chunk is not None:
            self.lock.submit(chunk)

    def _receive_chunk(self, msg: JointTrajectory, info: MessageInfo) -> None:
        """Real-time mode, on the receiving thread: note the arrival time (the middleware's receive stamp, on
        the system clock, when it has one: unaffected by this process's GIL); the loop submits it."""
        received = info.get("received_timestamp", 0) if info else 0
        self._inbox.put((received * 1e-9 if received > 0 else self._wall(), msg))

    def _submit_received(self) -> None:
        """Real-time mode: hand the chunks received so far to the executor, each at its arrival time."""
        while True:
            try:
                arrival, msg = self._inbox.get_nowait()
            except queue.Empty:
                return
            chunk = self._parse_chunk(msg)
            if chunk is None:
                continue
            self._chunks_seen += 1
            self._chunk_latency.append(arrival - chunk.stamp)
            last = self.lock.executor.last_tick
            self.lock.t = arrival if last is None else max(arrival, last)  # the executor's clock never runs back
            self.lock.submit(chunk)

    def _on_enable(self, request: SetBool.Request, response: SetBool.Response) -> SetBool.Response:
        self.lock.set_enabled(bool(request.data))
        response.success, response.message = True, "enabled" if request.data else "disabled (holding)"
        self.get_logger().info(f"controller {response.message}")
        return response

    def _on_reset(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        self._reset_requested = True
        response.success, response.message = True, f"episode {self.lock.episode} ends after this tick"
        return response

    # --- publishing -----------------------------------------------------------------------------
    def _publish_observation(self) -> None:
        t = self.lock.t
        obs = self.lock.observation()
        clock = Clock()
        clock.clock = sec_to_stamp(t)
        self.clock_pub.publish(clock)
        for cam in self.camera_names:
            self.image_pubs[cam].publish(image_msg(obs.images[cam], t, camera_frame_id(cam)))
        self.joint_pub.publish(joint_state_msg(obs.arm_positions, obs.fingers, t, obs.arm_velocities))
        self.ee_pub.publish(ee_pose_msg(obs.ee_pos, obs.ee_quat, t))

    # --- real-time mode ---------------------------------------------------------------------------
    def _wall(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _publish_state(self, t: float, obs) -> None:
        self.joint_pub.publish(joint_state_msg(obs.arm_positions, obs.fingers, t, obs.arm_velocities))
        self.ee_pub.publish(ee_pose_msg(obs.ee_pos, obs.ee_quat, t))

    def _capture(self, t: float, obs) -> None:
        for cam in self.camera_names:
            self.camera_delay.push(cam, t, obs.images[cam])

    def _deliver_frames(self) -> None:
        for cam, t, image in self.camera_delay.due(self._wall()):
            self.image_pubs[cam].publish(image_msg(image, t, camera_frame_id(cam)))

    def _spin_until(self, deadline: float) -> None:
        """Handle chunks and deliver due frames until ``deadline`` (wall seconds on the node clock)."""
        while rclpy.ok():
            now = self._wall()
            if now >= deadline:
                return
            self._deliver_frames()
            self._submit_received()
            nxt = self.camera_delay.next_release()
            wait = deadline - now if nxt is None else min(deadline, nxt) - now
            self._ros_executor.spin_once(timeout_sec=max(0.0, min(wait, 0.002)))

    def run_realtime(self) -> int:
        """Physics at the control rate on the wall clock; holds when no action is due."""
        lock = self.lock
        period = lock.period
        last_diag = 0.0
        self._chunks_seen = 0
        self._chunk_latency: list[float] = []
        # Before the first chunk (torch import + policy load) the arm stands, observed like a robot: the
        # episode clock starts with the policy's first chunk.
        deadline = time.monotonic() + self.startup_timeout
        next_tick = self._wall()
        while rclpy.ok() and self._chunks_seen == 0:
            if time.monotonic() > deadline:
                raise StartupTimeout(
                    f"no action chunk within startup_timeout={self.startup_timeout:g} s: is the inference "
                    "node running with the same ROS_DOMAIN_ID, policy and namespace?"
                )
            t = self._wall()
            obs = lock.observation()
            self._publish_state(t, obs)
            self._capture(t, obs)
            next_tick += period
            self._spin_until(next_tick)
        lock.restart_episode()  # the chunks so far were computed while the arm stood before the episode
        self._chunk_latency = []
        self.camera_delay.clear()
        next_tick = self._wall()
        late_ticks = 0
        while rclpy.ok() and (self.episodes <= 0 or len(lock.results) < self.episodes):
            self._submit_received()  # before sampling the tick time: a chunk is never submitted after its tick
            now = self._wall()
            if now - next_tick > period:
                late_ticks += 1  # the loop fell behind (a slow render): run this tick now, re-anchor the grid
                next_tick = now
            self._submit_received()
            lock.t = now
            cmd = lock.step()  # executor tick at `now` + one physics step (holds when nothing is due)
            if cmd.is_move:
                self.executed_pub.publish(executed_msg(cmd.action, now, cmd.source))
            t_obs = self._wall()
            obs = lock.observation()
            self._publish_state(t_obs, obs)
            self._capture(t_obs, obs)
            self._deliver_frames()
            if time.monotonic() - last_diag > 1.0:
                self._publish_diagnostics(late_ticks=late_ticks)
                last_diag = time.monotonic()
            if lock.episode_done or self._reset_requested:
                lat = np.array(self._chunk_latency) * 1e3
                self._chunk_latency = []
                self._end_episode(
                    obs_to_chunk_ms={
                        "p50": round(float(np.percentile(lat, 50)), 2) if lat.size else None,
                        "p99": round(float(np.percentile(lat, 99)), 2) if lat.size else None,
                        "max": round(float(lat.max()), 2) if lat.size else None,
                        "n": int(lat.size),
                    }
                )
                self.camera_delay.clear()
                # no frames for a while: the inference node starts a fresh observation history
                gap_end = self._wall() + lock.episode_gap
                while rclpy.ok() and self._wall() < gap_end:
                    self._ros_executor.spin_once(timeout_sec=0.01)
                while not self._inbox.empty():  # chunks computed from the last episode's frames
                    self._inbox.get_nowait()
                next_tick = self._wall()
                continue
            next_tick += period
            self._spin_until(next_tick)
        self._publish_diagnostics("finished", late_ticks=late_ticks)
        return 0

    def _publish_diagnostics(self, message: str = "running", late_ticks: int | None = None) -> None:
        lock = self.lock
        summary = lock.summary()
        values = {
            "episode": lock.episode,
            "step": lock.step_count,
            "sim_time_s": round(lock.t, 6),
            "episodes_done": summary["episodes"],
            "successes": summary["successes"],
            "controller_enabled": lock.enabled,
            "chunks_rejected_message": self.chunks_rejected,
            "realtime": self.realtime,
            **lock.executor.stats(),
        }
        if self.realtime:
            values.update(
                frames_captured=self.camera_delay.captured,
                frames_dropped=self.camera_delay.dropped,
                late_ticks=late_ticks or 0,
            )
        msg = DiagnosticArray()
        msg.header.stamp = sec_to_stamp(lock.t)
        msg.status = [diagnostic_status(f"{self.get_name()}: lockstep", 0, message, values)]
        self.diag_pub.publish(msg)

    # --- the loop -------------------------------------------------------------------------------
    def _spin_some(self, calls: int = 3) -> None:
        """Handle what arrived (late chunks, service calls) without waiting."""
        for _ in range(calls):
            self._ros_executor.spin_once(timeout_sec=0.0)

    def _wait_for_chunk(self, timeout: float, announce_every: float = 0.0) -> bool:
        """Spin until the due chunk arrived (True) or ``timeout`` wall seconds passed (False).

        ``announce_every`` > 0: log the wait (and who is matched) that often, so a start-up that
        hangs says why instead of sitting silent until the timeout.
        """
        start = time.monotonic()
        deadline = start + timeout
        next_send = start + self.republish_period
        next_note = start + announce_every if announce_every > 0 else float("inf")
        while self.lock.chunk_due():
            now = time.monotonic()
            if now >= deadline:
                return False
            if now >= next_note:
                self.get_logger().info(
                    f"waiting {now - start:.0f} s (of {timeout:g}) for the first action chunk: "
                    f"{self.joint_pub.get_subscription_count()} subscriber(s) to the observation, "
                    f"{self.chunk_sub.get_publisher_count()} publisher(s) of policy/action_chunk"
                )
                next_note = now + announce_every
            if now >= next_send:
                # Messages sent before the inference node matched are lost; resending the same
                # stamp is harmless (it ticks once per stamp).
                self._publish_observation()
                next_send = now + self.republish_period
            self._ros_executor.spin_once(timeout_sec=min(0.01, max(0.0, deadline - now)))
        return True

    def run(self) -> int:
        lock = self.lock
        started = False
        last_diag = 0.0
        while rclpy.ok() and (self.episodes <= 0 or len(lock.results) < self.episodes):
            if self.video_path and lock.episode < self.video_episodes and self._video is None:
                self._video = EpisodeVideo(self.video_path, fps=1.0 / lock.period)
            self._publish_observation()
            if self._video is not None and lock.episode < self.video_episodes:
                self._video.add(lock.sim.render(self.video_camera, self.video_size))
            if lock.chunk_due():
                waited = (
                    self._wait_for_chunk(self.lockstep_timeout)
                    if started
                    else self._wait_for_chunk(self.startup_timeout, announce_every=15.0)
                )
                if not waited:
                    if not started:
                        raise StartupTimeout(
                            f"no action chunk within startup_timeout={self.startup_timeout:g} s: is the inference "
                            "node running with the same ROS_DOMAIN_ID, policy and namespace?"
                        )
                    lock.note_timeout()
                    self.get_logger().warn(
                        f"no chunk for t={lock.t:.3f} within {self.lockstep_timeout:g} s; holding",
                        throttle_duration_sec=5.0,
                    )
                started = started or not lock.chunk_due()
            elif not lock.enabled:
                # Controller disabled: the arm holds while time runs, as on the robot; pace it at real
                # time instead of spinning through the episode at full CPU.
                self._ros_executor.spin_once(timeout_sec=lock.period)
            else:
                self._spin_some()
            cmd = lock.step()
            if cmd.is_move:  # what the sim arm executed, after the envelope, stamped with the sim time it ran
                self.executed_pub.publish(executed_msg(cmd.action, lock.t - lock.period, cmd.source))
            if time.monotonic() - last_diag > 1.0:
                self._publish_diagnostics()
                last_diag = time.monotonic()
            if lock.episode_done or self._reset_requested:
                self._end_episode()
        self._publish_diagnostics("finished")
        return 0

    def _end_episode(self, obs_to_chunk_ms: dict | None = None) -> None:
        self._reset_requested = False
        result = self.lock.finish_episode()
        if obs_to_chunk_ms is not None:
            result.obs_to_chunk_ms = obs_to_chunk_ms
        self.success_pub.publish(Bool(data=bool(result.success)))
        summary = self.lock.summary()
        self.get_logger().info(
            f"episode {result.index}: {'success' if result.success else 'failure'} after {result.steps} steps "
            f"({result.wall_time_s:.1f} s wall, {result.lockstep_timeouts} lock-step timeouts); "
            f"success rate {summary['successes']}/{summary['episodes']}"
        )
        if self._video is not None and self.lock.episode >= self.video_episodes:
            self._video.close()
            self.get_logger().info(f"video: {self.video_path} ({self._video.frames} frames)")
            self._video = None
        if self.results_path:
            Path(self.results_path).parent.mkdir(parents=True, exist_ok=True)
            Path(self.results_path).write_text(json.dumps(summary, indent=2) + "\n")
        self._publish_diagnostics(f"episode {result.index} done")

    def close(self) -> None:
        if self.realtime:
            self._rx_executor.shutdown(timeout_sec=1.0)
            self._rx_node.destroy_node()
        if self._video is not None:
            self._video.close()
            self._video = None
        self.lock.sim.close()


def main(args: list[str] | None = None) -> None:
    rclpy.init(args=args if args is not None else sys.argv)
    node = None
    rc = 0
    try:
        node = SimNode()
        rc = node.run_realtime() if node.realtime else node.run()
    except ValueError as e:  # bad parameters or an invalid policy package (PolicyPackageError)
        print(f"sim: {e}", file=sys.stderr)
        rc = 2
    except StartupTimeout as e:
        print(f"sim: {e}", file=sys.stderr)
        rc = 3
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.close()
            node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    sys.exit(rc)


if __name__ == "__main__":
    main()
