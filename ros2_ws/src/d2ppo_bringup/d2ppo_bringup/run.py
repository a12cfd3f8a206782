"""Start a node graph without launch_ros: ``python -m d2ppo_bringup.run sim --policy policies/<name>``.

The graph comes from ``d2ppo_bringup.graph`` (the same declaration the launch files use). Each
node is a subprocess with ``--ros-args``; output lines are prefixed with the node name. The graph
ends when a required node exits (the sim node after its episodes), when any node fails, or on
Ctrl-C / SIGTERM; every child is stopped before this exits. ``--bag run.mcap`` also records the run
(``d2ppo_bringup.bag``: started before the nodes, stopped after them). Exit code: the required node's, the
failed node's, or 130 after Ctrl-C.

DDS: ``sim`` discovers on localhost only unless ROS_AUTOMATIC_DISCOVERY_RANGE is set; ``panda`` takes
what the environment leaves unset from ``launch/dds.env`` (non-zero domain, LOCALHOST), like the robot
image (``node_processes.dds_environment``).
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
from pathlib import Path

from d2ppo_bringup.bag import READY_LINE, BagError, check_output, recorder_command
from d2ppo_bringup.graph import GRAPHS, NodeSpec, launch_dir, panda_graph, sim_graph
from d2ppo_bringup.node_processes import DDS_ENV_FILE, NodeProcess, dds_environment, node_command, stop_all

#: The recorder of ``--bag`` (d2ppo_bringup.bag), run beside the graph's nodes.
BAG_NODE = NodeSpec(package="d2ppo_bringup", executable="d2ppo_bag", module="d2ppo_bringup.bag", name="bag")


def build_graph(args: argparse.Namespace) -> list[NodeSpec]:
    if args.graph == "sim":
        return sim_graph(
            policy=args.policy,
            use_sim_time=True if args.use_sim_time is None else args.use_sim_time,
            episodes=args.episodes,
            seed=args.seed,
            horizon=args.horizon,
            video_path=args.video or "",
            results_path=args.results or "",
            replan=args.replan,
            backend=args.backend,
            realtime=args.realtime,
            camera_latency_ms=args.latency_ms,
            camera_jitter_ms=args.jitter_ms,
            camera_drop=args.drop,
            seam=args.seam,
            lead=args.lead,
        )
    if not args.robot_ip:
        raise SystemExit("run panda: --robot-ip is required")
    return panda_graph(args.policy, args.robot_ip, use_sim_time=bool(args.use_sim_time), backend=args.backend)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m d2ppo_bringup.run", description=__doc__.split("\n\n")[0])
    ap.add_argument("graph", choices=GRAPHS)
    ap.add_argument("--policy", required=True, help="policy package folder")
    ap.add_argument("--namespace", default="", help="ROS namespace for every node")
    ap.add_argument("--use-sim-time", dest="use_sim_time", action=argparse.BooleanOptionalAction, default=None)
    ap.add_argument(
        "--backend", default="auto", choices=("auto", "torch", "onnx"), help="auto: onnx when the package has one"
    )
    ap.add_argument("--realtime", action="store_true", help="sim: step on the wall clock, robot inference config")
    ap.add_argument("--latency-ms", type=float, default=0.0, help="sim --realtime: camera delivery latency")
    ap.add_argument("--jitter-ms", type=float, default=0.0, help="sim --realtime: +- uniform jitter on the latency")
    ap.add_argument("--drop", type=float, default=0.0, help="sim --realtime: probability a frame is lost, [0, 1)")
    ap.add_argument("--seam", default=None, choices=("replace", "ensemble", "inpaint"), help="chunk seam strategy")
    ap.add_argument("--lead", type=int, default=None, help="pipelining lead in actions; -1 = from the latency")
    ap.add_argument("--replan", default="chunk", choices=("chunk", "tick"))
    ap.add_argument("--episodes", type=int, default=0, help="sim: episodes to run, then stop (0 = until Ctrl-C)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--horizon", type=int, default=None, help="sim: control ticks per episode")
    ap.add_argument("--video", default=None, help="sim: mp4 of the first episode's agentview camera")
    ap.add_argument("--results", default=None, help="sim: JSON summary of the episodes")
    ap.add_argument("--robot-ip", default="", help="panda: the arm's (or franky-sim's) address")
    ap.add_argument("--grace", type=float, default=5.0, help="seconds a node gets to exit after SIGINT")
    ap.add_argument("--bag", default=None, help="record the run to this MCAP file (d2ppo_bringup.bag)")
    return ap.parse_args(argv)


def run(args: argparse.Namespace) -> int:
    policy = Path(args.policy)
    if not (policy / "policy.json").is_file():
        print(f"run: {policy}: not a policy package (no policy.json there)", file=sys.stderr)
        return 2
    if args.bag:
        try:
            check_output(args.bag)
        except BagError as e:
            print(f"run: {e}", file=sys.stderr)
            return 2
    try:
        graph = build_graph(args)
    except ValueError as e:  # bad fault-injection values, ...: before anything starts
        print(f"run: {e}", file=sys.stderr)
        return 2
    if args.realtime and args.graph != "sim":
        print("run: --realtime is a sim option", file=sys.stderr)
        return 2
    directory = launch_dir()
    try:
        env, added = dds_environment(args.graph, launch_directory=directory)
    except (OSError, ValueError) as e:
        print(f"run: the robot profile's DDS settings: {e}", file=sys.stderr)
        return 2
    origin = f" ({', '.join(added)} from {directory / DDS_ENV_FILE if args.graph == 'panda' else 'the sim default'})"
    domain, scope = env.get("ROS_DOMAIN_ID", "0"), env.get("ROS_AUTOMATIC_DISCOVERY_RANGE", "SUBNET")
    print(
        f"[run] DDS: ROS_DOMAIN_ID={domain} ROS_AUTOMATIC_DISCOVERY_RANGE={scope}{origin if added else ''}", flush=True
    )
    processes: list[tuple[NodeSpec, NodeProcess]] = []
    interrupted = False

    def on_signal(signum, frame):  # noqa: ARG001
        nonlocal interrupted
        interrupted = True

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    scratch = tempfile.TemporaryDirectory(prefix="d2ppo_run_")
    rc = 0
    try:
        if args.bag:  # first, so it is subscribed before the graph publishes; stopped last (below)
            use_sim_time = any(s.params.get("use_sim_time") for s in graph)
            cmd = recorder_command(args.bag, args.namespace, use_sim_time)
            proc = NodeProcess(BAG_NODE.name, cmd, env=env)
            print(f"[run] started {BAG_NODE.name} (pid {proc.pid}): {' '.join(cmd)}", flush=True)
            processes.append((BAG_NODE, proc))
            if not proc.wait_for_line(lambda line: line.startswith(READY_LINE), 30.0):
                print(f"[run] the recorder did not start (exit {proc.poll()}); stopping", flush=True)
                return 1
        for spec in graph:
            cmd = node_command(spec, Path(scratch.name), args.namespace, directory)
            proc = NodeProcess(spec.name, cmd, env=env)
            print(f"[run] started {spec.name} (pid {proc.pid}): {' '.join(cmd)}", flush=True)
            processes.append((spec, proc))
        while not interrupted:
            ended = [(s, p) for s, p in processes if p.poll() is not None]
            if ended:
                spec, proc = ended[0]
                code = proc.poll()
                if spec.required:
                    print(f"[run] {spec.name} finished (exit {code}); stopping the graph", flush=True)
                    rc = code
                else:
                    print(f"[run] {spec.name} exited unexpectedly (exit {code}); stopping the graph", flush=True)
                    rc = code or 1
                break
            time.sleep(0.1)
        if interrupted:
            print("[run] interrupted; stopping the graph", flush=True)
            rc = 130
    finally:
        stop_all([p for s, p in processes if s is not BAG_NODE], grace=args.grace)
        stop_all([p for s, p in processes if s is BAG_NODE], grace=args.grace)  # records the graph's last words
        scratch.cleanup()
        for s, h in old.items():
            signal.signal(s, h)
    return rc


def main(argv: list[str] | None = None) -> None:
    sys.exit(run(parse_args(argv)))


if __name__ == "__main__":
    main()
