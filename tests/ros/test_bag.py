"""MCAP recording of a stack run (``run --bag``, ``d2ppo_bringup.bag``) and its timeline plot.

A short real sim stack with ``--bag``: the file opens with ``mcap``'s reader, holds every listed topic with
messages the ros2 decoder reads (schemas ``ros2msg``, messages ``cdr``, profile ``ros2``), and the timeline
tool plots it and prints its summary. Bad output paths fail with one line before anything starts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

# The sim-stack test's runner fixture (runner in its own process group, every node killed at teardown).
from test_ros_sim_stack import alive, child_pids, run_graph  # noqa: F401  (run_graph is a fixture)

REPO = Path(__file__).resolve().parents[2]
HORIZON = 12  # control ticks: three 4-action chunks of the tiny policy, ~3 s of graph
JOINT_NAMES = ["x", "y", "z", "roll", "pitch", "yaw", "gripper"]


def read_bag(path: Path):
    """(header, {topic: schema name}, {topic: [(log_time, publish_time, decoded message)]})."""
    from mcap.reader import make_reader
    from mcap_ros2.decoder import DecoderFactory

    with open(path, "rb") as f:
        reader = make_reader(f, decoder_factories=[DecoderFactory()])
        header, summary = reader.get_header(), reader.get_summary()
        assert summary is not None, "no summary: the recording was not finished"
        for channel in summary.channels.values():
            assert channel.message_encoding == "cdr"
            assert summary.schemas[channel.schema_id].encoding == "ros2msg"
            assert channel.metadata["topic_type_hash"].startswith("RIHS01_")
        types = {c.topic: summary.schemas[c.schema_id].name for c in summary.channels.values()}
        messages: dict[str, list] = {t: [] for t in types}
        for _schema, channel, message, decoded in reader.iter_decoded_messages():
            messages[channel.topic].append((message.log_time, message.publish_time, decoded))
    return header, types, messages


def stamp_ns(msg) -> int:
    return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec


@pytest.mark.ros
@pytest.mark.timeout(200)
def test_a_sim_run_with_bag_records_every_topic_and_the_timeline_plots_it(run_graph, tiny_policy, tmp_path, capsys):  # noqa: F811
    from d2ppo_bringup import timeline

    bag = tmp_path / "run.mcap"
    argv = [
        sys.executable, "-m", "d2ppo_bringup.run", "sim", "--policy", str(tiny_policy), "--episodes", "1",
        "--horizon", str(HORIZON), "--results", str(tmp_path / "results.json"), "--bag", str(bag), "--grace", "5",
        "--namespace", "cell1",  # the recorder follows the graph's namespace; /diagnostics and /clock stay global
    ]  # fmt: skip
    runner = run_graph(argv, name="bag_run")
    try:
        runner.proc.wait(timeout=150)
    except subprocess.TimeoutExpired:
        pytest.fail("the sim stack with --bag did not finish:\n" + runner.output()[-3000:])
    output = runner.output()
    assert runner.proc.returncode == 0, output[-3000:]
    pids = child_pids(output)
    assert set(pids) == {"bag", "sim", "inference"}
    assert not [name for name, pid in pids.items() if alive(pid)], "runner left a process running"
    assert bag.is_file() and not (tmp_path / "run.mcap.part").exists(), output[-2000:]

    header, types, messages = read_bag(bag)
    assert header.profile == "ros2"
    assert types == {
        "/cell1/cameras/agentview/image_raw": "sensor_msgs/msg/Image",
        "/cell1/robot/joint_states": "sensor_msgs/msg/JointState",
        "/cell1/robot/ee_pose": "geometry_msgs/msg/PoseStamped",
        "/cell1/policy/action_chunk": "trajectory_msgs/msg/JointTrajectory",
        "/cell1/controller/executed": "trajectory_msgs/msg/JointTrajectory",
        "/diagnostics": "diagnostic_msgs/msg/DiagnosticArray",
        "/clock": "rosgraph_msgs/msg/Clock",
    }
    assert all(messages[t] for t in types), {t: len(m) for t, m in messages.items()}
    for topic, records in messages.items():
        if topic != "/clock":  # publish time = header.stamp; log time = receipt on the graph's (sim) clock
            assert all(pub == stamp_ns(msg) for _, pub, msg in records), topic
    images = messages["/cell1/cameras/agentview/image_raw"]
    assert all((m.width, m.height, m.encoding, len(m.data)) == (32, 32, "rgb8", 32 * 32 * 3) for _, _, m in images)
    assert all(len(m.name) == 9 and len(m.position) == 9 for _, _, m in messages["/cell1/robot/joint_states"])
    chunks = [m for _, _, m in messages["/cell1/policy/action_chunk"]]
    assert all(c.joint_names == JOINT_NAMES and len(c.points) == 4 for c in chunks)
    executed = [m for _, _, m in messages["/cell1/controller/executed"]]
    assert all(e.joint_names == JOINT_NAMES and len(e.points) == 1 for e in executed)
    assert len(executed) == HORIZON  # one executed action per control tick of the episode
    assert {s.name for _, _, d in messages["/diagnostics"] for s in d.status} >= {"sim: lockstep", "inference: policy"}
    # Chunks carry their frame's exact stamp; a camera is subscribed once discovered, so its first frame
    # may go out before the recorder matched.
    frame_stamps = {stamp_ns(m) for _, _, m in images}
    assert sum(stamp_ns(c) in frame_stamps for c in chunks) >= len(chunks) - 1

    png = tmp_path / "timeline.png"
    capsys.readouterr()
    assert timeline.main([str(bag), "--out", str(png)]) == 0
    printed = capsys.readouterr().out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = timeline.summarize(timeline.read_run(bag))
    assert summary["chunks"] == len(chunks) and summary["executed_actions"] == HORIZON
    # Lock-step: every planned action ran, each executed action is one the policy planned.
    assert summary["executed_from_a_chunk"] == HORIZON and summary["planned_never_executed"] == 0
    assert summary["latency_stamp_to_receipt_ms"]["p50"] is not None
    for line in ("chunks:", "obs->chunk latency:", "executed actions:", "planned, never executed:", "png:"):
        assert line in printed, printed


@pytest.mark.ros
@pytest.mark.timeout(60)
def test_sigterm_finishes_the_file_and_sigkill_leaves_only_the_part_file(ros_env, tmp_path):
    from d2ppo_bringup.bag import READY_LINE
    from d2ppo_bringup.node_processes import NodeProcess

    def start(name: str) -> NodeProcess:
        cmd = [sys.executable, "-m", "d2ppo_bringup.bag", "--out", str(tmp_path / f"{name}.mcap")]
        proc = NodeProcess(name, cmd, env=ros_env, out=None)
        assert proc.wait_for_line(lambda line: line.startswith(READY_LINE), 30.0), proc.lines
        return proc

    finished, killed = start("finished"), start("killed")
    finished.proc.send_signal(signal.SIGTERM)
    assert finished.proc.wait(timeout=15) == 0, finished.lines
    _, types, _ = read_bag(tmp_path / "finished.mcap")  # a complete file, summary included
    assert types == {}
    assert not (tmp_path / "finished.mcap.part").exists()
    os.killpg(killed.pid, signal.SIGKILL)  # no chance to finish: never a truncated file under the final name
    killed.stop()
    assert not (tmp_path / "killed.mcap").exists()
    assert (tmp_path / "killed.mcap.part").read_bytes()[:8] == b"\x89MCAP0\r\n"


def test_bad_output_paths_fail_with_one_line_before_anything_starts(tmp_path, capsys):
    from d2ppo_bringup.bag import McapBag
    from d2ppo_bringup.timeline import main as timeline_main

    policy = tmp_path / "policy"
    policy.mkdir()
    (policy / "policy.json").write_text("{}")  # enough for the runner's first check; nothing is loaded
    (tmp_path / "folder.mcap").mkdir()
    cases = {
        str(tmp_path / "missing" / "run.mcap"): "does not exist",
        "/proc/d2ppo_test_run.mcap": "cannot be written",
        str(tmp_path / "run.bag"): "must end in .mcap",
        str(tmp_path / "folder.mcap"): "is a folder",
    }
    for out, why in cases.items():
        commands = {
            "bag": [sys.executable, "-m", "d2ppo_bringup.bag", "--out", out],
            "run": [sys.executable, "-m", "d2ppo_bringup.run", "sim", "--policy", str(policy), "--bag", out],
            "run_sim_stack": ["bash", str(REPO / "scripts/run_sim_stack.sh"), "--policy", str(policy), "--bag", out],
        }
        for name, cmd in commands.items():
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=REPO)
            assert r.returncode == 2, (name, out, r.stdout, r.stderr)
            lines = r.stderr.strip().splitlines()
            assert len(lines) == 1 and why in lines[0], (name, out, r.stderr)
            assert "started" not in r.stdout and "[setup]" not in r.stdout, (name, r.stdout)
    assert not list(tmp_path.glob("*.part"))

    # A recording without chunks: the timeline says so, no traceback.
    empty = McapBag(tmp_path / "empty.mcap")
    empty.close()
    capsys.readouterr()
    assert timeline_main([str(tmp_path / "empty.mcap"), "--out", str(tmp_path / "empty.png")]) == 1
    err = capsys.readouterr().err
    assert "holds no action chunks" in err and "Traceback" not in err
    assert not (tmp_path / "empty.png").exists()
