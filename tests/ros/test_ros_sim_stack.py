"""The sim stack as the main job runs it: ``python -m d2ppo_bringup.run sim`` starts the robosuite sim
node and the inference node as separate processes over real DDS; episodes end with /sim/success.
Also: the runner cleans up its whole graph, and Fast DDS segments of SIGKILLed nodes are removed."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.ros, pytest.mark.slow]

EPISODES, HORIZON = 2, 6


def runner_argv(policy: Path, out: Path, episodes: int, seed: int = 0, namespace: str = "") -> list[str]:
    return [
        sys.executable, "-m", "d2ppo_bringup.run", "sim", "--policy", str(policy), "--episodes", str(episodes),
        "--horizon", str(HORIZON), "--seed", str(seed), "--results", str(out / "results.json"),
        "--video", str(out / "episode.mp4"), "--grace", "5", "--namespace", namespace,
    ]  # fmt: skip


def child_pids(output: str) -> dict[str, int]:
    return {m[0]: int(m[1]) for m in re.findall(r"\[run\] started (\w+) \(pid (\d+)\)", output)}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (not yet reaped by the runner) is gone for our purposes.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


class Runner:
    """The graph runner as a subprocess in its own process group (killed at teardown whatever happens)."""

    def __init__(self, argv: list[str], env: dict, log: Path):
        self.log = log
        self._file = open(log, "wb")
        self.proc = subprocess.Popen(
            argv, env=env, stdout=self._file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip

    def output(self) -> str:
        self._file.flush()
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        pids = child_pids(self.output())
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=10)
        killed = False
        for pid in pids.values():  # the nodes run in process groups of their own
            if alive(pid):
                os.killpg(pid, signal.SIGKILL)
                killed = True
        self._file.close()
        if killed:
            from d2ppo_bringup.node_processes import clean_fastdds_shm

            time.sleep(0.5)
            clean_fastdds_shm(min_age=0.0)


@pytest.fixture
def run_graph(ros_env, tmp_path):
    runners: list[Runner] = []

    def start(argv, name="runner", env=None):
        r = Runner(argv, env or ros_env, tmp_path / f"{name}.log")
        runners.append(r)
        return r

    yield start
    for r in runners:
        r.kill()


def run_episodes(run_graph, policy: Path, out: Path, test_node=None, seed: int = 0, namespace: str = ""):
    """Run the sim graph for EPISODES episodes; returns (runner, results, /sim/success values)."""
    runner, successes = start_episodes(run_graph, policy, out, test_node, seed, namespace=namespace)
    return finish_episodes(runner, out, test_node, successes)


def start_episodes(
    run_graph, policy: Path, out: Path, test_node=None, seed: int = 0, env: dict | None = None, namespace: str = ""
):
    out.mkdir(parents=True, exist_ok=True)
    successes: list[bool] = []
    if test_node is not None:
        from rclpy.qos import DurabilityPolicy, QoSProfile
        from std_msgs.msg import Bool

        qos = QoSProfile(depth=100, durability=DurabilityPolicy.TRANSIENT_LOCAL)
        topic = f"/{namespace}/sim/success" if namespace else "/sim/success"
        test_node.create_subscription(Bool, topic, lambda m: successes.append(m.data), qos)
    runner = run_graph(runner_argv(policy, out, EPISODES, seed, namespace), name=out.name, env=env)
    return runner, successes


def finish_episodes(runner, out: Path, test_node, successes: list[bool]):
    deadline = time.monotonic() + 170
    while runner.proc.poll() is None and time.monotonic() < deadline:
        if test_node is not None:
            test_node.spin_for(0.2)
        else:
            time.sleep(0.2)
    assert runner.proc.poll() is not None, "sim stack did not finish:\n" + runner.output()[-3000:]
    if test_node is not None:
        test_node.spin_until(lambda: len(successes) >= EPISODES, 5.0)
    assert runner.proc.returncode == 0, runner.output()[-3000:]
    return runner, json.loads((out / "results.json").read_text()), successes


@pytest.mark.timeout(240)
def test_sim_and_inference_complete_episodes_and_publish_success(run_graph, test_node, tiny_policy, tmp_path):
    # In a namespace: every node's topics move together (only /clock and /diagnostics stay global).
    runner, results, successes = run_episodes(run_graph, tiny_policy, tmp_path / "run", test_node, namespace="cell1")
    output = runner.output()
    assert results["episodes"] == EPISODES
    assert len(successes) == EPISODES, f"/sim/success messages: {successes}"
    assert successes == [e["success"] for e in results["per_episode"]]
    for episode in results["per_episode"]:
        assert 1 <= episode["steps"] <= HORIZON
        # Lock-step: every due chunk arrived in time, and the executor ran the policy's actions.
        assert episode["lockstep_timeouts"] == 0, output[-3000:]
        assert episode["moves"] > 0
    assert (tmp_path / "run" / "episode.mp4").stat().st_size > 0
    pids = child_pids(output)
    assert set(pids) == {"sim", "inference"}
    assert not [name for name, pid in pids.items() if alive(pid)], "runner left nodes running"


@pytest.mark.timeout(240)
def test_same_seed_gives_the_same_episodes(run_graph, ros_env, claim_domain, tiny_policy, tmp_path):
    """Sim and inference run in different processes, yet the lock-step makes the rollout repeatable."""
    # Both stacks at once, each on a domain of its own.
    other_env = {**ros_env, "ROS_DOMAIN_ID": str(claim_domain())}
    a = start_episodes(run_graph, tiny_policy, tmp_path / "a")
    b = start_episodes(run_graph, tiny_policy, tmp_path / "b", env=other_env)
    _, first, _ = finish_episodes(a[0], tmp_path / "a", None, a[1])
    _, second, _ = finish_episodes(b[0], tmp_path / "b", None, b[1])
    fingerprint = lambda r: [(e["steps"], e["moves"], e["final_ee_pos"]) for e in r["per_episode"]]  # noqa: E731
    assert fingerprint(first) == fingerprint(second)


def call(test_node, srv_type, name: str, request):
    client = test_node.create_client(srv_type, name)
    assert client.wait_for_service(timeout_sec=10.0), name
    future = client.call_async(request)
    assert test_node.spin_until(future.done, 10.0), name
    return future.result()


@pytest.mark.timeout(120)
def test_sim_services_work_and_ctrl_c_stops_the_whole_graph(run_graph, test_node, tiny_policy, tmp_path):
    """/sim/reset ends the episode (with /sim/success), /controller/enable false holds; one graph start for both."""
    from diagnostic_msgs.msg import DiagnosticArray
    from rosgraph_msgs.msg import Clock
    from std_msgs.msg import Bool
    from std_srvs.srv import SetBool, Trigger

    clocks, successes, sim_status = [], [], []
    test_node.create_subscription(Clock, "/clock", clocks.append, 10)
    test_node.create_subscription(Bool, "/sim/success", successes.append, 10)
    test_node.create_subscription(
        DiagnosticArray, "/diagnostics", lambda m: sim_status.extend(s for s in m.status if "lockstep" in s.name), 10
    )
    argv = runner_argv(tiny_policy, tmp_path, episodes=0)  # runs until stopped
    argv[argv.index("--horizon") + 1] = "100000"  # episodes end only by /sim/reset
    runner = run_graph(argv)
    assert test_node.spin_until(lambda: len(clocks) > 5, 90.0), "sim never published /clock:\n" + runner.output()

    assert call(test_node, Trigger, "/sim/reset", Trigger.Request()).success
    assert test_node.spin_until(lambda: successes, 10.0), "no /sim/success after /sim/reset"

    assert call(test_node, SetBool, "/controller/enable", SetBool.Request(data=False)).success
    sim_status.clear()
    values = lambda: {kv.key: kv.value for kv in sim_status[-1].values}  # noqa: E731
    assert test_node.spin_until(lambda: sim_status and values()["controller_enabled"] == "False", 10.0)
    assert call(test_node, SetBool, "/controller/enable", SetBool.Request(data=True)).success

    pids = child_pids(runner.output())
    assert set(pids) == {"sim", "inference"}
    runner.proc.send_signal(signal.SIGINT)
    assert runner.proc.wait(timeout=30) == 130
    assert not [name for name, pid in pids.items() if alive(pid)], runner.output()[-3000:]
    assert "stopping the graph" in runner.output()


@pytest.mark.timeout(60)
def test_segments_of_a_sigkilled_node_are_removed(start_node, ros_env, tmp_path):
    from d2ppo_bringup.node_processes import SHM_DIR, clean_fastdds_shm

    ros_env.pop("FASTDDS_BUILTIN_TRANSPORTS")  # this test needs the shared-memory transport

    def segments() -> set[str]:
        return {p.name for p in SHM_DIR.glob("fastdds_*") if not p.name.endswith("_el") and "_port" not in p.name}

    before = segments()
    script = (
        "import rclpy, std_msgs.msg as m; rclpy.init(); n = rclpy.create_node('victim'); "
        "n.create_publisher(m.String, 'chatter', 10); n.create_subscription(m.String, 'chatter', print, 10); "
        "print('up', flush=True); rclpy.spin(n)"
    )
    victim = start_node([sys.executable, "-c", script], name="victim")
    assert victim.wait_for_line(lambda line: line == "up", 30.0)
    time.sleep(1.0)
    new = segments() - before
    assert new, "the node created no Fast DDS segment"
    os.killpg(victim.pid, signal.SIGKILL)
    victim.proc.wait(timeout=10)
    assert new <= segments(), "segments vanished without cleanup (nothing to test)"
    removed = clean_fastdds_shm(min_age=0.0)
    import fcntl

    for name in new & segments():  # a segment of someone else's live node that appeared meanwhile
        fd = os.open(SHM_DIR / f"{name}_el", os.O_RDWR)
        try:
            with pytest.raises(OSError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
    assert set(removed) & new
