"""Start ROS node processes, stop them reliably, and clean up after the ones that had to be killed.

Used by the graph runner, the ROS tests and the latency benchmark. Each node runs in its own
process group, so stopping it also stops anything it started. Stopping escalates SIGINT (rclpy
shuts down cleanly and removes its Fast DDS segments) -> SIGTERM -> SIGKILL. A process killed with
SIGKILL leaves its Fast DDS shared-memory segments in /dev/shm (DESIGN.md); ``clean_fastdds_shm``
removes those whose owner is gone.

DDS environment of a graph (``dds_environment``): the sim graph discovers on localhost only (a robot on
the LAN listening in the same domain must never receive sim chunks); the robot graph (``panda``) takes
its domain and discovery range from ``launch/dds.env``, the one file docker compose and the robot
image's entrypoint read too. Variables already set in the environment always win. Each node runs in
the SROS2 enclave named like the node (``enclave_name``); it matters only with ROS_SECURITY_ENABLE=true.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TextIO

from d2ppo_bringup.graph import NodeSpec, launch_dir, node_fqn, ros_arguments

SHM_DIR = Path("/dev/shm")
DDS_ENV_FILE = "dds.env"
#: Discovery range of the sim graph and the tests when the environment sets none (ROS 2's default is SUBNET).
SIM_DISCOVERY_RANGE = "LOCALHOST"


def read_env_file(path: Path) -> dict[str, str]:
    """``KEY=VALUE`` lines of a docker compose env file, in order; blank lines and ``#`` comments skipped."""
    values: dict[str, str] = {}
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip().isidentifier():
            raise ValueError(f"{path}:{n}: not a KEY=VALUE line: {line!r}")
        values[key.strip()] = value
    return values


def dds_environment(
    graph: str, env: Mapping[str, str] | None = None, launch_directory: Path | None = None
) -> tuple[dict[str, str], dict[str, str]]:
    """(environment for the ``graph``'s processes, the DDS settings this added to ``env``).

    ``sim``: ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST unless set. ``panda`` (the robot profile): every
    variable of ``<launch dir>/dds.env`` that ``env`` leaves unset. ``env`` defaults to this process's.
    """
    out = dict(os.environ if env is None else env)
    if graph == "panda":
        defaults = read_env_file((launch_directory or launch_dir()) / DDS_ENV_FILE)
    else:
        defaults = {"ROS_AUTOMATIC_DISCOVERY_RANGE": SIM_DISCOVERY_RANGE}
    added = {k: v for k, v in defaults.items() if k not in out}
    out.update(added)
    return out, added


def enclave_name(spec: NodeSpec, namespace: str = "") -> str:
    """The node's SROS2 enclave: its fully qualified name (``/franka``, ``/robot1/franka``)."""
    return node_fqn(spec, namespace)


def node_command(
    spec: NodeSpec, scratch_dir: Path, namespace: str = "", launch_directory: Path | None = None
) -> list[str]:
    """The command line of one node: its console script beside this interpreter, else ``python -m``.

    ``scratch_dir``: where the node's inline parameter file is written (keep it until the node exits).
    The node runs in its own SROS2 enclave (``enclave_name``), used only when security is enabled.
    """
    script = Path(sys.executable).parent / spec.executable
    found = str(script) if script.is_file() else shutil.which(spec.executable)
    head = [found] if found else [sys.executable, "-m", spec.module]
    inline = Path(scratch_dir) / f"{spec.name}.params.yaml"
    enclave = ["--enclave", enclave_name(spec, namespace)]
    return head + ros_arguments(spec, namespace, launch_directory, inline) + enclave


class NodeProcess:
    """One child process in its own process group, its output prefixed with ``[name]``.

    Args:
        name: log prefix.
        command: argv.
        env: environment (default: this process's).
        out: where prefixed lines go (default stdout); None keeps them in ``lines`` only.
        keep_lines: how many recent lines to keep for error messages and tests.
    """

    def __init__(
        self,
        name: str,
        command: Sequence[str],
        env: dict[str, str] | None = None,
        out: TextIO | None = sys.stdout,
        keep_lines: int = 400,
    ):
        self.name = name
        self.command = list(command)
        self.lines: list[str] = []
        self._keep = keep_lines
        self._out = out
        self._out_lock = threading.Lock()
        env = dict(os.environ if env is None else env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        self.proc = subprocess.Popen(
            self.command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            text=True,
            errors="replace",
        )
        self.killed = False
        self._reader = threading.Thread(target=self._pump, name=f"log-{name}", daemon=True)
        self._reader.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            self.lines.append(line)
            del self.lines[: -self._keep]
            if self._out is not None:
                with self._out_lock:
                    print(f"[{self.name}] {line}", file=self._out, flush=True)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def poll(self) -> int | None:
        return self.proc.poll()

    def wait_for_line(self, predicate: Callable[[str], bool], timeout: float) -> bool:
        """Wait until an output line satisfies ``predicate`` (True) or ``timeout`` s / exit (False)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(predicate(x) for x in list(self.lines)):
                return True
            if self.proc.poll() is not None:
                time.sleep(0.1)  # let the reader drain the last lines
                return any(predicate(x) for x in list(self.lines))
            time.sleep(0.05)
        return False

    def _signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def stop(self, grace: float = 5.0) -> int:
        """SIGINT, then SIGTERM, then SIGKILL (whole process group); returns the exit code."""
        for sig, wait in ((signal.SIGINT, grace), (signal.SIGTERM, 2.0), (signal.SIGKILL, 5.0)):
            if self.proc.poll() is not None:
                break
            self._signal_group(sig)
            if sig == signal.SIGKILL:
                self.killed = True
            try:
                self.proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
        # Children of the node (none expected) die with the group.
        self._signal_group(signal.SIGKILL)
        self._reader.join(timeout=2.0)
        return self.proc.returncode if self.proc.returncode is not None else -9


def stop_all(processes: Sequence[NodeProcess], grace: float = 5.0) -> None:
    """Stop every process (signals go out to all first, so their grace periods overlap)."""
    for p in processes:
        if p.poll() is None:
            p._signal_group(signal.SIGINT)
    deadline = time.monotonic() + grace
    for p in processes:
        try:
            p.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for p in processes:
        p.stop(grace=0.5)
    if any(p.killed for p in processes):
        clean_fastdds_shm()


def clean_fastdds_shm(min_age: float = 2.0, shm_dir: Path = SHM_DIR) -> list[str]:
    """Remove Fast DDS shared-memory segments whose owning process is gone; returns the removed names.

    Every live participant holds a ``flock`` on the ``<segment>_el`` file beside each segment (and
    port) it uses; a segment whose lock can be taken has no owner left. Files younger than
    ``min_age`` seconds are skipped, so a participant that is still starting is never touched.
    """
    removed: list[str] = []
    now = time.time()
    for el in sorted(shm_dir.glob("fast*_el")):
        if not (el.name.startswith("fastdds_") or el.name.startswith("fastrtps_")):
            continue
        try:
            if now - el.stat().st_mtime < min_age:
                continue
            fd = os.open(el, os.O_RDWR)
        except OSError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # a live participant holds it
            base = el.name[: -len("_el")]
            for name in (base, el.name, f"sem.{base}_mutex"):
                try:
                    (shm_dir / name).unlink()
                    removed.append(name)
                except FileNotFoundError:
                    pass
        finally:
            os.close(fd)
    return removed
