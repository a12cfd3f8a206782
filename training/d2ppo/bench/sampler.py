"""Latency of one batch-1 action chunk (10 DDIM steps) per sampler backend, on this machine's CPUs.

    python -m d2ppo.bench.sampler [--json] [--policy PATH] [--chunks 500] [--warmup 50] [--profile]

Backends, all on the same package and the same number of threads (``OMP_NUM_THREADS``, default 2):
  naive  the whole network (ViT encoder + denoiser) at every denoising step, as DPPO's sampler does
  torch  encode the observation once, then 10 denoiser steps (``DiffusionPolicy.sample``)
  onnx   encoder + unrolled chain in one ONNX Runtime graph (``d2ppo.export.OnnxChunkSampler``)
Each timed call is the full ``ChunkSampler`` call a deployment makes: numpy observation in, fresh noise drawn,
unnormalised [Ta, Da] actions out. Without ``--policy`` the paper's image model (one 96x96 wrist camera,
9-d proprio, ViT depth 1, MLP [768, 768, 768]) is randomly initialised in a temporary folder; random weights
cost the same time as trained ones.

The machine is shared, so the timed chunks run in rounds (each backend in turn, a few untimed calls at the start
of each block to re-warm its caches) and load changes affect all backends alike. Prints a table; the last line
is one JSON object: {"backends": {name: {"p50_ms", "p99_ms", ...}}, "threads", "steps"}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BACKENDS = ("naive", "torch", "onnx")
REWARM_CALLS = 3  # untimed calls at the start of every round's block


def thread_count() -> int:
    """Threads for torch and ONNX Runtime: ``OMP_NUM_THREADS`` if set, else 2 (the deployment computer's budget)."""
    try:
        return max(1, int(os.environ.get("OMP_NUM_THREADS", "2")))
    except ValueError:
        return 2


def example_obs(package, seed: int = 0) -> dict[str, np.ndarray]:
    """A random observation of the package's shapes, as ``ObservationBuilder.build`` returns it (no batch dim)."""
    spec = package.spec
    rng = np.random.default_rng(seed)
    obs = {"state": rng.uniform(-1.0, 1.0, (spec.n_obs_steps, spec.state_dim)).astype(np.float32)}
    if spec.uses_images:
        shape = (spec.n_obs_steps, len(spec.camera_names), 3, spec.image_size, spec.image_size)
        obs["rgb"] = rng.integers(0, 256, shape, dtype=np.uint8)
    return obs


def summarize(times_s: list[float], cpu_s: float) -> dict[str, float]:
    """Wall-clock percentiles of the chunk calls, and the process CPU time per chunk (all threads, spinning too)."""
    ms = np.asarray(times_s) * 1e3
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p90_ms": round(float(np.percentile(ms, 90)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
        "mean_ms": round(float(ms.mean()), 3),
        "max_ms": round(float(ms.max()), 3),
        "cpu_ms_mean": round(cpu_s * 1e3 / ms.size, 3),
        "chunks": int(ms.size),
    }


def run(
    policy: str | None, backends: list[str], chunks: int, warmup: int, rounds: int, spin: bool = True, log=print
) -> dict:
    threads = thread_count()
    import torch

    torch.set_num_threads(threads)
    from d2ppo.package import load_policy, make_random_policy

    with tempfile.TemporaryDirectory(prefix="d2ppo-bench-") as tmp:
        path = Path(policy) if policy else make_random_policy(Path(tmp) / "paper-image-policy")
        package = load_policy(path)
        obs = example_obs(package)
        samplers = {}
        for name in backends:
            kw = {"threads": threads, "spin": spin} if name == "onnx" else {}
            samplers[name] = package.sampler(name, **kw)
        for name, sampler in samplers.items():
            t0 = time.perf_counter()
            for _ in range(warmup):
                sampler(obs)
            log(f"warm-up {name}: {warmup} chunks in {time.perf_counter() - t0:.1f} s")
        times: dict[str, list[float]] = {name: [] for name in samplers}
        cpu = dict.fromkeys(samplers, 0.0)
        rounds = max(1, min(rounds, chunks))
        for r in range(rounds):
            n = chunks // rounds + (1 if r < chunks % rounds else 0)
            for name, sampler in samplers.items():
                for _ in range(REWARM_CALLS):
                    sampler(obs)
                block = times[name]
                c0 = time.process_time()
                for _ in range(n):
                    t0 = time.perf_counter()
                    sampler(obs)
                    block.append(time.perf_counter() - t0)
                cpu[name] += time.process_time() - c0
        steps = package.cfg.sample_steps
        result = {name: summarize(t, cpu[name]) for name, t in times.items()}
    if "naive" in result:
        for stats in result.values():
            stats["speedup_p50_vs_naive"] = round(result["naive"]["p50_ms"] / stats["p50_ms"], 2)
    return {"backends": result, "threads": threads, "steps": steps}


def profile_onnx(policy: str | None, chunks: int, log=print) -> dict[str, float]:
    """Where an ONNX chunk's time goes: per-operator-type µs per chunk (median over chunks of each node).

    Uses ONNX Runtime's own profiler on the package's graph at the benchmark's thread count. Returns
    ``{"encoder": µs, "chain": µs, "<OpType>": µs, ...}``; encoder = nodes traced from the observation encoder
    (the 2 convs, ViT block, spatial embedding), chain = the 10 unrolled denoising steps.
    """
    import collections

    import onnxruntime as ort

    from d2ppo.export import export_onnx
    from d2ppo.package import load_policy, make_random_policy

    threads = thread_count()
    with tempfile.TemporaryDirectory(prefix="d2ppo-bench-") as tmp:
        path = Path(policy) if policy else make_random_policy(Path(tmp) / "paper-image-policy")
        package = load_policy(path)
        graph = export_onnx(package, Path(tmp) / "profiled.onnx")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.enable_profiling = True
        opts.profile_file_prefix = str(Path(tmp) / "ort-profile")
        session = ort.InferenceSession(str(graph), opts, providers=["CPUExecutionProvider"])
        obs = {k: v[None] for k, v in example_obs(package).items()}
        cfg = package.cfg
        feeds = {
            **obs,
            "noise": np.random.default_rng(0).standard_normal(
                (1, cfg.sample_steps + 1, cfg.horizon, cfg.action_dim), dtype=np.float32
            ),
            "std": np.zeros(1, np.float32),
        }
        for _ in range(chunks):
            session.run(None, feeds)
        events = json.loads(Path(session.end_profiling()).read_text())
    per_node: dict[str, list[float]] = collections.defaultdict(list)
    op_of: dict[str, str] = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per_node[e["name"]].append(e["dur"])
            op_of[e["name"]] = e["args"]["op_name"]
    by_op: collections.Counter = collections.Counter()
    parts = {"encoder": 0.0, "chain": 0.0}
    for name, durations in per_node.items():
        us = float(np.median(durations))
        by_op[op_of[name]] += us
        parts["encoder" if "encoder" in name or op_of[name].startswith("Reorder") else "chain"] += us
    log(f"ONNX Runtime profile, {threads} threads, {chunks} chunks, median µs per chunk:")
    log(f"  encoder {parts['encoder']:8.0f}   chain {parts['chain']:8.0f}   nodes {len(per_node)}")
    for op, us in by_op.most_common(12):
        log(f"  {op:<22}{us:8.0f}")
    return {**parts, **dict(by_op)}


def format_table(report: dict) -> str:
    cols = ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "max_ms", "cpu_ms_mean", "chunks", "speedup_p50_vs_naive")
    widths = [max(13, len(c) + 2) for c in cols]
    head = f"{'backend':<8}" + "".join(f"{c:>{w}}" for c, w in zip(cols, widths))
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    title = f"batch-1 chunk of {report['steps']} DDIM steps, {report['threads']} threads (load average now {load})"
    lines = [title, head]
    for name, stats in report["backends"].items():
        lines.append(f"{name:<8}" + "".join(f"{stats.get(c, ''):>{w}}" for c, w in zip(cols, widths)))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policy", default=None, help="policy package folder (default: random paper image model)")
    ap.add_argument("--chunks", type=int, default=500, help="timed chunks per backend")
    ap.add_argument("--warmup", type=int, default=50, help="untimed chunks per backend before timing")
    ap.add_argument("--rounds", type=int, default=5, help="timed chunks are split into this many interleaved rounds")
    ap.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated subset of " + ",".join(BACKENDS))
    ap.add_argument("--json", action="store_true", help="print only the JSON line (progress goes to stderr)")
    ap.add_argument("--profile", action="store_true", help="first print ONNX Runtime's per-operator time breakdown")
    ap.add_argument("--no-spin", action="store_true", help="ONNX Runtime worker threads sleep instead of busy-waiting")
    args = ap.parse_args(argv)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = sorted(set(backends) - set(BACKENDS))
    if unknown:
        ap.error(f"unknown backends {unknown}; choose from {BACKENDS}")

    def log(msg: str) -> None:
        print(msg, file=sys.stderr if args.json else sys.stdout, flush=True)

    if args.profile:
        profile_onnx(args.policy, max(args.chunks // 5, 20), log=log)
    report = run(args.policy, backends, args.chunks, args.warmup, args.rounds, spin=not args.no_spin, log=log)
    if not args.json:
        print(format_table(report))
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
