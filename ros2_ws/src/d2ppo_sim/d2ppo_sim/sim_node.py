"""robosuite sim node: the real drivers' topics from a simulated Panda, on sim time. ROS plumbing only.

Episode logic is ``LockstepSim``; the env is ``RobosuiteSim``. The node drives its own loop (no
timers): publish /clock and the observation at sim time t, wait for the due chunk, step, repeat.

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
  safety.* (from launch/safety.yaml, overridden by launch/sim.yaml): SafetyLimits fields
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import rclpy
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
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Bool
from std_srvs.srv import SetBool, Trigger
from trajectory_msgs.msg import JointTrajectory

from d2ppo_sim.lockstep import LockstepSim
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
        defaults = SafetyLimits().to_dict()
        for name, value in defaults.items():
            declare(f"safety.{name}", list(value) if isinstance(value, tuple) else value)
        refuse_undeclared_parameters(self)  # before loading the policy and building the sim
        p = lambda name: self.get_parameter(name).value  # noqa: E731

        limits = SafetyLimits.from_dict({name: p(f"safety.{name}") for name in defaults})
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
            ChunkExecutor(SafetyEnvelope(limits), sim.period, source=p("source")),
            replan_every=act_steps if p("replan") == "chunk" else 1,
            horizon=horizon,
        )
        self.camera_names = task.camera_names
        self.chunks_rejected = 0
        self._reset_requested = False
        self._video: EpisodeVideo | None = None

        reliable = QoSProfile(depth=2, reliability=ReliabilityPolicy.RELIABLE)
        self.clock_pub = self.create_publisher(Clock, "/clock", 10)
        self.image_pubs = {cam: self.create_publisher(Image, camera_input(cam), reliable) for cam in task.camera_names}
        self.joint_pub = self.create_publisher(JointState, JOINT_STATES_INPUT, 10)
        self.ee_pub = self.create_publisher(PoseStamped, EE_POSE_INPUT, 10)
        # Transient-local: a monitor that subscribes late still receives every episode's outcome.
        results_qos = QoSProfile(depth=100, durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.success_pub = self.create_publisher(Bool, "sim/success", results_qos)
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.chunk_sub = self.create_subscription(JointTrajectory, "policy/action_chunk", self._on_chunk, 10)
        self.executed_pub = self.create_publisher(JointTrajectory, "controller/executed", 10)
        self.create_service(SetBool, "controller/enable", self._on_enable)
        self.create_service(Trigger, "sim/reset", self._on_reset)
        self._ros_executor = SingleThreadedExecutor()
        self._ros_executor.add_node(self)

    # --- callbacks ------------------------------------------------------------------------------
    def _on_chunk(self, msg: JointTrajectory) -> None:
        try:
            chunk = chunk_from_msg(msg, default_period=self.lock.period)
        except ChunkMessageError as e:
            self.chunks_rejected += 1
            self.get_logger().warn(f"rejected action chunk: {e}", throttle_duration_sec=5.0)
            return
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

    def _publish_diagnostics(self, message: str = "running") -> None:
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
            **lock.executor.stats(),
        }
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

    def _end_episode(self) -> None:
        self._reset_requested = False
        result = self.lock.finish_episode()
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
        rc = node.run()
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
