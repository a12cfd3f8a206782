"""The operator CLI (``python -m d2ppo_bringup.ctl``) against a controller over real DDS.

The controller here is a small rclpy node in the test process that offers the franka node's interface
(controller/enable, controller/home, controller/stop, the ``source`` parameter, a ``<fqn>: controller``
status on diagnostics) with the franka node's rules for refusing; the franka node itself needs
franky-sim and is covered by tests/franka. The CLI runs as its own process, as an operator runs it.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

NAMESPACE = "cell1"


class FakeController:
    """``/<ns>/franka``: the franka node's services, ``source`` parameter and diagnostics, nothing else."""

    def __init__(self, domain_id: int, namespace: str):
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.executors import MultiThreadedExecutor
        from rclpy.signals import SignalHandlerOptions
        from std_srvs.srv import SetBool, Trigger

        self.enabled = False
        self.disabled_reason = "start"
        self.requests: list[str] = []
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain_id, signal_handler_options=SignalHandlerOptions.NO)
        self.node = rclpy.create_node("franka", namespace=namespace, context=self.context)
        self.node.declare_parameter("source", "policy")
        # A node of the graph without the parameter: `source --node inference` must be refused.
        self.other = rclpy.create_node("inference", namespace=namespace, context=self.context)
        self.node.create_service(SetBool, "controller/enable", self._on_enable)
        self.node.create_service(Trigger, "controller/home", self._on_home)
        self.node.create_service(Trigger, "controller/stop", self._on_stop)
        self.diag_pub = self.node.create_publisher(DiagnosticArray, "diagnostics", 10)
        self.node.create_timer(0.1, self._publish_diagnostics)
        self.executor = MultiThreadedExecutor(num_threads=2, context=self.context)
        self.executor.add_node(self.node)
        self.executor.add_node(self.other)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def _on_enable(self, request, response):
        self.requests.append(f"enable {request.data}")
        self.enabled = bool(request.data)
        self.disabled_reason = "" if self.enabled else "operator"
        response.success, response.message = True, "enabled" if self.enabled else "disabled, holding still"
        return response

    def _on_home(self, request, response):
        self.requests.append("home")
        if not self.enabled:
            response.success, response.message = False, f"home refused: disabled ({self.disabled_reason}); enable first"
        else:
            response.success, response.message = True, "homing"
        return response

    def _on_stop(self, request, response):
        self.requests.append("stop")
        self.enabled, self.disabled_reason = False, "stopped by the operator"
        response.success, response.message = True, "stopped; call enable to resume"
        return response

    def _publish_diagnostics(self) -> None:
        from d2ppo_control.ros_conversions import diagnostic_status
        from diagnostic_msgs.msg import DiagnosticArray

        values = {
            "enabled": int(self.enabled),
            "faulted": 0,
            "active_source": self.node.get_parameter("source").value,
            "disabled_reason": self.disabled_reason,
            "last_error": "",
            "motions_sent": 7,
        }
        level, message = (0, "running") if self.enabled else (1, "disabled, holding still")
        msg = DiagnosticArray()
        # Another node's status first: `status` must pick the controller's by name.
        msg.status = [
            diagnostic_status(f"/{NAMESPACE}/inference: policy", 0, "ok", {"enabled": 1}),
            diagnostic_status(f"{self.node.get_fully_qualified_name()}: controller", level, message, values),
        ]
        self.diag_pub.publish(msg)

    def close(self) -> None:
        self.executor.shutdown()
        self.thread.join(timeout=5)
        self.node.destroy_node()
        self.other.destroy_node()
        self.context.try_shutdown()


@pytest.fixture
def controller(ros_env):
    c = FakeController(int(ros_env["ROS_DOMAIN_ID"]), NAMESPACE)
    yield c
    c.close()


def ctl(env: dict, *commands: list[str], timeout: float = 10.0) -> list[subprocess.CompletedProcess]:
    """Run the CLI once per command, all at the same time (each waits ~0.1-2.5 s for DDS discovery)."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "d2ppo_bringup.ctl", *cmd, "--timeout", str(timeout)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for cmd in commands
    ]
    results = []
    for cmd, p in zip(commands, procs):
        stdout, stderr = p.communicate(timeout=timeout + 30)
        results.append(subprocess.CompletedProcess(cmd, p.returncode, stdout, stderr))
    return results


def test_each_command_reaches_the_controller_and_exits_by_its_answer(controller, ros_env):
    ns = ["--namespace", NAMESPACE]

    # Disabled: status says so, home is refused (exit 1, the controller's reason), and so is `source` on
    # a node without that parameter.
    status, home, refused = ctl(
        ros_env, ["status", *ns], ["home", *ns], ["source", "policy", "--node", "inference", *ns]
    )
    assert status.returncode == 0, status.stderr
    lines = status.stdout.splitlines()
    assert lines[0] == f"/{NAMESPACE}/franka: controller: WARN: disabled, holding still"
    assert lines[1:] == [
        "  enabled: 0",
        "  faulted: 0",
        "  active_source: policy",
        "  disabled_reason: start",
        "  last_error: ",
    ]
    assert home.returncode == 1 and home.stdout.strip() == "home: refused: home refused: disabled (start); enable first"
    assert refused.returncode == 1 and refused.stdout.startswith(f"source: refused by /{NAMESPACE}/inference:")
    assert "undeclared parameter" in refused.stdout  # rclpy's own reason, passed through

    (enable,) = ctl(ros_env, [*ns, "enable"])  # options before the command work too
    assert enable.returncode == 0 and enable.stdout.strip() == "enable: ok: enabled", enable.stderr

    home, source = ctl(ros_env, ["home", *ns], ["source", "teleop", *ns])
    assert home.returncode == 0 and home.stdout.strip() == "home: ok: homing"
    assert source.returncode == 0 and source.stdout.strip() == f"source: ok: /{NAMESPACE}/franka executes teleop chunks"
    assert controller.node.get_parameter("source").value == "teleop"

    (status,) = ctl(ros_env, ["status", "--all", *ns])
    assert status.returncode == 0
    assert status.stdout.startswith(f"/{NAMESPACE}/franka: controller: OK: running")
    assert "  active_source: teleop" in status.stdout.splitlines() and "  motions_sent: 7" in status.stdout

    stop, disable = ctl(ros_env, ["stop", *ns], ["disable", *ns])
    assert stop.returncode == 0 and stop.stdout.strip() == "stop: ok: stopped; call enable to resume"
    assert disable.returncode == 0 and disable.stdout.strip() == "disable: ok: disabled, holding still"
    assert controller.requests[:3] == ["home", "enable True", "home"]
    assert sorted(controller.requests[3:]) == ["enable False", "stop"] and not controller.enabled


def test_no_answer_exits_2_with_one_line_naming_the_service_and_domain(controller, ros_env):
    # The controller runs in namespace cell1; without --namespace nothing offers the service or status.
    start = time.monotonic()
    commands = {"enable": ["enable"], "status": ["status"], "source teleop": ["source", "teleop"]}
    results = ctl(ros_env, *commands.values(), timeout=1.5)
    out = {name: (r.returncode, r.stdout, r.stderr) for name, r in zip(commands, results)}
    assert time.monotonic() - start < 15
    domain = f"ROS_DOMAIN_ID={ros_env['ROS_DOMAIN_ID']}, ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST"
    expected = {
        "enable": "ctl enable: service /controller/enable is not available within 1.5 s",
        "status": "ctl status: no status of /franka / franka on /diagnostics within 1.5 s",
        "source teleop": "ctl source: service /franka/set_parameters is not available within 1.5 s",
    }
    for cmd, (rc, stdout, stderr) in out.items():
        assert rc == 2 and stdout == "", (cmd, rc, stdout, stderr)
        assert len(stderr.strip().splitlines()) == 1 and stderr.startswith(expected[cmd]), (cmd, stderr)
        assert domain in stderr, stderr
    assert controller.requests == []
