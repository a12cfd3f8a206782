"""Latency and planned-vs-executed timeline of a recorded run: ``python -m d2ppo_bringup.timeline run.mcap``.

Reads an MCAP recording (``d2ppo_bringup.bag``; any ROS 2 MCAP with these topics, in any namespace) with
``mcap``'s reader and the ros2 decoder, and plots on one time axis (seconds on the stamp clock, from the
first chunk's stamp):

1. obs→chunk latency per chunk, ms: the chunk's receipt (its log time in the bag) minus its
   ``header.stamp`` — the capture stamp of the frame it was computed from, so camera stamp → chunk
   receipt. Where that frame is in the bag (an image whose ``header.stamp`` equals the chunk's exactly,
   the integer stamps the contract keeps end to end), also frame receipt → chunk receipt: the part after
   the frame reached the graph (inference + transport, without the camera's own delay).
2. planned vs executed actions, one panel per dimension (x, y, z, gripper by default): each chunk's
   actions at ``stamp + time_from_start`` as a line, the ``controller/executed`` actions at their stamps
   as dots, planned actions that never ran as red crosses.

Which planned action ran: an executed action at time T is attributed to the chunk, among those with an
action planned at T (within half a period) and stamped no later than T, whose planned action is closest
to it (exact unless the safety envelope changed it; ties go to the newest chunk, which replaces older
ones). Every planned action not attributed is "planned but never executed": overdue when it arrived,
replaced by a newer chunk, or left over at the end of an episode.

The summary (printed, and returned by ``summarize``) gives chunks, p50/p99 latency, executed actions and
actions planned but never executed. The times are the bag's: in the lock-step sim on sim time the sim's
clock waits for each chunk, so its latency there is ~0 by construction; wall-clock runs (robot,
real-time sim) show the real figure.
"""

from __future__ import annotations

import argparse
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ACTION_NAMES = ("x", "y", "z", "roll", "pitch", "yaw", "gripper")
DEFAULT_DIMS = ("x", "y", "z", "gripper")
IMAGE_TYPE = "sensor_msgs/msg/Image"
TRAJECTORY_TYPE = "trajectory_msgs/msg/JointTrajectory"


class TimelineError(Exception):
    """A recording the timeline cannot use (one line: the file and the problem)."""


@dataclass
class Chunk:
    """One received action chunk. Times in integer ns; ``actions`` [H, 7] normalised; ``offsets`` [H] ns."""

    stamp: int
    receipt: int
    source: str
    actions: np.ndarray
    offsets: np.ndarray
    frame_receipt: int | None = None  # newest receipt among the images stamped exactly like the chunk
    executed: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))  # [H]

    @property
    def times(self) -> np.ndarray:
        return self.stamp + self.offsets


@dataclass
class Run:
    """What the timeline reads from a bag."""

    chunks: list[Chunk]
    executed_times: np.ndarray  # [E] ns
    executed_actions: np.ndarray  # [E, 7]
    image_topics: list[str]
    period: int  # ns between a chunk's actions (0 when every chunk has one action)
    clock: str = "unknown"  # the recorder's clock: "sim" (/clock) or "system" (d2ppo_bag metadata)


def _ns(t) -> int:
    return int(t.sec) * 1_000_000_000 + int(t.nanosec)


def read_run(path: str | Path) -> Run:
    """Chunks, executed actions and image stamps of a recording; TimelineError if it cannot be read."""
    from mcap.exceptions import McapError
    from mcap.reader import make_reader
    from mcap_ros2.decoder import DecoderFactory

    path = Path(path)
    if not path.is_file():
        raise TimelineError(f"timeline: {path}: no such file")
    chunks: list[Chunk] = []
    executed: list[tuple[int, list[float]]] = []
    frames: dict[int, int] = {}  # image stamp -> newest receipt
    image_topics: set[str] = set()
    try:
        with open(path, "rb") as f:
            reader = make_reader(f, decoder_factories=[DecoderFactory()])
            summary = reader.get_summary()
            if summary is None:
                raise TimelineError(f"timeline: {path}: no MCAP summary (an unfinished recording? try `mcap recover`)")
            clock = next(
                (m.metadata.get("clock", "unknown") for m in reader.iter_metadata() if m.name == "d2ppo_bag"), "unknown"
            )
            wanted = []
            for channel in summary.channels.values():
                schema = summary.schemas.get(channel.schema_id)
                name = schema.name if schema else ""
                if name == IMAGE_TYPE:
                    image_topics.add(channel.topic)
                if (name == IMAGE_TYPE) or (
                    name == TRAJECTORY_TYPE
                    and channel.topic.rsplit("/", 2)[-2:] in (["policy", "action_chunk"], ["controller", "executed"])
                ):
                    wanted.append(channel.topic)
            for _schema, channel, message, msg in reader.iter_decoded_messages(topics=wanted):
                if channel.topic in image_topics:
                    s = _ns(msg.header.stamp)
                    frames[s] = max(frames.get(s, 0), message.log_time)
                elif channel.topic.endswith("controller/executed"):
                    if msg.points:
                        executed.append((_ns(msg.header.stamp), list(msg.points[0].positions)))
                elif msg.points:
                    chunks.append(
                        Chunk(
                            stamp=_ns(msg.header.stamp),
                            receipt=message.log_time,
                            source=msg.header.frame_id,
                            actions=np.array([p.positions for p in msg.points], dtype=np.float64),
                            offsets=np.array([_ns(p.time_from_start) for p in msg.points], dtype=np.int64),
                        )
                    )
    except (McapError, struct.error, EOFError) as e:
        raise TimelineError(
            f"timeline: {path}: not a complete MCAP file ({e or type(e).__name__}); a killed recording leaves "
            "<name>.part, which `mcap recover` rebuilds"
        ) from None
    except (OSError, ValueError) as e:
        raise TimelineError(f"timeline: {path}: {e}") from None
    for c in chunks:
        c.frame_receipt = frames.get(c.stamp)
    chunks.sort(key=lambda c: (c.stamp, c.receipt))
    steps = [int(np.median(np.diff(c.offsets))) for c in chunks if len(c.offsets) > 1]
    executed.sort(key=lambda e: e[0])
    return Run(
        chunks=chunks,
        executed_times=np.array([t for t, _ in executed], dtype=np.int64),
        executed_actions=np.array([a for _, a in executed], dtype=np.float64).reshape(-1, len(ACTION_NAMES)),
        image_topics=sorted(image_topics),
        period=int(np.median(steps)) if steps else 0,
        clock=clock,
    )


def attribute_executed(run: Run) -> int:
    """Mark in each chunk's ``executed`` which planned actions ran (rule in the module docstring).

    Returns the number of executed actions no chunk planned (e.g. a source that publishes no chunks).
    """
    for c in run.chunks:
        c.executed = np.zeros(len(c.offsets), bool)
    tolerance = max(run.period // 2, 1)
    slots = sorted((int(t), ci, i) for ci, c in enumerate(run.chunks) for i, t in enumerate(c.times))
    slot_times = np.array([s[0] for s in slots], dtype=np.int64)
    unplanned = 0
    for t, action in zip(run.executed_times.tolist(), run.executed_actions):
        lo = np.searchsorted(slot_times, t - tolerance, side="left")
        hi = np.searchsorted(slot_times, t + tolerance, side="right")
        best = None
        for _, ci, i in slots[lo:hi]:
            c = run.chunks[ci]
            if c.stamp > t or c.executed[i]:
                continue
            key = (float(np.max(np.abs(c.actions[i] - action))), -c.stamp, -c.receipt)
            if best is None or key < best[0]:
                best = (key, c, i)
        if best is None:
            unplanned += 1
        else:
            best[1].executed[best[2]] = True
    return unplanned


def _percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p99": None, "max": None}
    a = np.asarray(values)
    return {"p50": float(np.percentile(a, 50)), "p99": float(np.percentile(a, 99)), "max": float(a.max())}


def summarize(run: Run) -> dict:
    """The figures the timeline prints (latencies in ms; counts of chunks and actions)."""
    unplanned = attribute_executed(run)
    stamp_latency = [(c.receipt - c.stamp) / 1e6 for c in run.chunks]
    frame_latency = [(c.receipt - c.frame_receipt) / 1e6 for c in run.chunks if c.frame_receipt is not None]
    planned = sum(len(c.offsets) for c in run.chunks)
    ran = sum(int(c.executed.sum()) for c in run.chunks)
    return {
        "chunks": len(run.chunks),
        "clock": run.clock,
        "sources": sorted({c.source for c in run.chunks}),
        "period_ms": run.period / 1e6,
        "latency_stamp_to_receipt_ms": _percentiles(stamp_latency),
        "chunks_matched_to_a_frame": len(frame_latency),
        "latency_frame_receipt_to_chunk_receipt_ms": _percentiles(frame_latency),
        "planned_actions": planned,
        "executed_actions": int(len(run.executed_times)),
        "executed_from_a_chunk": ran,
        "executed_unplanned": unplanned,
        "planned_never_executed": planned - ran,
    }


def format_summary(path: str | Path, s: dict) -> str:
    def ms(p: dict) -> str:
        return "n/a" if p["p50"] is None else f"p50 {p['p50']:.1f} ms, p99 {p['p99']:.1f} ms, max {p['max']:.1f} ms"

    share = f" ({100.0 * s['planned_never_executed'] / s['planned_actions']:.1f}%)" if s["planned_actions"] else ""
    return "\n".join(
        [
            f"timeline of {path} (log times on the {s['clock']} clock"
            + (
                "; the lock-step sim's clock waits for each chunk, so latency reads ~0 there)"
                if s["clock"] == "sim"
                else ")"
            ),
            f"chunks:                  {s['chunks']} (source {', '.join(s['sources']) or '-'}; "
            f"period {s['period_ms']:.1f} ms)",
            f"obs->chunk latency:      {ms(s['latency_stamp_to_receipt_ms'])}  (chunk stamp -> chunk receipt)",
            f"frame -> chunk receipt:  {ms(s['latency_frame_receipt_to_chunk_receipt_ms'])}  "
            f"({s['chunks_matched_to_a_frame']} of {s['chunks']} chunks stamped exactly like a recorded frame)",
            f"executed actions:        {s['executed_actions']} ({s['executed_from_a_chunk']} from a recorded chunk, "
            f"{s['executed_unplanned']} from none)",
            f"planned, never executed: {s['planned_never_executed']} of {s['planned_actions']}{share}",
        ]
    )


def plot(run: Run, out: str | Path, dims: tuple[str, ...] = DEFAULT_DIMS, title: str = "") -> Path:
    """Write the timeline PNG: latency panel, then planned vs executed per action dimension."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import LineCollection

    t0 = run.chunks[0].stamp
    sec = lambda ns: (np.asarray(ns, dtype=np.float64) - t0) / 1e9  # noqa: E731
    fig, axes = plt.subplots(1 + len(dims), 1, sharex=True, figsize=(12, 2.2 * (1 + len(dims))), squeeze=False)
    axes = axes[:, 0]

    ax = axes[0]
    stamps = sec([c.stamp for c in run.chunks])
    ax.plot(stamps, [(c.receipt - c.stamp) / 1e6 for c in run.chunks], ".", ms=4, label="chunk stamp → receipt")
    matched = [c for c in run.chunks if c.frame_receipt is not None]
    if matched:
        ax.plot(
            sec([c.stamp for c in matched]), [(c.receipt - c.frame_receipt) / 1e6 for c in matched], "x", ms=4,
            label="frame receipt → chunk receipt",
        )  # fmt: skip
    ax.set_ylabel("obs→chunk [ms]")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)

    for ax, name in zip(axes[1:], dims):
        d = ACTION_NAMES.index(name)
        segments = [np.column_stack([sec(c.times), c.actions[:, d]]) for c in run.chunks]
        ax.add_collection(LineCollection(segments, colors="tab:blue", linewidths=0.8, alpha=0.5, label="planned"))
        ax.plot(
            np.concatenate([sec(c.times) for c in run.chunks]), np.concatenate([c.actions[:, d] for c in run.chunks]),
            "|", color="tab:blue", ms=4, alpha=0.5,
        )  # fmt: skip
        missed_t = np.concatenate([sec(c.times[~c.executed]) for c in run.chunks])
        missed_v = np.concatenate([c.actions[~c.executed, d] for c in run.chunks])
        if len(missed_t):
            ax.plot(missed_t, missed_v, "x", color="tab:red", ms=4, label="planned, never executed")
        if len(run.executed_times):
            ax.plot(sec(run.executed_times), run.executed_actions[:, d], ".", color="k", ms=3, label="executed")
        ax.set_ylabel(name)
        ax.set_ylim(-1.1, 1.1)
        ax.grid(alpha=0.3)
    axes[1].legend(loc="upper right", fontsize=8, ncol=3)
    axes[-1].set_xlabel("time [s] on the stamp clock, from the first chunk's stamp")
    fig.suptitle(title or "obs→chunk latency and planned vs executed actions", fontsize=10)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m d2ppo_bringup.timeline", description=__doc__.split("\n\n")[0])
    ap.add_argument("bag", help="an MCAP recording (d2ppo_bringup.bag, run --bag)")
    ap.add_argument("--out", default=None, help="the PNG (default: the recording's name with .png)")
    ap.add_argument(
        "--dims", nargs="+", default=list(DEFAULT_DIMS), choices=ACTION_NAMES, help="action dimensions to plot"
    )
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out) if args.out else Path(args.bag).with_suffix(".png")
    if not out.parent.is_dir():
        print(f"timeline: the folder '{out.parent}' of --out does not exist", file=sys.stderr)
        return 2
    try:
        run = read_run(args.bag)
    except TimelineError as e:
        print(e, file=sys.stderr)
        return 2
    if not run.chunks:
        topics = ", ".join(run.image_topics) or "none"
        print(
            f"timeline: {args.bag} holds no action chunks (no policy/action_chunk messages; image topics: {topics}); "
            "nothing to plot — was the inference node running and the topic recorded?",
            file=sys.stderr,
        )
        return 1
    summary = summarize(run)
    print(format_summary(args.bag, summary))
    plot(run, out, tuple(args.dims), title=f"{Path(args.bag).name}: obs→chunk latency and planned vs executed")
    print(f"png:                     {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
