"""Sim-to-real pieces without DDS: the chunk stamp, the pipelined schedule under latency, the seam
strategies, camera fault injection — and, over real DDS, the frame trigger and the real-time sim stack."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from d2ppo.package import load_policy
from d2ppo_control.chunk import ActionChunk
from d2ppo_control.executor import ChunkExecutor
from d2ppo_control.safety import SafetyEnvelope, SafetyLimits
from d2ppo_inference.policy_runner import PolicyRunner
from d2ppo_sim.realtime import CameraDelay, CameraFaults

REPO = Path(__file__).resolve().parents[2]
P = 0.05
EE = np.array([0.5, 0.0, 0.35])


@pytest.fixture(scope="module")
def policy(tiny_policy):
    return load_policy(tiny_policy)


def fill(obs, state_stamp: float, image_stamp: float) -> None:
    obs.set_image("agentview", image_stamp, np.zeros((32, 32, 3), np.uint8))
    obs.set_ee_pose(state_stamp, [0.45, 0.0, 0.1], [1.0, 0.0, 0.0, 0.0])
    obs.set_fingers(state_stamp, 0.02, 0.02)


def test_chunk_carries_the_camera_frame_stamp_even_when_the_robot_state_is_fresher(policy):
    """A frame delivered 100 ms late must not be stamped with the fresher robot-state time (DESIGN.md)."""
    runner = PolicyRunner(policy)
    obs = runner.observation_inputs()
    fill(obs, state_stamp=10.10, image_stamp=10.0)
    chunk = runner.tick(obs, now=10.11).chunk
    assert chunk.stamp == 10.0


def executor(seam: str = "replace") -> ChunkExecutor:
    return ChunkExecutor(SafetyEnvelope(SafetyLimits(max_angular_velocity=100.0)), P, seam=seam)


def tagged_chunk(stamp: float, tag: int, n: int = 4) -> ActionChunk:
    """Action i of chunk ``tag`` has x = tag/10 + i/100 (identifiable after the envelope)."""
    a = np.zeros((n, 7))
    a[:, 0] = tag / 10 + np.arange(n) / 100
    return ActionChunk(stamp=stamp, period=P, actions=a, source="policy")


def run_pipeline(lead: int, latency: float, ticks: int, seam: str = "replace") -> list[tuple[int, int] | None]:
    """Frames at every tick (the camera and the controller both at 20 Hz); the runner's schedule: a chunk
    from the frame of every (4 - lead)-th tick, arriving ``latency`` s after its frame. Returns, per tick,
    (chunk tag, action index) executed or None (hold)."""
    ex = executor(seam)
    every = 4 - lead
    arrivals = [(k * every * P + latency, k) for k in range(ticks // every + 2)]
    out: list[tuple[int, int] | None] = []
    for j in range(ticks):
        now = j * P + 0.013  # the controller's ticks 13 ms after the camera's frames
        for t_arr, k in [a for a in arrivals if a[0] <= now + 1e-9]:
            ex.submit(tagged_chunk(k * every * P, k), t_arr)
            arrivals.remove((t_arr, k))
        cmd = ex.tick(now, EE)
        if cmd.action is None:
            out.append(None)
        else:
            x = round(float(cmd.action[0]) * 100)
            out.append((x // 10, x % 10))
    return out


def test_pipelined_schedule_runs_every_slot_on_time_under_latency():
    """Frames every 50 ms, controller ticks 13 ms after them. Latency 70 ms (more than a period): without a
    lead each chunk's first two slots have passed when it arrives and the arm holds at every seam (half the
    time); with lead 2 the next chunk is computed two slots early and every slot from the third on runs, on
    time. At 10 ms latency every slot runs with or without a lead."""
    assert run_pipeline(lead=0, latency=0.07, ticks=12) == [
        None, None, (0, 2), (0, 3), None, None, (1, 2), (1, 3), None, None, (2, 2), (2, 3),
    ]  # fmt: skip
    assert run_pipeline(lead=2, latency=0.07, ticks=12) == [
        None, None, (0, 2), (0, 3), (1, 2), (1, 3), (2, 2), (2, 3), (3, 2), (3, 3), (4, 2), (4, 3),
    ]  # fmt: skip
    assert run_pipeline(lead=1, latency=0.01, ticks=12) == [
        (0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2), (2, 0), (2, 1), (2, 2), (3, 0), (3, 1), (3, 2),
    ]  # fmt: skip
    assert run_pipeline(lead=0, latency=0.01, ticks=12) == [
        (0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (1, 1), (1, 2), (1, 3), (2, 0), (2, 1), (2, 2), (2, 3),
    ]  # fmt: skip


def test_a_chunk_from_rest_plays_every_action_and_a_late_one_in_a_run_joins_on_time():
    ex = executor()
    ex.submit(tagged_chunk(10.0, 1), 10.001)
    # from rest, 40 ms after its stamp: all four actions, one per tick (its grid shifts by the delay)
    assert [float(ex.tick(10.04 + k * P, EE).action[0]) for k in range(4)] == pytest.approx([0.1, 0.11, 0.12, 0.13])
    # in the run, a chunk whose first slot has passed joins at the slot nearest the tick
    ex.submit(tagged_chunk(10.17, 2), 10.21)  # its slot 10.17 is the one the last action (due 10.15) ran in
    assert float(ex.tick(10.24, EE).action[0]) == pytest.approx(0.21)
    assert ex.stats()["actions_already_executed"] == 1 and ex.stats()["actions_dropped_stale"] == 0


def test_runner_lead_follows_the_measured_latency(policy):
    runner = PolicyRunner(policy, lead=-1)
    assert runner.lead == 1  # nothing measured yet
    obs = runner.observation_inputs()
    planned = []
    for k in range(12):
        t = 1.0 + k * P
        fill(obs, t, t - 0.12)  # frames arrive 120 ms after capture
        if runner.tick(obs, now=t).chunk is not None:
            planned.append(k)
    assert runner.lead == 3  # ceil(0.12 s (+ inference) / 0.05 s), at most act_steps - 1
    assert planned[-3:] == [9, 10, 11]  # replanning every tick once the latency is known
    assert PolicyRunner(policy, lead=2).lead == 2
    with pytest.raises(ValueError, match="lead"):
        PolicyRunner(policy, lead=-2)
    with pytest.raises(ValueError, match="seam"):
        PolicyRunner(policy, seam="blend")


def test_ensemble_runs_the_weighted_mean_of_every_prediction_for_a_slot():
    ex = executor("ensemble")
    ex.submit(tagged_chunk(0.0, 1), 0.0)  # slots 0..3: 0.10 0.11 0.12 0.13
    ex.tick(0.0, EE)
    ex.tick(P, EE)
    ex.submit(tagged_chunk(2 * P, 2), 2 * P)  # slots 2..5: 0.20 0.21 0.22 0.23
    w = np.exp(-0.01 * np.arange(2))
    got = [float(ex.tick(k * P, EE).action[0]) for k in range(2, 6)]
    expected = [np.dot(w, [0.12, 0.20]) / w.sum(), np.dot(w, [0.13, 0.21]) / w.sum(), 0.22, 0.23]
    np.testing.assert_allclose(got, expected, atol=1e-9)
    assert ex.stats()["actions_ensembled"] == 2
    # replace: the newer chunk's actions only
    ex = executor("replace")
    ex.submit(tagged_chunk(0.0, 1), 0.0)
    ex.tick(0.0, EE)
    ex.tick(P, EE)
    ex.submit(tagged_chunk(2 * P, 2), 2 * P)
    assert [round(float(ex.tick(k * P, EE).action[0]), 6) for k in range(2, 6)] == [0.2, 0.21, 0.22, 0.23]
    with pytest.raises(ValueError, match="seam"):
        executor("average")


def test_inpaint_reproduces_the_committed_actions(policy):
    runner = PolicyRunner(policy, seam="inpaint", lead=2, seed=0)
    obs = runner.observation_inputs()
    fill(obs, 1.0, 1.0)
    first = runner.tick(obs, now=1.0)
    assert first.chunk is not None and first.inpainted == 0
    fill(obs, 1.05, 1.05)
    assert runner.tick(obs, now=1.05).chunk is None
    fill(obs, 1.10, 1.10)
    second = runner.tick(obs, now=1.10)  # lead 2: replans after 2 ticks; slots 1.10, 1.15 overlap
    assert second.chunk is not None and second.inpainted == 2
    np.testing.assert_allclose(second.chunk.actions[:2], first.chunk.actions[2:], atol=2e-3)
    # the free slots are sampled, not copied
    assert not np.allclose(second.chunk.actions[2:], first.chunk.actions[:2])


def test_camera_faults_delay_jitter_and_drop_frames_in_order():
    delay = CameraDelay(CameraFaults(latency_ms=100.0, jitter_ms=10.0, drop=0.25), seed=1)
    releases = [delay.push("cam", k * P, k) for k in range(400)]
    kept = [r - k * P for k, r in enumerate(releases) if r is not None]
    assert 0.2 < delay.dropped / delay.captured < 0.3
    assert min(kept) >= 0.09 - 1e-9 and max(kept) <= 0.11 + 1e-9
    frames = [f for _, _, f in delay.due(100.0)]
    assert frames == sorted(frames)  # a driver delivers in order
    assert delay.due(100.0) == []
    for bad, match in (
        ({"latency_ms": -5.0}, "latency"),
        ({"jitter_ms": -1.0}, "jitter"),
        ({"drop": 1.0}, "drop"),
    ):
        with pytest.raises(ValueError, match=match):
            CameraFaults(**bad)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--realtime", "--latency-ms", "-5"], "latency must be >= 0"),
        (["--realtime", "--drop", "1"], "drop probability must be in [0, 1)"),
        (["--seam", "blend"], "invalid choice: 'blend'"),
        (["--realtime", "--drop", "0.1", "--lowdim"], "need a policy that uses cameras"),
    ],
)
def test_bad_realtime_options_fail_before_anything_starts(extra, message, tiny_policy, tmp_path):
    policy = str(tiny_policy)
    if "--lowdim" in extra:
        from d2ppo.model import PolicyConfig
        from d2ppo.obs import ObsSpec
        from d2ppo.package import make_random_policy

        extra = [e for e in extra if e != "--lowdim"]
        cfg = PolicyConfig(mlp_dims=(32, 32, 32))
        policy = str(make_random_policy(tmp_path / "lowdim", spec=ObsSpec(camera_names=()), cfg=cfg))
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "d2ppo_bringup.run", "sim", "--policy", policy, *extra],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in proc.stderr
    assert "[run] started" not in proc.stdout  # no node was started
    assert time.monotonic() - t0 < 30


@pytest.mark.ros
@pytest.mark.timeout(120)
def test_frame_trigger_one_frame_one_chunk_with_its_exact_stamp(start_node, test_node, tiny_policy):
    from builtin_interfaces.msg import Time
    from d2ppo_bringup.graph import NodeSpec
    from d2ppo_inference.ros_messages import ee_pose_msg, image_msg, joint_state_msg
    from geometry_msgs.msg import PoseStamped
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image, JointState
    from trajectory_msgs.msg import JointTrajectory

    start_node(
        NodeSpec(
            package="d2ppo_inference", executable="inference_node", module="d2ppo_inference.inference_node",
            name="inference", param_files=("inference.yaml", "panda.yaml"),
            params={"policy": str(tiny_policy), "start_enabled": True, "image_reliability": "reliable",
                    "max_obs_age": 1.0},
        )
    )  # fmt: skip
    image_pub = test_node.create_publisher(
        Image, "cameras/agentview/image_raw", QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)
    )
    joint_pub = test_node.create_publisher(JointState, "robot/joint_states", 5)
    ee_pub = test_node.create_publisher(PoseStamped, "robot/ee_pose", 5)
    chunks: list = []
    test_node.create_subscription(JointTrajectory, "policy/action_chunk", chunks.append, 10)
    assert test_node.spin_until(
        lambda: image_pub.get_subscription_count() > 0 and test_node.count_publishers("policy/action_chunk") > 0, 60.0
    ), "inference node did not come up"

    def state() -> None:
        t = test_node.get_clock().now().nanoseconds * 1e-9
        joint_pub.publish(joint_state_msg(np.zeros(7), (0.02, 0.02), t))
        ee_pub.publish(ee_pose_msg([0.45, 0.0, 0.1], [1.0, 0.0, 0.0, 0.0], t))

    for _ in range(10):  # robot state alone: no frame, no chunk
        state()
        test_node.spin_for(0.05)
    assert chunks == []
    now_ns = test_node.get_clock().now().nanoseconds
    stamp = Time(sec=now_ns // 1_000_000_000, nanosec=123_456_789)  # not representable as a float exactly
    msg = image_msg(np.zeros((32, 32, 3), np.uint8), 0.0, "agentview_color_optical_frame")
    msg.header.stamp = stamp
    image_pub.publish(msg)
    assert test_node.spin_until(lambda: chunks, 10.0), "no chunk for the frame"
    for _ in range(16):  # 0.8 s more of robot state and no new frame: no further chunk
        state()
        test_node.spin_for(0.05)
    assert len(chunks) == 1
    assert (chunks[0].header.stamp.sec, chunks[0].header.stamp.nanosec) == (stamp.sec, stamp.nanosec)
    assert chunks[0].header.frame_id == "policy"


@pytest.mark.ros
@pytest.mark.timeout(240)
def test_realtime_sim_runs_episodes_end_to_end_over_dds(ros_env, tiny_policy, tmp_path):
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, "-m", "d2ppo_bringup.run", "sim", "--policy", str(tiny_policy), "--episodes", "2",
         "--horizon", "20", "--realtime", "--latency-ms", "30", "--jitter-ms", "5", "--results", str(out)],
        capture_output=True, text=True, timeout=200, cwd=REPO, env=ros_env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "trigger=frame" in proc.stdout  # the inference node in its robot configuration
    results = json.loads(out.read_text())
    assert results["episodes"] == 2
    for e in results["per_episode"]:
        assert e["steps"] == 20 and e["moves"] > 0
        lat = e["obs_to_chunk_ms"]
        assert lat["n"] > 0 and lat["p50"] >= 30.0 - 5.0  # at least the injected camera latency
        assert e["executor"]["actions_executed"] == e["moves"]
    print(f"\n[realtime sim] {[e['obs_to_chunk_ms'] for e in results['per_episode']]}")
    assert math.isfinite(results["success_rate"])


def test_ensemble_leaves_one_action_chunks_alone():
    """Teleop sends one-action chunks at 20 Hz: each is a command for now and replaces, never averaged."""
    ex = executor("ensemble")
    ex.submit(tagged_chunk(0.0, 1), 0.0)  # a policy plan: 0.10 0.11 0.12 0.13
    ex.tick(0.0, EE)
    ex.submit(ActionChunk(stamp=P, period=P, actions=np.zeros((1, 7)), source="policy"), P)  # hold here
    assert float(ex.tick(P, EE).action[0]) == 0.0 and ex.pending == 0
    assert ex.stats()["actions_ensembled"] == 0
