#!/usr/bin/env python3
"""Sim-to-real benchmark: the released image policy through the ROS 2 sim stack, lock-step and real-time.

Each row runs ``python -m d2ppo_bringup.run sim`` (sim node + inference node as processes over DDS, on a
ROS domain of its own, localhost discovery) for the same episodes and seeds:

* ``lockstep``: the sim waits for every chunk (the training success rate);
* ``realtime``: physics on the wall clock, the inference node in its robot configuration (frame trigger,
  ONNX when the package ships it, pipelined with the lead taken from the measured latency), camera frames
  delivered with the row's injected latency / jitter, for each seam strategy (replace, ensemble, inpaint).

Per row it reports success (with a 95 % Wilson interval), obs->chunk latency at the sim node (the chunk's
receipt minus its camera stamp: camera latency + inference + transport; the row's p50 is the median of
the episodes' p50s, its p99 the largest episode p99) and the share of due actions dropped as overdue.
Results are written after every row to ``--out`` (a JSON list of rows); a rerun skips the rows already
there, so an interrupted benchmark resumes. Prints a table and, last, one line of JSON.

Usage: .venv/bin/python scripts/bench_sim2real.py [--episodes 20] [--rows all] [--out docs/results/sim2real.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SEAMS = ("replace", "ensemble", "inpaint")
#: (mode, camera latency ms, jitter ms)
CONDITIONS = (("realtime", 0.0, 0.0), ("realtime", 50.0, 0.0), ("realtime", 100.0, 10.0))


def all_rows() -> list[dict]:
    rows = [{"mode": "lockstep", "seam": "replace", "latency_ms": 0.0, "jitter_ms": 0.0}]
    for mode, lat, jit in CONDITIONS:
        rows += [{"mode": mode, "seam": seam, "latency_ms": lat, "jitter_ms": jit} for seam in SEAMS]
    return rows


def row_key(row: dict) -> str:
    return f"{row['mode']}/{row['seam']}/{row['latency_ms']:g}+-{row['jitter_ms']:g}ms"


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return float("nan"), float("nan")
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return round(c - h, 4), round(c + h, 4)


def run_row(row: dict, args: argparse.Namespace, domain: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench_sim2real_") as tmp:
        results = Path(tmp) / "results.json"
        cmd = [
            sys.executable, "-m", "d2ppo_bringup.run", "sim", "--policy", args.policy,
            "--episodes", str(args.episodes), "--seed", str(args.seed), "--results", str(results),
            "--seam", row["seam"],
        ]  # fmt: skip
        if row["mode"] == "realtime":
            cmd += ["--realtime", "--latency-ms", str(row["latency_ms"]), "--jitter-ms", str(row["jitter_ms"])]
        env = dict(os.environ, ROS_DOMAIN_ID=str(domain), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")
        env.setdefault("MUJOCO_GL", "egl")
        env.pop("RMW_IMPLEMENTATION", None)
        t0 = time.monotonic()
        log = Path(tmp) / "run.log"
        with open(log, "w") as f:
            proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT, timeout=args.timeout)
        if proc.returncode != 0 or not results.is_file():
            raise RuntimeError(f"{row_key(row)}: the stack failed (exit {proc.returncode}):\n{log.read_text()[-3000:]}")
        r = json.loads(results.read_text())
    eps = r["per_episode"]
    ex = {k: sum(e["executor"].get(k, 0) for e in eps) for k in eps[0]["executor"]}
    due = ex.get("actions_executed", 0) + ex.get("actions_rejected", 0) + ex.get("actions_dropped_stale", 0)
    p50s = [e["obs_to_chunk_ms"]["p50"] for e in eps if e.get("obs_to_chunk_ms", {}).get("p50") is not None]
    p99s = [e["obs_to_chunk_ms"]["p99"] for e in eps if e.get("obs_to_chunk_ms", {}).get("p99") is not None]
    return {
        **row,
        "policy": args.policy,
        "seed": args.seed,
        "episodes": r["episodes"],
        "successes": r["successes"],
        "success_rate": round(r["success_rate"], 4),
        "ci95": list(wilson(r["successes"], r["episodes"])),
        "obs_to_chunk_p50_ms": round(float(np.median(p50s)), 2) if p50s else None,
        "obs_to_chunk_p99_ms": round(float(max(p99s)), 2) if p99s else None,
        "actions_dropped_pct": round(100.0 * ex.get("actions_dropped_stale", 0) / due, 2) if due else 0.0,
        "executor": ex,
        "wall_s": round(time.monotonic() - t0, 1),
    }


def table(rows: list[dict]) -> str:
    lines = [
        "| mode | seam | camera latency | success | obs→chunk p50 / p99 ms | actions dropped % |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lat = "—" if r["mode"] == "lockstep" else f"{r['latency_ms']:g} ± {r['jitter_ms']:g} ms"
        p = (
            "—"
            if r["obs_to_chunk_p50_ms"] is None
            else f"{r['obs_to_chunk_p50_ms']:.1f} / {r['obs_to_chunk_p99_ms']:.1f}"
        )
        lo, hi = r["ci95"]
        lines.append(
            f"| {r['mode']} | {r['seam']} | {lat} | {r['success_rate']:.2f} ({r['successes']}/{r['episodes']}, "
            f"CI {lo:.2f}–{hi:.2f}) | {p} | {r['actions_dropped_pct']:.1f} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    """Success with its 95 % interval per condition and seam, and obs->chunk p50/p99, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lock = next((r for r in rows if r["mode"] == "lockstep"), None)
    conds = [(lat, jit) for _, lat, jit in CONDITIONS]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.25
    for j, seam in enumerate(SEAMS):
        xs, ys, err, p50, p99 = [], [], [[], []], [], []
        for i, (lat, jit) in enumerate(conds):
            r = next((r for r in rows if r["mode"] == "realtime" and r["seam"] == seam
                      and r["latency_ms"] == lat and r["jitter_ms"] == jit), None)  # fmt: skip
            if r is None:
                continue
            xs.append(i + (j - 1) * width)
            ys.append(r["success_rate"])
            err[0].append(r["success_rate"] - r["ci95"][0])
            err[1].append(r["ci95"][1] - r["success_rate"])
            p50.append(r["obs_to_chunk_p50_ms"])
            p99.append(r["obs_to_chunk_p99_ms"])
        ax.bar(xs, ys, width, yerr=err, capsize=3, label=seam)
        ax2.plot(xs, p50, "o", color=f"C{j}", label=f"{seam} p50")
        ax2.plot(xs, p99, "^", color=f"C{j}", alpha=0.6, label=f"{seam} p99")
    labels = [f"+{lat:g} ± {jit:g} ms" for lat, jit in conds]
    for a in (ax, ax2):
        a.set_xticks(range(len(conds)), labels)
        a.set_xlabel("injected camera latency (real-time sim)")
    if lock is not None:
        ax.axhline(
            lock["success_rate"], color="k", ls="--", lw=1, label=f"lock-step {lock['successes']}/{lock['episodes']}"
        )
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(f"success ({rows[0]['episodes']} episodes, 95 % Wilson interval)")
    ax.legend(fontsize=7, loc="lower left")
    ax2.set_ylabel("obs→chunk at the sim, ms")
    ax2.legend(fontsize=6, ncol=3)
    fig.suptitle(f"{rows[0]['policy']}: lock-step vs real-time, seam strategies")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--policy", default="policies/lift_img_d2ppo", help="policy package folder")
    ap.add_argument("--episodes", type=int, default=20, help="episodes per row (same seeds in every row)")
    ap.add_argument("--seed", type=int, default=1000)
    ap.add_argument("--rows", default="all", help="'all' or comma-separated row keys, e.g. realtime/inpaint/100+-10ms")
    ap.add_argument("--out", default="docs/results/sim2real.json", help="rows so far (resumable)")
    ap.add_argument("--domain", type=int, default=93, help="ROS_DOMAIN_ID of the runs (localhost discovery)")
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds per row")
    ap.add_argument("--plot-only", action="store_true", help="table and plot of --out as it is; run nothing")
    args = ap.parse_args(argv)
    if args.episodes < 1:
        ap.error("--episodes must be >= 1")
    if not (Path(args.policy) / "policy.json").is_file():
        ap.error(f"{args.policy}: not a policy package (no policy.json)")
    rows = all_rows()
    if args.rows != "all":
        wanted = set(args.rows.split(","))
        unknown = wanted - {row_key(r) for r in rows}
        if unknown:
            ap.error(f"unknown row(s) {sorted(unknown)}; known: {[row_key(r) for r in rows]}")
        rows = [r for r in rows if row_key(r) in wanted]
    out = Path(args.out)
    done: list[dict] = json.loads(out.read_text()) if out.is_file() else []
    done_keys = {
        row_key(r)
        for r in done
        if r["policy"] == args.policy and r["episodes"] == args.episodes and r["seed"] == args.seed
    }
    for i, row in enumerate([] if args.plot_only else rows):
        key = row_key(row)
        if key in done_keys:
            print(f"[bench_sim2real] {key}: done already (in {out})", flush=True)
            continue
        print(f"[bench_sim2real] {i + 1}/{len(rows)} {key}: {args.episodes} episodes ...", flush=True)
        result = run_row(row, args, args.domain)
        done = [r for r in done if not (row_key(r) == key and r["policy"] == args.policy)] + [result]
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(done, indent=1) + "\n")
        tmp.replace(out)
        print(
            f"[bench_sim2real] {key}: success {result['successes']}/{result['episodes']}, obs->chunk "
            f"p50 {result['obs_to_chunk_p50_ms']} ms p99 {result['obs_to_chunk_p99_ms']} ms, dropped "
            f"{result['actions_dropped_pct']} % ({result['wall_s']} s)",
            flush=True,
        )
    selected = [
        r for r in done if r["policy"] == args.policy and r["episodes"] == args.episodes and r["seed"] == args.seed
    ]
    order = {row_key(r): i for i, r in enumerate(all_rows())}
    selected.sort(key=lambda r: order.get(row_key(r), 99))
    print(table(selected))
    png = out.with_suffix(".png")
    plot(selected, png)
    print(f"[bench_sim2real] plot: {png}")
    print(json.dumps({"rows": [{k: v for k, v in r.items() if k != "executor"} for r in selected]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
