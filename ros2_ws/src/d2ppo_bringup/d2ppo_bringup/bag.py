"""Record a stack run to one MCAP file: ``python -m d2ppo_bringup.bag --out run.mcap``.

A node of its own (its own process, subscribing over DDS like any other node) that records, as the
graph publishes them, the topics named by ``--topics`` (shell-style patterns; default ``DEFAULT_TOPICS``:
every ``cameras/*/image_raw``, ``robot/joint_states``, ``robot/ee_pose``, ``policy/action_chunk``,
``controller/executed``, ``/diagnostics`` and ``/clock``). Relative names are looked up in ``--namespace``;
``/diagnostics`` and ``/clock`` are global, like the nodes publish them. Names the contract gives a type
(``KNOWN_TYPES``: joint states, ee pose, chunks, executed actions, diagnostics, clock) are subscribed at
start, reliable, so they are recorded from their first message; any other match (each camera) is
subscribed once a publisher of it is discovered (polled every 0.1 s, like ``ros2 bag record``; what it
sent before is not recorded), with the publishers' reliability and durability. A best-effort publisher
never matches a reliable subscription, so one showing up turns that topic's subscription best-effort.

File: MCAP, profile ``ros2`` — the format ``ros2 bag record -s mcap`` writes, readable by Foxglove,
``ros2 bag info|play run.mcap`` and ``mcap``'s reader with ``mcap_ros2.decoder.DecoderFactory``:

- messages: ``cdr`` bytes exactly as they arrived (raw subscriptions, never decoded and re-encoded);
- schemas: ``ros2msg``, named ``pkg/msg/Type``, holding the complete message definition (the type's
  ``.msg`` file, then every nested type's after a ``MSG: pkg/msg/Type`` delimiter, rosbag2's encoding),
  read from the ``.msg`` files the ROS packages install (``share/<pkg>/msg``, in the pip wheels too);
- channels carry ``topic_type_hash`` (RIHS01, from the installed type description) like rosbag2's;
- log time = receive time on this node's clock (sim time with ``--use-sim-time``: the graph's clock, so
  ``log time − header.stamp`` is a latency on the clock the stamps are on); publish time = the message's
  ``header.stamp`` where it has a std_msgs/Header, else its log time. Under sim time, what arrives
  before the first /clock is logged at the first clock value.

Stopping: SIGINT or SIGTERM finishes the file (last chunk, summary, indexes, footer) under
``<out>.part`` and renames it to ``<out>`` (an existing ``<out>`` is replaced). The name ``<out>`` thus
only ever holds a complete file. A recording killed with SIGKILL (or a power cut) leaves ``<out>.part``:
the chunks finished before the kill (1 MB of messages each; the open one is lost), without summary —
readable by streaming readers; ``mcap recover <out>.part -o run.mcap`` (the mcap CLI) rebuilds the indexes.

Bad input (an output folder that does not exist, a path that cannot be written, a name not ending in
``.mcap``) stops with one line on stderr and exit code 2 before anything starts (``check_output``, which
the graph runner calls too).
"""

from __future__ import annotations

import argparse
import fnmatch
import importlib
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

#: What a stack run is recorded with by default (relative names are in the graph's namespace).
DEFAULT_TOPICS = (
    "cameras/*/image_raw",
    "robot/joint_states",
    "robot/ee_pose",
    "policy/action_chunk",
    "controller/executed",
    "/diagnostics",
    "diagnostics",  # the franka node publishes its status in its namespace
    "/clock",
)
#: Types the contract (DESIGN.md, ROS 2 interface) fixes, by the end of the topic name (any namespace).
KNOWN_TYPES = {
    "robot/joint_states": "sensor_msgs/msg/JointState",
    "robot/ee_pose": "geometry_msgs/msg/PoseStamped",
    "policy/action_chunk": "trajectory_msgs/msg/JointTrajectory",
    "controller/executed": "trajectory_msgs/msg/JointTrajectory",
    "diagnostics": "diagnostic_msgs/msg/DiagnosticArray",
    "clock": "rosgraph_msgs/msg/Clock",
}
PART_SUFFIX = ".part"
#: Messages held while sim time has not started (beyond this they are dropped and counted).
MAX_BEFORE_CLOCK = 2000
DISCOVERY_PERIOD_S = 0.1  # like ros2 bag record's --polling-interval
#: Keep-last depth of the recorder's subscriptions: room for bursts while a chunk is compressed.
DEPTH = 100
_DELIMITER = "=" * 80


class BagError(Exception):
    """A recording that cannot start or cannot be written (one line: what and why)."""


# --- the output path -------------------------------------------------------------------------------


def part_path(out: Path) -> Path:
    """Where a recording is written until it is finished: ``<out>.part`` beside ``<out>``."""
    out = Path(out)
    return out.with_name(out.name + PART_SUFFIX)


def check_output(out: str | os.PathLike) -> Path:
    """The recording's path, checked before anything starts; BagError (one line) if it cannot be written.

    The folder must exist (it is not created: a typo must not silently record elsewhere), the name must
    end in ``.mcap`` (Foxglove and ``ros2 bag`` pick the format by it) and name no folder, and a file must
    be creatable there (tried with ``<out>.part``, removed again: permissions, read-only file systems).
    """
    path = Path(out)
    if path.suffix != ".mcap":
        raise BagError(f"bag: '{out}': the recording's name must end in .mcap")
    folder = path.parent
    if not folder.exists():
        raise BagError(f"bag: '{out}': the folder '{folder}' does not exist")
    if not folder.is_dir():
        raise BagError(f"bag: '{out}': '{folder}' is not a folder")
    if path.is_dir():
        raise BagError(f"bag: '{out}' is a folder, not a file name")
    probe = part_path(path)
    existed = probe.exists()
    try:
        with open(probe, "ab"):
            pass
    except OSError as e:
        raise BagError(f"bag: '{out}' cannot be written: {e.strerror or e}") from None
    if not existed:
        probe.unlink(missing_ok=True)
    return path


# --- message definitions --------------------------------------------------------------------------


def _share_dirs() -> list[Path]:
    """Install prefixes' share folders: AMENT_PREFIX_PATH (a sourced ROS install), then this environment's."""
    prefixes = [p for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
    prefixes.append(sys.prefix)
    return [Path(p) / "share" for p in dict.fromkeys(prefixes)]


def interface_file(type_name: str, ext: str = "msg") -> Path:
    """``share/<pkg>/msg/<Type>.<ext>`` of an installed message type ``pkg/msg/Type``; BagError if missing."""
    pkg, _, name = _split_type(type_name)
    for share in _share_dirs():
        f = share / pkg / "msg" / f"{name}.{ext}"
        if f.is_file():
            return f
    raise BagError(f"bag: no {name}.{ext} of {pkg} in {', '.join(str(s) for s in _share_dirs())}")


def _split_type(type_name: str) -> tuple[str, str, str]:
    """``pkg/msg/Type`` or ``pkg/Type`` -> (pkg, "msg", Type)."""
    parts = type_name.split("/")
    if len(parts) == 3 and parts[1] == "msg":
        return parts[0], "msg", parts[2]
    if len(parts) == 2:
        return parts[0], "msg", parts[1]
    raise BagError(f"bag: '{type_name}' is not a message type name (pkg/msg/Type)")


def message_definition(type_name: str) -> str:
    """The complete ``ros2msg`` definition of ``pkg/msg/Type``: its .msg text, then each nested type's
    (depth first, each once) after an 80-``=`` line and ``MSG: pkg/msg/Type`` — rosbag2's encoding."""
    from rosidl_adapter.parser import parse_message_string

    order: list[str] = []
    texts: dict[str, str] = {}

    def visit(full: str) -> None:
        if full in texts:
            return
        pkg, _, name = _split_type(full)
        text = interface_file(full).read_text()
        texts[full] = text
        order.append(full)
        for field in parse_message_string(pkg, name, text).fields:
            if not field.type.is_primitive_type():
                visit(f"{field.type.pkg_name}/msg/{field.type.type}")

    pkg, _, name = _split_type(type_name)
    visit(f"{pkg}/msg/{name}")
    parts = [texts[order[0]].rstrip("\n") + "\n"]
    for dep in order[1:]:
        parts.append(f"{_DELIMITER}\nMSG: {dep}\n{texts[dep].rstrip(chr(10))}\n")
    return "".join(parts)


def type_hash(type_name: str) -> str | None:
    """The type's RIHS01 hash from the installed type description (``<Type>.json``), or None."""
    try:
        hashes = json.loads(interface_file(type_name, "json").read_text())["type_hashes"]
    except (BagError, OSError, KeyError, ValueError):
        return None
    pkg, _, name = _split_type(type_name)
    return next((h["hash_string"] for h in hashes if h.get("type_name") == f"{pkg}/msg/{name}"), None)


def message_class(type_name: str) -> type:
    """The Python class of ``pkg/msg/Type`` (``from pkg.msg import Type``); BagError if not importable."""
    pkg, _, name = _split_type(type_name)
    try:
        return getattr(importlib.import_module(f"{pkg}.msg"), name)
    except (ImportError, AttributeError) as e:
        raise BagError(f"bag: cannot import {pkg}.msg.{name}: {e}") from None


def header_stamp_reader(cls: type) -> Callable[[bytes], int] | None:
    """For a type whose first field is a std_msgs/Header: a function CDR bytes -> header.stamp in ns."""
    fields = cls.get_fields_and_field_types()
    if next(iter(fields.items()), None) != ("header", "std_msgs/Header"):
        return None
    from rclpy.serialization import deserialize_message

    def stamp(data: bytes) -> int:
        s = deserialize_message(data, cls).header.stamp
        return s.sec * 1_000_000_000 + s.nanosec

    return stamp


# --- the file (no ROS) ----------------------------------------------------------------------------


class McapBag:
    """One MCAP file of ROS 2 messages, written under ``<out>.part`` and renamed to ``<out>`` by ``close``.

    Args:
        out: the final path (checked with ``check_output`` first).
        metadata: key/values stored as the file's ``d2ppo_bag`` metadata record.
    """

    def __init__(self, out: str | os.PathLike, metadata: dict[str, str] | None = None):
        from mcap.writer import CompressionType, Writer

        self.out = Path(out)
        self.part = part_path(self.out)
        self._file = open(self.part, "wb")
        self._writer = Writer(self._file, compression=CompressionType.ZSTD)
        self._writer.start(profile="ros2", library=_library())
        if metadata:
            self._writer.add_metadata("d2ppo_bag", {k: str(v) for k, v in metadata.items()})
        self._definitions: dict[str, bytes] = {}  # type -> complete ros2msg definition
        self._declared: dict[str, str] = {}  # topic -> type
        self._schemas: dict[str, int] = {}
        self._channels: dict[str, int] = {}
        self.counts: dict[str, int] = {}
        self.closed = False

    def add_topic(self, topic: str, type_name: str) -> None:
        """Declare ``topic`` of ``pkg/msg/Type`` (BagError without an installed definition). Its schema
        (once per type) and channel go into the file with its first message, so a declared topic that
        never publishes leaves no empty channel."""
        pkg, _, name = _split_type(type_name)
        full = f"{pkg}/msg/{name}"
        if full not in self._definitions:
            self._definitions[full] = message_definition(full).encode()
        self._declared[topic] = full

    def _channel(self, topic: str) -> int:
        if topic not in self._channels:
            full = self._declared[topic]
            if full not in self._schemas:
                self._schemas[full] = self._writer.register_schema(full, "ros2msg", self._definitions[full])
            meta = {"topic_type_hash": h} if (h := type_hash(full)) else {}
            self._channels[topic] = self._writer.register_channel(topic, "cdr", self._schemas[full], meta)
            self.counts[topic] = 0
        return self._channels[topic]

    def write(self, topic: str, data: bytes, log_time_ns: int, publish_time_ns: int) -> None:
        """One message of a declared topic: CDR ``data`` as received, times in integer nanoseconds."""
        channel = self._channel(topic)
        self.counts[topic] += 1
        self._writer.add_message(
            channel_id=channel, log_time=log_time_ns, data=data, publish_time=publish_time_ns,
            sequence=self.counts[topic],
        )  # fmt: skip

    def flush(self) -> None:
        """Push finished chunks to the OS (what a killed recording leaves in ``<out>.part``)."""
        self._file.flush()

    def close(self) -> Path:
        """Finish the file (summary, indexes, footer), sync it, rename ``<out>.part`` -> ``<out>``."""
        if not self.closed:
            self._writer.finish()
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            os.replace(self.part, self.out)
            self.closed = True
        return self.out


def _library() -> str:
    from importlib.metadata import version

    return f"d2ppo_bringup.bag; mcap {version('mcap')}"


# --- the node -------------------------------------------------------------------------------------


def resolve_patterns(patterns: Iterable[str], namespace: str = "") -> list[str]:
    """Absolute topic patterns: relative ones are put in ``namespace``; duplicates dropped, order kept."""
    ns = namespace.strip("/")
    out = [p if p.startswith("/") else (f"/{ns}/{p}" if ns else f"/{p}") for p in patterns]
    return list(dict.fromkeys(out))


def known_type(topic: str) -> str | None:
    """The contract's type of an absolute topic name (``/cell1/robot/ee_pose`` -> PoseStamped), or None."""
    return next((t for end, t in KNOWN_TYPES.items() if topic.endswith("/" + end)), None)


def _qos_of_publishers(infos: Sequence) -> tuple:
    """(reliability, durability) a subscription needs to match every publisher in ``infos`` and lose nothing."""
    from rclpy.qos import DurabilityPolicy, ReliabilityPolicy

    reliable = all(i.qos_profile.reliability == ReliabilityPolicy.RELIABLE for i in infos)
    latched = bool(infos) and all(i.qos_profile.durability == DurabilityPolicy.TRANSIENT_LOCAL for i in infos)
    return (
        ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT,
        DurabilityPolicy.TRANSIENT_LOCAL if latched else DurabilityPolicy.VOLATILE,
    )


def make_recorder_node(bag: McapBag, patterns: Sequence[str], use_sim_time: bool, name: str = "bag_recorder"):
    """The recorder node: discovers matching topics, subscribes raw, writes each message to ``bag``."""
    from rclpy.node import Node
    from rclpy.parameter import Parameter
    from rclpy.qos import HistoryPolicy, QoSProfile

    class BagRecorder(Node):
        def __init__(self):
            super().__init__(name, parameter_overrides=[Parameter("use_sim_time", value=use_sim_time)])
            self.patterns = list(patterns)
            self.subscribed: dict[str, tuple] = {}  # topic -> (subscription, type, reliability, publishers seen)
            self.skipped: set[str] = set()
            self.pending: list[tuple[str, bytes, int | None]] = []
            self.dropped_before_clock = 0
            # Names without wildcards whose type the contract fixes are subscribed now, before their
            # publishers exist, so nothing they send after matching is missed (a topic subscribed only
            # once discovered loses what goes out in the ~0.1-0.3 s that takes: the sim's first actions).
            for topic in self.patterns:
                type_name = known_type(topic)
                if type_name and not any(c in topic for c in "*?["):
                    self.subscribe(topic, type_name, [])
            self.timer = self.create_timer(DISCOVERY_PERIOD_S, self.discover)
            self.discover()

        def discover(self) -> None:
            for topic, types in self.get_topic_names_and_types():
                if topic in self.skipped or not any(fnmatch.fnmatchcase(topic, p) for p in self.patterns):
                    continue
                publishers = self.get_publishers_info_by_topic(topic)
                if not publishers:
                    continue  # only subscribers so far: wait for a publisher to learn its QoS
                if topic not in self.subscribed:
                    self.subscribe(topic, types[0], publishers)
                    continue
                subscription, type_name, reliability, seen = self.subscribed[topic]
                if len(publishers) == seen:
                    continue
                self.subscribed[topic] = (subscription, type_name, reliability, len(publishers))
                if types[0] != type_name:
                    self.get_logger().warn(f"{topic} is published as {types[0]}, recorded as {type_name}")
                if _qos_of_publishers(publishers)[0] != reliability:
                    # A best-effort publisher never matches a reliable subscription: take best effort.
                    self.destroy_subscription(subscription)
                    del self.subscribed[topic]
                    self.subscribe(topic, type_name, publishers)
            bag.flush()

        def subscribe(self, topic: str, type_name: str, publishers) -> None:
            """Subscribe raw with the publishers' reliability/durability (none known yet: reliable, volatile)."""
            try:
                cls = message_class(type_name)
                bag.add_topic(topic, type_name)
            except BagError as e:
                self.skipped.add(topic)
                self.get_logger().warn(f"not recording {topic}: {e}")
                return
            reliability, durability = _qos_of_publishers(publishers)
            qos = QoSProfile(
                history=HistoryPolicy.KEEP_LAST, depth=DEPTH, reliability=reliability, durability=durability
            )
            stamp_of = header_stamp_reader(cls)
            subscription = self.create_subscription(
                cls, topic, lambda data, t=topic, s=stamp_of: self.on_message(t, data, s), qos, raw=True
            )
            self.subscribed[topic] = (subscription, type_name, reliability, len(publishers))
            print(f"recording {topic} ({type_name}, {reliability.name.lower()})", flush=True)

        def on_message(self, topic: str, data: bytes, stamp_of: Callable[[bytes], int] | None) -> None:
            now = self.get_clock().now().nanoseconds
            stamp = stamp_of(data) if stamp_of is not None else None
            if now == 0:  # sim time before the first /clock
                if len(self.pending) < MAX_BEFORE_CLOCK:
                    self.pending.append((topic, data, stamp))
                else:
                    self.dropped_before_clock += 1
                return
            self.flush_pending(now)
            bag.write(topic, data, now, now if stamp is None else stamp)

        def flush_pending(self, now: int) -> int:
            """Write what arrived before sim time started, at log time ``now``; returns how many."""
            for t, d, s in self.pending:
                bag.write(t, d, now, now if s is None else s)
            n, self.pending = len(self.pending), []
            return n

    return BagRecorder()


# --- the command line -----------------------------------------------------------------------------

#: The line the recorder prints once its node is up (the graph runner waits for it before starting nodes).
READY_LINE = "recording to"


def recorder_command(out: str | os.PathLike, namespace: str = "", use_sim_time: bool = False) -> list[str]:
    """argv of a recorder process for a graph in ``namespace`` (what ``run --bag`` starts)."""
    ns = namespace.strip("/")
    cmd = [sys.executable, "-m", "d2ppo_bringup.bag", "--out", str(out), "--namespace", ns]
    cmd += ["--enclave", f"/{ns}/bag_recorder" if ns else "/bag_recorder"]
    return cmd + (["--use-sim-time"] if use_sim_time else [])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m d2ppo_bringup.bag", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="the recording, e.g. run.mcap (its folder must exist)")
    ap.add_argument(
        "--topics", nargs="+", default=list(DEFAULT_TOPICS), metavar="PATTERN",
        help="topic name patterns (fnmatch; relative ones in --namespace); default: " + " ".join(DEFAULT_TOPICS),
    )  # fmt: skip
    ap.add_argument("--namespace", default="", help="the graph's ROS namespace (default: none)")
    ap.add_argument(
        "--use-sim-time", action="store_true", help="log times on /clock (the graph's clock when it runs on sim time)"
    )
    ap.add_argument("--enclave", default="/bag_recorder", help="SROS2 enclave, used only with ROS_SECURITY_ENABLE=true")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        out = check_output(args.out)
    except BagError as e:
        print(e, file=sys.stderr)
        return 2
    patterns = resolve_patterns(args.topics, args.namespace)

    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.signals import SignalHandlerOptions

    stop = []
    # Our own handlers: a signal only ends the spin loop, the file is finished below, not mid-write.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: stop.append(signum))
    rclpy.init(args=["--ros-args", "--enclave", args.enclave], signal_handler_options=SignalHandlerOptions.NO)
    bag = McapBag(
        out,
        metadata={
            "topics": " ".join(patterns),
            "namespace": args.namespace,
            "clock": "sim" if args.use_sim_time else "system",
            "started_unix_ns": time.time_ns(),
        },
    )
    node = make_recorder_node(bag, patterns, args.use_sim_time)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    print(f"{READY_LINE} {bag.part} (renamed to {out} at the end): {' '.join(patterns)}", flush=True)
    rc = 0
    try:
        while not stop and rclpy.ok():
            executor.spin_once(timeout_sec=0.1)
    except Exception as e:  # a write that failed (disk full, ...): still finish what was written
        print(f"bag: recording stopped: {type(e).__name__}: {e}", file=sys.stderr)
        rc = 1
    finally:
        executor.shutdown(timeout_sec=1.0)
        if node.flush_pending(0):  # no /clock ever came: keep the messages, at log time 0
            print("bag: no /clock arrived (--use-sim-time): messages are logged at time 0", file=sys.stderr)
        node.destroy_node()
        try:
            bag.close()
        except Exception as e:
            print(f"bag: could not finish {bag.part}: {type(e).__name__}: {e}", file=sys.stderr)
            rc = 1
        if rclpy.ok():
            rclpy.shutdown()
    if bag.closed and rc == 0:
        total = sum(bag.counts.values())
        per_topic = ", ".join(f"{t} {n}" for t, n in bag.counts.items())
        extra = f"; {node.dropped_before_clock} dropped before the first /clock" if node.dropped_before_clock else ""
        print(f"wrote {out}: {total} messages on {len(bag.counts)} topics ({per_topic}){extra}", flush=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
