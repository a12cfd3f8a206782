"""DDS isolation (DESIGN.md): the sim graph and the tests discover on localhost only; the robot graph runs
on the non-zero domain and the discovery range of launch/dds.env.

What ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST does is checked on real participants: two on one host still
talk, and, where the test may create network namespaces (root with `ip netns`), a participant on another
"host" (a namespace joined by a veth link, UDP only) neither finds nor hears a LOCALHOST graph, while with
SUBNET it does (the control), and ROS_STATIC_PEERS opens the graph to one named workstation.
Domains: 120-129, claimed through tests/ros_domains.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import ros_domains
from d2ppo_bringup import run as runner
from d2ppo_bringup.graph import NodeSpec, panda_graph
from d2ppo_bringup.node_processes import dds_environment, enclave_name, read_env_file

REPO = Path(__file__).resolve().parents[2]
# Below 102: Fast DDS's ports for domains >= 102 fall in Linux's ephemeral range (32768-60999), where sockets
# opened earlier in a long test session collide with them (the probes stopped discovering each other late in the
# full suite).
DOMAINS = range(50, 60)

# A participant that publishes its name on /dds_probe and prints which other names it heard.
PROBE = """
import json, sys, time
import rclpy
from std_msgs.msg import String

name, seconds, want = sys.argv[1], float(sys.argv[2]), set(sys.argv[3:])
rclpy.init()
node = rclpy.create_node("probe_" + name)
heard = set()
node.create_subscription(String, "dds_probe", lambda m: heard.add(m.data), 10)
pub = node.create_publisher(String, "dds_probe", 10)
deadline = time.monotonic() + seconds
while time.monotonic() < deadline:
    pub.publish(String(data=name))
    rclpy.spin_once(node, timeout_sec=0.1)
    if want and want <= heard:  # heard everyone expected: a little longer, so they hear this one too
        deadline = min(deadline, time.monotonic() + 1.0)
        want = set()
print(json.dumps({"name": name, "heard": sorted(heard - {name})}))
node.destroy_node()
rclpy.shutdown()
"""


@pytest.fixture
def domains():
    claimed: list[int] = []

    def claim() -> int:
        claimed.append(ros_domains.claim_domain(DOMAINS, start=len(claimed)))
        return claimed[-1]

    yield claim
    for d in claimed:
        ros_domains.release_domain(d)


def _probe_env(domain: int, scope: str, peers: str = "") -> dict[str, str]:
    # A clean environment: the pytest process's own has gathered settings from earlier tests' imports
    # (LD_LIBRARY_PATH from cv2 and the ROS wheels, PYOPENGL_PLATFORM, ...), and probes started with it
    # after such tests failed to discover each other.
    env = {k: os.environ[k] for k in ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR") if k in os.environ}
    env.update(ROS_DOMAIN_ID=str(domain), ROS_AUTOMATIC_DISCOVERY_RANGE=scope, FASTDDS_BUILTIN_TRANSPORTS="UDPv4")
    if peers:
        env["ROS_STATIC_PEERS"] = peers
    return env


def _run_probes(probes: list[tuple[list[str], dict[str, str], str, float, list[str]]], script: Path) -> dict:
    """Start every (prefix argv, env, name, seconds, expected peers) probe at once; {name: heard}."""
    procs = [
        (
            name,
            subprocess.Popen(
                [*prefix, sys.executable, str(script), name, str(seconds), *want],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            ),
        )
        for prefix, env, name, seconds, want in probes
    ]
    heard = {}
    for name, p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, f"probe {name}: {err}"
        heard[name] = json.loads(out.strip().splitlines()[-1])["heard"]
    return heard


# --- where the settings come from ------------------------------------------------------------------


def test_robot_profile_dds_settings_are_one_file_with_a_nonzero_domain_and_localhost_range():
    settings = read_env_file(REPO / "launch" / "dds.env")
    assert 1 <= int(settings["ROS_DOMAIN_ID"]) <= 101  # Fast DDS's port formula is safe for 0-101 on Linux
    assert settings["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST"
    assert "ROS_STATIC_PEERS" not in settings  # opened to a workstation only on purpose (docs/bringup.md)


def test_sim_graph_discovers_on_localhost_unless_the_user_chose_a_range():
    env, added = dds_environment("sim", {"PATH": "/bin"})
    assert env["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST" and added == {
        "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"
    }
    env, added = dds_environment("sim", {"ROS_AUTOMATIC_DISCOVERY_RANGE": "SUBNET"})
    assert env["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "SUBNET" and added == {}


def test_robot_graph_takes_what_the_shell_leaves_unset_from_dds_env(tmp_path):
    (tmp_path / "dds.env").write_text("# robot\nROS_DOMAIN_ID=42\nROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST\n")
    env, added = dds_environment("panda", {"ROS_DOMAIN_ID": "7"}, tmp_path)
    assert env["ROS_DOMAIN_ID"] == "7" and env["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST"
    assert added == {"ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}
    (tmp_path / "dds.env").write_text("ROS_DOMAIN_ID 42\n")
    with pytest.raises(ValueError, match="dds.env:1: not a KEY=VALUE line"):
        dds_environment("panda", {}, tmp_path)


@pytest.mark.parametrize("graph", ["sim", "panda"])
def test_runner_gives_every_node_process_the_dds_settings_and_its_enclave(graph, tmp_path, monkeypatch, capsys):
    """``python -m d2ppo_bringup.run``'s node processes see the DDS variables and get ``--enclave``."""
    (tmp_path / "policy.json").write_text("{}")
    (tmp_path / "env_probe.py").write_text(
        "import os, sys\n"
        "print('RANGE', os.environ.get('ROS_AUTOMATIC_DISCOVERY_RANGE'), 'DOMAIN', os.environ.get('ROS_DOMAIN_ID'))\n"
        "print('ENCLAVE', sys.argv[sys.argv.index('--enclave') + 1])\n"
    )
    spec = NodeSpec(package="none", executable="d2ppo_no_such_script", module="env_probe", name="probe", required=True)
    monkeypatch.setattr(runner, "build_graph", lambda args: [spec])
    node_process = runner.NodeProcess  # its output to this test's (captured) stdout
    monkeypatch.setattr(runner, "NodeProcess", lambda name, cmd, env: node_process(name, cmd, env=env, out=sys.stdout))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    for var in ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE", "ROS_STATIC_PEERS"):
        monkeypatch.delenv(var, raising=False)
    rc = runner.run(runner.parse_args([graph, "--policy", str(tmp_path), "--namespace", "cell1"]))
    out = capsys.readouterr().out
    assert rc == 0, out
    domain = read_env_file(REPO / "launch" / "dds.env")["ROS_DOMAIN_ID"] if graph == "panda" else "None"
    assert f"[probe] RANGE LOCALHOST DOMAIN {domain}" in out
    assert "[probe] ENCLAVE /cell1/probe" in out
    assert (
        f"[run] DDS: ROS_DOMAIN_ID={'0' if graph == 'sim' else domain} ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST" in out
    )


def test_robot_graph_enclaves_are_the_node_names():
    assert [enclave_name(s) for s in panda_graph("/p", "127.0.0.1")] == ["/camera", "/inference", "/franka"]
    assert enclave_name(panda_graph("/p", "127.0.0.1")[2], "/cell1/") == "/cell1/franka"


def test_test_suite_processes_discover_on_localhost_only():
    sys.path.insert(0, str(REPO / "tests" / "franka"))
    try:
        import franka_harness
    finally:
        sys.path.pop(0)
    assert franka_harness.ros_env(61)["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST"
    # tests/ros: monkeypatch.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST"); tests/real: env.update(...="LOCALHOST")
    for conftest in ("tests/ros/conftest.py", "tests/real/conftest.py"):
        text = (REPO / conftest).read_text()
        assert re.search(r'ROS_AUTOMATIC_DISCOVERY_RANGE(", |=)"LOCALHOST"', text), f"{conftest}: no LOCALHOST range"
    for script in ("scripts/test.sh", "scripts/run_sim_stack.sh"):
        text = (REPO / script).read_text()
        assert re.search(
            r"^export ROS_AUTOMATIC_DISCOVERY_RANGE=(\$\{ROS_AUTOMATIC_DISCOVERY_RANGE:-)?LOCALHOST", text, re.M
        ), script


# --- what LOCALHOST does on the wire -----------------------------------------------------------------


def test_localhost_participants_on_one_host_still_talk(domains, tmp_path):
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    env = _probe_env(domains(), "LOCALHOST")
    heard = _run_probes([([], env, "a", 10.0, ["b"]), ([], env, "b", 10.0, ["a"])], script)
    assert heard == {"a": ["b"], "b": ["a"]}


def _netns_pair(tag: str):
    """Two network namespaces joined by a veth link (10.77.0.1 <-> 10.77.0.2); None where not permitted."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        return None
    names = (f"d2ppo{tag}a", f"d2ppo{tag}b")
    veth = (f"d2v{tag}a", f"d2v{tag}b")
    steps = [
        ["ip", "netns", "add", names[0]],
        ["ip", "netns", "add", names[1]],
        ["ip", "link", "add", veth[0], "type", "veth", "peer", "name", veth[1]],
    ]
    for i in (0, 1):
        steps += [
            ["ip", "link", "set", veth[i], "netns", names[i]],
            ["ip", "-n", names[i], "addr", "add", f"10.77.0.{i + 1}/24", "dev", veth[i]],
            ["ip", "-n", names[i], "link", "set", "lo", "up"],
            ["ip", "-n", names[i], "link", "set", veth[i], "up", "multicast", "on"],
            ["ip", "-n", names[i], "route", "add", "224.0.0.0/4", "dev", veth[i]],
            ["ip", "netns", "exec", names[i], "true"],  # exec works here (it remounts /sys)
        ]
    for step in steps:
        if subprocess.run(step, capture_output=True).returncode != 0:
            _netns_delete(names)
            return None
    return names


def _netns_delete(names) -> None:
    for name in names:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


@pytest.fixture
def two_hosts():
    names = _netns_pair(str(os.getpid() % 100000))
    if names is None:
        pytest.skip("needs root and `ip netns` to build a second host")
    yield names
    _netns_delete(names)


def test_localhost_range_hides_the_graph_from_another_host_and_static_peers_open_it(two_hosts, domains, tmp_path):
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    robot, other = (["ip", "netns", "exec", n] for n in two_hosts)
    subnet, localhost, peered = domains(), domains(), domains()
    heard = _run_probes(
        [
            # control: the link carries DDS discovery and data
            (robot, _probe_env(subnet, "SUBNET"), "robot_subnet", 6.0, ["ws_subnet"]),
            (other, _probe_env(subnet, "SUBNET"), "ws_subnet", 6.0, ["robot_subnet"]),
            # the robot profile: nobody on the other host finds it, even on the same domain
            (robot, _probe_env(localhost, "LOCALHOST"), "robot_local", 3.0, []),
            (other, _probe_env(localhost, "SUBNET"), "ws_local", 3.0, []),
            # one monitoring workstation named in the robot's ROS_STATIC_PEERS (docs/bringup.md)
            (robot, _probe_env(peered, "LOCALHOST", peers="10.77.0.2"), "robot_peered", 6.0, ["ws_peered"]),
            (other, _probe_env(peered, "SUBNET"), "ws_peered", 6.0, ["robot_peered"]),
        ],
        script,
    )
    assert heard["robot_subnet"] == ["ws_subnet"] and heard["ws_subnet"] == ["robot_subnet"]
    assert heard["robot_local"] == [] and heard["ws_local"] == []
    assert heard["robot_peered"] == ["ws_peered"] and heard["ws_peered"] == ["robot_peered"]
