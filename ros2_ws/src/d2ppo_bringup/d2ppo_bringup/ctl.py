"""Operator commands for the controller node (the franka node on the robot): one call, one line of answer.

    python -m d2ppo_bringup.ctl enable            controller/enable true   (std_srvs/SetBool)
    python -m d2ppo_bringup.ctl disable           controller/enable false: hold still, ignore chunks
    python -m d2ppo_bringup.ctl home              controller/home          (std_srvs/Trigger)
    python -m d2ppo_bringup.ctl stop              controller/stop          (std_srvs/Trigger): stop now, disable
    python -m d2ppo_bringup.ctl status            the controller's latest /diagnostics status
    python -m d2ppo_bringup.ctl source teleop     the controller node's parameter ``source`` (policy | teleop)

Services and the diagnostics topic are looked up in ``--namespace``; ``source`` and ``status`` address the
controller node by ``--node`` (default ``franka``, its name in ``d2ppo_bringup.graph.panda_graph``).

Exit code: 0 done; 1 the controller answered but refused (its message is printed); 2 nothing answered
within ``--timeout`` seconds (graph down, wrong domain, namespace or node name), with a one-line message
naming the domain and discovery range that were used.

DDS: like ``run panda``, the robot profile's ``launch/dds.env`` fills in ROS_DOMAIN_ID and
ROS_AUTOMATIC_DISCOVERY_RANGE when the shell leaves them unset (set ROS_DOMAIN_ID to talk to another
graph, e.g. ``ROS_DOMAIN_ID=0`` for a default sim stack). With SROS2 on, this tool needs its own enclave
(``--enclave``, default ``/ctl``; docs/bringup.md, "SROS2").
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from d2ppo_bringup.node_processes import dds_environment

EXIT_OK, EXIT_REFUSED, EXIT_NO_ANSWER = 0, 1, 2
LEVELS = {0: "OK", 1: "WARN", 2: "ERROR", 3: "STALE"}
#: Diagnostic values `status` prints (those the controller publishes; every value with --all).
STATUS_KEYS = ("enabled", "faulted", "active_source", "disabled_reason", "last_error", "connected", "homing")
SOURCES = ("policy", "teleop")


class NoAnswer(Exception):
    """Nothing answered in time (exit code 2)."""


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    # Given before the command they set the defaults; after it they override them (SUPPRESS keeps a
    # subcommand from resetting an option it was not given).
    options = (
        ("--namespace", dict(default="", help="ROS namespace of the robot graph (default: none)")),
        (
            "--node",
            dict(default="franka", help="the controller node's name, for `source` and `status` (default: franka)"),
        ),
        ("--timeout", dict(type=float, default=5.0, help="seconds to wait for the service or topic (default: 5)")),
        ("--enclave", dict(default="/ctl", help="SROS2 enclave of this tool, used only with ROS_SECURITY_ENABLE=true")),
    )
    parser = argparse.ArgumentParser(
        prog="python -m d2ppo_bringup.ctl",
        description="Operate the robot's controller node: enable, disable, home, stop, status, source.",
        epilog="Exit code: 0 done, 1 refused by the controller (message printed), 2 no answer within --timeout.",
    )
    for flag, kw in options:
        parser.add_argument(flag, **kw)
        common.add_argument(flag, **{**kw, "default": argparse.SUPPRESS})
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    sub.add_parser("enable", parents=[common], help="controller/enable true: execute the active source's chunks")
    sub.add_parser("disable", parents=[common], help="controller/enable false: hold still, ignore chunks")
    sub.add_parser("home", parents=[common], help="controller/home: joint move to the home pose (enable first)")
    sub.add_parser("stop", parents=[common], help="controller/stop: stop now and disable")
    status = sub.add_parser("status", parents=[common], help="print the controller's latest /diagnostics status")
    status.add_argument("--all", action="store_true", help="print every diagnostic value, not only the key ones")
    source = sub.add_parser("source", parents=[common], help="set whose action chunks the controller executes")
    source.add_argument("source", choices=SOURCES, help="policy (inference node) or teleop (teleop node)")
    return parser


def _absolute(namespace: str) -> str:
    ns = namespace.strip("/")
    return f"/{ns}" if ns else ""


class ControllerClient:
    """An rclpy node in its own context that calls the controller's services and reads /diagnostics."""

    def __init__(self, namespace: str, enclave: str, deadline: float):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        self.deadline = deadline
        self.context = rclpy.Context()
        rclpy.init(context=self.context, args=["d2ppo_ctl", "--ros-args", "--enclave", enclave])
        self.node = rclpy.create_node(
            f"d2ppo_ctl_{os.getpid()}",
            namespace=_absolute(namespace) or "/",
            context=self.context,
            start_parameter_services=False,
        )
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        self.context.try_shutdown()

    def _spin_until(self, condition: Callable[[], bool]) -> bool:
        while not condition():
            left = self.deadline - time.monotonic()
            if left <= 0:
                return False
            self.executor.spin_once(timeout_sec=min(0.05, left))
        return True

    def call(self, srv_type, name: str, request) -> Any:
        client = self.node.create_client(srv_type, name)
        full_name = self.node.resolve_service_name(name)
        try:
            if not self._spin_until(client.service_is_ready):
                raise NoAnswer(f"service {full_name} is not available")
            future = client.call_async(request)
            if not self._spin_until(future.done):
                raise NoAnswer(f"service {full_name} did not answer")
            return future.result()
        finally:
            self.node.destroy_client(client)

    def latest_status(self, node_names: set[str]):
        """The first DiagnosticStatus whose name starts with ``<node>:`` for a name in ``node_names``."""
        from diagnostic_msgs.msg import DiagnosticArray

        found: list = []

        def on_diagnostics(msg: DiagnosticArray) -> None:
            for status in msg.status:
                if status.name.split(":", 1)[0].strip() in node_names:
                    found[:] = [status]
                    return

        sub = self.node.create_subscription(DiagnosticArray, "diagnostics", on_diagnostics, 10)
        try:
            if not self._spin_until(lambda: bool(found)):
                raise NoAnswer(f"no status of {' / '.join(sorted(node_names))} on {sub.topic_name}")
            return found[0]
        finally:
            self.node.destroy_subscription(sub)


def _level(status) -> str:
    level = status.level[0] if isinstance(status.level, (bytes, bytearray)) else int(status.level)
    return LEVELS.get(level, str(level))


def run_command(args: argparse.Namespace, client: ControllerClient) -> tuple[int, str]:
    """(exit code, text to print) of one command against a connected client."""
    from std_srvs.srv import SetBool, Trigger

    if args.command in ("enable", "disable"):
        response = client.call(SetBool, "controller/enable", SetBool.Request(data=args.command == "enable"))
    elif args.command in ("home", "stop"):
        response = client.call(Trigger, f"controller/{args.command}", Trigger.Request())
    elif args.command == "source":
        return _set_source(args, client)
    else:
        return _status(args, client)
    verdict = "ok" if response.success else "refused"
    return (EXIT_OK if response.success else EXIT_REFUSED), f"{args.command}: {verdict}: {response.message}"


def _set_source(args: argparse.Namespace, client: ControllerClient) -> tuple[int, str]:
    from rcl_interfaces.srv import SetParameters
    from rclpy.parameter import Parameter

    target = f"{_absolute(args.namespace)}/{args.node}"
    request = SetParameters.Request(
        parameters=[Parameter("source", Parameter.Type.STRING, args.source).to_parameter_msg()]
    )
    result = client.call(SetParameters, f"{target}/set_parameters", request).results[0]
    if result.successful:
        return EXIT_OK, f"source: ok: {target} executes {args.source} chunks"
    return EXIT_REFUSED, f"source: refused by {target}: {result.reason or 'no reason given'}"


def _status(args: argparse.Namespace, client: ControllerClient) -> tuple[int, str]:
    status = client.latest_status({f"{_absolute(args.namespace)}/{args.node}", args.node})
    values = {kv.key: kv.value for kv in status.values}
    keys = list(values) if args.all else [k for k in STATUS_KEYS if k in values]
    lines = [f"{status.name}: {_level(status)}: {status.message}"]
    lines += [f"  {k}: {values[k]}" for k in keys]
    return EXIT_OK, "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        _, added = dds_environment("panda")
    except (OSError, ValueError) as e:  # no launch/dds.env to be found: the shell's settings only
        added = {}
        print(f"ctl: robot DDS defaults not applied ({e})", file=sys.stderr)
    os.environ.update(added)  # read by rcl when the context starts
    where = (
        f"ROS_DOMAIN_ID={os.environ.get('ROS_DOMAIN_ID', '0')}, "
        f"ROS_AUTOMATIC_DISCOVERY_RANGE={os.environ.get('ROS_AUTOMATIC_DISCOVERY_RANGE', 'SUBNET')}"
        + (f"; {', '.join(added)} from launch/dds.env" if added else "")
    )
    try:
        client = ControllerClient(args.namespace, args.enclave, time.monotonic() + args.timeout)
    except Exception as e:  # noqa: BLE001 - rcl's errors (e.g. an SROS2 enclave missing) end in one line
        print(f"ctl {args.command}: cannot join the ROS graph ({where}): {e}".splitlines()[0], file=sys.stderr)
        sys.exit(EXIT_NO_ANSWER)
    try:
        code, text = run_command(args, client)
    except NoAnswer as e:
        code, text = (
            EXIT_NO_ANSWER,
            f"ctl {args.command}: {e} within {args.timeout:g} s ({where}); is the graph running?",
        )
    except KeyboardInterrupt:
        code, text = 130, f"ctl {args.command}: interrupted"
    finally:
        client.close()
    # The controller's answers (done or refused) go to stdout; "nobody answered" to stderr.
    print(text, file=sys.stdout if code in (EXIT_OK, EXIT_REFUSED) else sys.stderr)
    sys.exit(code)


if __name__ == "__main__":
    main()
