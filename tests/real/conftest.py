"""Helpers for the real-robot-side tests: node processes over real DDS, and an in-test rclpy node.

Every test gets its own ROS_DOMAIN_ID from 100-119 (this suite's range, claimed with a lock file so a
second test run on the same machine takes other ids) and discovery limited to
localhost, so tests cannot hear each other or other suites. Node processes run in their own process
group and are always stopped (SIGINT, then SIGKILL) by the fixture's finalizer.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import ros_domains

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
DOMAINS = range(100, 120)
_next_start = itertools.count()


def _param_value(value) -> str:
    """A ``-p name:=value`` value: JSON is valid YAML, and a JSON string stays a string."""
    if isinstance(value, (bool, int, float, list, tuple)):
        return json.dumps(list(value) if isinstance(value, tuple) else value)
    return json.dumps(str(value))


class NodeProcess:
    """A ROS node started as ``python -m <module> --ros-args -p ...`` with its output in a log file."""

    def __init__(self, module: str, params: dict, env: dict, log_path: Path, param_files=()):
        self.module = module
        self.log_path = log_path
        args = ["--ros-args"]
        for f in param_files:
            args += ["--params-file", str(f)]
        for k, v in params.items():
            args += ["-p", f"{k}:={_param_value(v)}"]
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            [PYTHON, "-m", module, *args], env=env, stdout=self._log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def wait_for_output(self, text: str, timeout: float, count: int = 1) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.output().count(text) >= count:
                return True
            if not self.alive:
                return self.output().count(text) >= count
            time.sleep(0.1)
        return False

    def kill(self) -> None:
        """SIGKILL the whole process group at once (a crash)."""
        if self.alive:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)

    def stop(self, grace: float = 5.0) -> None:
        if self.alive:
            try:
                os.killpg(self.proc.pid, signal.SIGINT)
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
            except ProcessLookupError:
                pass
        self._log.close()


@pytest.fixture
def ros_env():
    """Environment for node processes: a private domain id, localhost-only discovery, Fast DDS."""
    env = dict(os.environ)
    env.pop("RMW_IMPLEMENTATION", None)
    # UDP only: a node SIGKILLed by a test would leave Fast DDS shared-memory segments in /dev/shm.
    domain = ros_domains.claim_domain(DOMAINS, start=next(_next_start))
    env.update(ROS_DOMAIN_ID=str(domain), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
               FASTDDS_BUILTIN_TRANSPORTS="UDPv4", PYTHONUNBUFFERED="1", RCUTILS_COLORIZED_OUTPUT="0")
    yield env
    ros_domains.release_domain(domain)


@pytest.fixture
def spawn(ros_env, tmp_path):
    """``spawn(module, params, name=None, param_files=()) -> NodeProcess``; inline params override the
    files (launch/<file> names are relative to the repository); every process is stopped at teardown."""
    procs: list[NodeProcess] = []

    def _spawn(module: str, params: dict, name: str | None = None, param_files=()) -> NodeProcess:
        log = tmp_path / f"{name or module.rsplit('.', 1)[-1]}.log"
        p = NodeProcess(module, params, ros_env, log, [REPO / f for f in param_files])
        procs.append(p)
        return p

    yield _spawn
    for p in reversed(procs):
        p.stop()


class RosTestNode:
    """An rclpy node inside the test process, on the test's domain, with spin helpers."""

    def __init__(self, domain_id: int):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.node import Node
        from rclpy.signals import SignalHandlerOptions

        self.rclpy = rclpy
        self.context = rclpy.Context()
        # No signal handlers: Ctrl-C stays pytest's. UDP only, like the node processes (see ros_env).
        saved = os.environ.get("FASTDDS_BUILTIN_TRANSPORTS")
        os.environ["FASTDDS_BUILTIN_TRANSPORTS"] = "UDPv4"
        try:
            rclpy.init(context=self.context, domain_id=domain_id, signal_handler_options=SignalHandlerOptions.NO)
            self.node = Node("real_test", context=self.context)
        finally:
            if saved is None:
                os.environ.pop("FASTDDS_BUILTIN_TRANSPORTS")
            else:
                os.environ["FASTDDS_BUILTIN_TRANSPORTS"] = saved
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)

    def spin_for(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.executor.spin_once(timeout_sec=min(0.05, max(0.0, deadline - time.monotonic())))

    def spin_until(self, condition, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return True
            self.executor.spin_once(timeout_sec=0.05)
        return bool(condition())

    def call(self, srv_type, name: str, request=None, timeout: float = 20.0):
        """Call a service, waiting for it to appear; returns the response (fails the test on timeout)."""
        client = self.node.create_client(srv_type, name)
        assert self.spin_until(client.service_is_ready, timeout), f"service {name} did not appear in {timeout} s"
        future = client.call_async(request or srv_type.Request())
        assert self.spin_until(future.done, timeout), f"service {name} did not answer in {timeout} s"
        self.node.destroy_client(client)
        return future.result()

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        self.context.try_shutdown()


@pytest.fixture
def test_node(ros_env):
    n = RosTestNode(int(ros_env["ROS_DOMAIN_ID"]))
    yield n
    n.close()


@pytest.fixture
def make_playback_file():
    """``make_playback_file(path, camera, n_frames=20, shape=(48, 64)) -> frames``: see :func:`write_playback_file`."""
    return write_playback_file


def write_playback_file(path: Path, camera: str, n_frames: int = 20, shape=(48, 64)) -> np.ndarray:
    """A robomimic file whose ``<camera>_image`` frame k is uniformly (10k, 255-10k, 7) -- identifiable
    after any resize. Written with the project's one writer. Returns the frames."""
    from d2ppo.data.robomimic_hdf5 import RobomimicWriter

    frames = np.empty((n_frames, *shape, 3), np.uint8)
    for k in range(n_frames):
        frames[k] = (10 * k, 255 - 10 * k, 7)
    w = RobomimicWriter(path, {"env_name": "PlaybackFixture", "type": 1, "env_kwargs": {}})
    w.add_demo({f"{camera}_image": frames, "robot0_eef_pos": np.zeros((n_frames, 3))}, np.zeros((n_frames, 7)))
    w.close()
    return frames
