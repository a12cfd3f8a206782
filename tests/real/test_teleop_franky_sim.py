"""Teleop through the real controller: scripted teleop node -> franka node -> franky-sim, recorded by the
recorder node from what the franka node reports it executed (controller/executed). The only path from
teleop to the arm is the controller's executor and safety envelope.

franky-sim and the franka node are started with the franka node tests' harness (tests/franka).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import ros_domains

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "franka"))

pytestmark = [pytest.mark.franky, pytest.mark.ros, pytest.mark.slow]

HOST = f"127.0.{ros_domains.claim_domain(range(60, 80))}.1"  # a loopback address of its own for franky-sim (ports 1337/1338)


@pytest.fixture
def franky_sim(tmp_path):
    franka_harness = pytest.importorskip("franka_harness", reason="tests/franka harness (d2ppo_franka) missing")
    if not franka_harness.NODE_EXE.exists():
        pytest.skip("d2ppo_franka is not installed (no franka_node console script)")
    try:
        sim = franka_harness.start_franky_sim(HOST, tmp_path)
    except FileNotFoundError as e:
        pytest.skip(str(e))
    yield franka_harness
    sim.stop()


@pytest.mark.timeout(150)
def test_teleop_chunks_move_the_arm_through_the_controller_and_are_recorded(franky_sim, spawn, test_node, ros_env,
                                                                             tmp_path):
    from d2ppo.data.robomimic_hdf5 import read_demo
    from d2ppo_control.ros_conversions import executed_from_msg
    from diagnostic_msgs.msg import DiagnosticArray
    from geometry_msgs.msg import PoseStamped
    from std_srvs.srv import Trigger
    from trajectory_msgs.msg import JointTrajectory

    domain = int(ros_env["ROS_DOMAIN_ID"])
    # late_tolerance 0.1 s (two periods), as the franka node's own tests use on this loaded 2-core machine: a
    # chunk may reach the executor a period late. (The recorder needs no such setting: it records what the
    # franka node says it executed.)
    # The shipped profile starts disabled and executes the policy's chunks: for a teleop demo the operator
    # selects the teleop source (d2ppo_bringup.ctl source teleop) and enables; here as start parameters.
    franka = franky_sim.start_franka_node(
        domain,
        # response direct: the displacement check below counts full deltas (robosuite's response: test_parity.py)
        {"robot_ip": HOST, "realtime": False, "late_tolerance": 0.1, "start_enabled": True, "source": "teleop",
         "response": "direct"},
        tmp_path,
    )
    try:
        poses: list[tuple[float, np.ndarray]] = []
        diags: dict[str, list[dict[str, str]]] = {"controller": [], "recorder": []}
        chunks = []
        executed = []

        def on_pose(msg):
            p = msg.pose.position
            poses.append((time.monotonic(), np.array([p.x, p.y, p.z])))

        def on_diag(msg):
            for s in msg.status:
                for kind, found in diags.items():
                    if s.name.endswith(kind):
                        found.append({kv.key: kv.value for kv in s.values})

        def recent_motion(window: float) -> tuple[int, float]:
            """(pose messages in the last ``window`` s, largest coordinate range among them in metres)."""
            recent = [p for t, p in poses if t > time.monotonic() - window]
            return len(recent), float(np.ptp(np.array(recent), axis=0).max()) if recent else float("nan")

        def still_for(window: float) -> bool:
            n, spread = recent_motion(window)
            return n > 10 and spread < 1e-3

        def latest(kind: str, key: str) -> float:
            return float(diags[kind][-1][key]) if diags[kind] else 0.0

        test_node.node.create_subscription(PoseStamped, "/robot/ee_pose", on_pose, 50)
        test_node.node.create_subscription(DiagnosticArray, "/diagnostics", on_diag, 50)
        test_node.node.create_subscription(JointTrajectory, "/policy/action_chunk", chunks.append, 50)
        test_node.node.create_subscription(JointTrajectory, "/controller/executed", executed.append, 50)
        assert test_node.spin_until(lambda: len(poses) > 10 and diags["controller"], 60), franka.output()[-3000:]

        out = tmp_path / "teleop_demos.hdf5"
        recorder = spawn("d2ppo_recorder.recorder_node", {"output": str(out), "camera_names": [], "max_obs_age": 0.5})
        assert test_node.call(Trigger, "/recorder/start", timeout=40).success, recorder.output()
        # Hands off while DDS discovery connects teleop -> controller and recorder (messages sent before that
        # are lost), then +x at 0.05 of full scale (2.5 mm per 20 Hz step = 0.05 m/s) for 2 s, then hands off.
        script = [{"duration": 6.0}, {"duration": 2.0, "motion": [0.5, 0, 0, 0, 0, 0]}, {"duration": 600.0}]
        teleop = spawn("d2ppo_teleop.teleop_node", {"source": "scripted", "script": json.dumps(script),
                                                    "pos_gain": 0.1, "deadzone": 0.0})
        both_listening = lambda: latest("controller", "chunks_accepted") > 0 and latest("recorder", "steps") > 0  # noqa: E731
        assert test_node.spin_until(both_listening, 30), (
            f"controller {diags['controller'][-1:]}, recorder {diags['recorder'][-1:]}, {len(chunks)} chunks seen\n"
            + teleop.output() + recorder.output() + franka.output()[-2000:]
        )
        assert all(np.allclose(c.points[0].positions[:6], 0.0) for c in chunks), "the script starts hands off"
        assert test_node.spin_until(lambda: still_for(0.5), 10)
        p0 = poses[-1][1]

        def moved_and_rested() -> bool:
            return any(c.points[0].positions[0] > 0 for c in chunks) and chunks[-1].points[0].positions[0] == 0 \
                and still_for(1.0)

        # The arm runs on to its last target (at most max_tracking_lead + one step ahead of it), then must stay
        # put while hands-off (zero-motion) chunks keep coming. (franky-sim runs below real time and can stall
        # on a loaded machine: judge rest over a full second.)
        rested = test_node.spin_until(moved_and_rested, 15)
        p_rest = poses[-1][1]
        t_rest = time.monotonic()
        kept_before, sent_before = latest("controller", "targets_kept"), latest("controller", "motions_sent")
        test_node.spin_for(3.0)
        rest_window = np.array([p for t, p in poses if t >= t_rest])
        creep = float(np.linalg.norm(rest_window - rest_window[0], axis=1).max())
        kept = latest("controller", "targets_kept") - kept_before
        sent = latest("controller", "motions_sent") - sent_before
        p_after = poses[-1][1]
        stop = test_node.call(Trigger, "/recorder/stop")
        assert stop.success, stop.message

        # Teleop side: the script's +x segment went out at 20 Hz, then only zero-motion chunks (deadman).
        n_sent = sum(1 for c in chunks if c.points[0].positions[0] > 0)
        assert 38 <= n_sent <= 42, "20 Hz for 2 s"
        assert np.allclose(chunks[-1].points[0].positions[:6], 0.0), "no input: zero-motion chunks"
        # Controller side: every chunk accepted and its action executed through the envelope.
        last = diags["controller"][-1]
        print({k: last[k] for k in ("chunks_accepted", "actions_executed", "chunks_rejected_period",
                                    "chunks_ignored_old", "actions_dropped_stale", "safety_accepted")})
        assert float(last["actions_executed"]) >= n_sent and float(last["safety_accepted"]) >= n_sent
        assert float(last["chunks_rejected_period"]) == 0 and float(last["chunks_rejected_non_finite"]) == 0
        # Recorder side: the actions the franka node reported on controller/executed, each with its stamp, with
        # the end-effector positions following the motion. On the shared 2-core machine a chunk now and then
        # arrives after the late tolerance and is dropped by the executor (counted in actions_dropped_stale):
        # it was never executed, so it is neither reported nor recorded.
        reported = {t: a for t, a, _ in map(executed_from_msg, executed)}
        demo = read_demo(out, "demo_0")
        for t, action in zip(demo.obs["timestamp"], demo.actions):
            np.testing.assert_allclose(action, reported[float(t)], atol=1e-6)
        moving = demo.actions[:, 0] > 0
        n_executed_moving = sum(1 for a in reported.values() if a[0] > 0)
        assert moving.sum() >= n_executed_moving - 2 and moving.sum() >= n_sent - 3
        assert np.allclose(demo.actions[moving, 0], 0.05)
        assert np.all(demo.actions[~moving, :6] == 0)  # hands-off samples are zero motion
        x = demo.obs["robot0_eef_pos"][:, 0]
        assert x[-1] - x[0] > 0.02, "recorded end-effector positions follow the motion"
        assert np.all(np.diff(demo.obs["timestamp"]) > 0)

        d = p_rest - p0
        print(f"\n[teleop -> franky-sim] +x teleop for 2 s: {n_sent} chunks of +2.5 mm sent ({int(moving.sum())} "
              f"recorded), hand moved {np.round(d, 4)} m; then at most {creep * 1e3:.2f} mm over 3 s at rest "
              f"({kept:.0f} zero actions kept the target, {sent:.0f} motions sent)")
        # No creep (once seen in ~1 of 5 runs under load: the node re-sent its unchanged target every tick and
        # franky restarted each motion from franky-sim's lagging velocity estimate, pumping the arm past its
        # target; tests/franka/test_franka_node_zero_actions.py reproduces it on a slowed franky-sim).
        assert rested, (f"arm did not come to rest after teleop stopped: poses/spread over the last second "
                        f"{recent_motion(1.0)}, ee {np.round(poses[-1][1], 4)}")
        assert creep < 2e-3, "no input: the arm must not move (deadman)"
        assert sent == 0 and kept > 0, "zero-motion actions keep the target and start no motion"
        assert np.linalg.norm(p_after - p_rest) < 2e-3
        # Direction exact; distance 72-103 % of the commanded 2.5 mm steps in 12 runs here (the franka node's
        # tracking under load; its own tests bound travel structurally too).
        assert 0.5 * n_sent * 0.0025 < d[0] < 1.25 * n_sent * 0.0025, "the arm moves along +x by about the steps sent"
        assert abs(d[1]) < 0.005 and abs(d[2]) < 0.005
    finally:
        franka.stop()
