"""Fixtures for the deployment-stack tests: node processes over real DDS and an in-test rclpy node.

Each test gets its own ROS_DOMAIN_ID from 80-99 (this suite's range; claimed with a lock file, so a
second test run on the same machine takes other ids) with discovery limited to localhost and UDP
transport only, so tests cannot hear each other or other suites, and a node SIGKILLed by one test
leaves no shared-memory port behind for the next. Node processes are started through
``d2ppo_bringup.node_processes`` (own process group) and always stopped by a finalizer:
SIGINT, then SIGTERM, then SIGKILL, after which orphaned Fast DDS segments in /dev/shm are removed.
"""

from __future__ import annotations

import itertools
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import ros_domains

REPO = Path(__file__).resolve().parents[2]
DOMAINS = range(80, 100)
_next_start = itertools.count()


@pytest.fixture(scope="session")
def tiny_policy(tmp_path_factory) -> Path:
    """A randomly initialised, small policy package of the real format: one 32 px camera."""
    from d2ppo.model import PolicyConfig
    from d2ppo.obs import ObsSpec
    from d2ppo.package import make_random_policy

    cfg = PolicyConfig(mlp_dims=(64, 64, 64), vit_dim=32, vit_heads=2, spatial_emb=32)
    spec = ObsSpec(camera_names=("agentview",), image_size=32)
    return make_random_policy(tmp_path_factory.mktemp("policies") / "tiny_img", spec=spec, cfg=cfg)


@pytest.fixture
def claim_domain():
    """``claim_domain()`` -> a ROS_DOMAIN_ID of this suite's range held for this test only."""
    claimed: list[int] = []

    def claim() -> int:
        claimed.append(ros_domains.claim_domain(DOMAINS, start=next(_next_start)))
        return claimed[-1]

    yield claim
    for domain in claimed:
        ros_domains.release_domain(domain)


@pytest.fixture
def ros_env(monkeypatch, claim_domain) -> dict[str, str]:
    """Environment for this test's node processes (and this process): own domain, localhost, UDP only."""
    monkeypatch.setenv("ROS_DOMAIN_ID", str(claim_domain()))
    monkeypatch.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    monkeypatch.setenv("FASTDDS_BUILTIN_TRANSPORTS", "UDPv4")
    monkeypatch.delenv("RMW_IMPLEMENTATION", raising=False)
    monkeypatch.setenv("MUJOCO_GL", os.environ.get("MUJOCO_GL", "egl"))
    monkeypatch.setenv("PYTHONUNBUFFERED", "1")
    return dict(os.environ)


@pytest.fixture
def start_node(ros_env, tmp_path) -> Callable:
    """``start_node(spec_or_argv, name=None)`` -> NodeProcess; every process is stopped at teardown."""
    from d2ppo_bringup.graph import NodeSpec
    from d2ppo_bringup.node_processes import NodeProcess, node_command, stop_all

    started: list[NodeProcess] = []

    def start(what, name: str | None = None):
        if isinstance(what, NodeSpec):
            argv = node_command(what, tmp_path)
            name = name or what.name
        else:
            argv = list(what)
        proc = NodeProcess(name or Path(argv[0]).name, argv, env=ros_env, out=sys.stdout)
        started.append(proc)
        return proc

    yield start
    stop_all(started, grace=5.0)


@pytest.fixture
def test_node(ros_env):
    """An rclpy node in this process, on this test's domain."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.signals import SignalHandlerOptions

    context = rclpy.Context()
    # No rclpy signal handlers in the pytest process: Ctrl-C must still reach pytest.
    rclpy.init(context=context, domain_id=int(ros_env["ROS_DOMAIN_ID"]), signal_handler_options=SignalHandlerOptions.NO)
    node = rclpy.create_node("test_probe", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    node.spin_for = lambda seconds: spin_until(executor, lambda: False, seconds)  # type: ignore[attr-defined]
    node.spin_until = lambda cond, timeout: spin_until(executor, cond, timeout)  # type: ignore[attr-defined]
    yield node
    executor.shutdown()
    node.destroy_node()
    rclpy.shutdown(context=context)


def spin_until(executor, condition: Callable[[], bool], timeout: float) -> bool:
    """Spin until ``condition()`` holds (True) or ``timeout`` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        executor.spin_once(timeout_sec=0.02)
    return condition()
