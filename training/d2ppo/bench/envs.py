"""Env steps per second of the RL envs (d2ppo.envs.vector) with 1 vs 2 worker processes, low-dim and pixels.

    python -m d2ppo.bench.envs [--task lift] [--chunks 50] [--envs 2] [--json]

Each case steps ``--envs`` chunked envs (random action chunks, 4 actions executed per chunk, soft resets at
success / time limit) through VectorChunkedEnv: ``workers=1`` runs all envs in one process, ``workers=2`` one
process per env. Pixels = one camera (robot0_eye_in_hand) at 96x96, render profile "fast". Timing starts
after the workers are up and one warm-up chunk; the 1-minute load average is printed beside each number
because the development machine is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from d2ppo.envs.chunked import ChunkedEnvConfig
from d2ppo.envs.robosuite_env import default_env_args
from d2ppo.envs.vector import VectorChunkedEnv
from d2ppo.obs import PROPRIO_KEYS, ObservationBuilder, ObsSpec


def bench_case(task: str, cameras: tuple[str, ...], n_envs: int, workers: int, chunks: int, seed: int = 0) -> dict:
    spec = ObsSpec(camera_names=cameras, image_size=96, lowdim_keys=PROPRIO_KEYS)
    env_args = default_env_args(task, camera_names=cameras, image_size=96)
    configs = [ChunkedEnvConfig(env_args=env_args, builder=ObservationBuilder(spec, None), seed=seed + i,
                                camera_names=cameras, image_size=96, max_env_steps=200) for i in range(n_envs)]
    rng = np.random.default_rng(seed)
    t_start = time.time()
    with VectorChunkedEnv(configs, workers=workers) as venv:
        startup = time.time() - t_start
        venv.reset()
        venv.step(rng.uniform(-1, 1, (n_envs, 4, 7)))  # warm-up (first render allocates GL buffers)
        steps0 = venv.env_steps()
        t0 = time.time()
        for _ in range(chunks):
            venv.step(rng.uniform(-1, 1, (n_envs, 4, 7)))
        dt = time.time() - t0
        steps = venv.env_steps() - steps0
    return {"task": task, "obs": "pixels 1x96x96" if cameras else "low-dim", "envs": n_envs, "workers": workers,
            "env_steps": steps, "seconds": round(dt, 2), "env_steps_per_s": round(steps / dt, 1),
            "startup_s": round(startup, 1), "load_avg_1min": round(os.getloadavg()[0], 2)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="lift")
    p.add_argument("--chunks", type=int, default=50, help="timed chunk steps per case (x4 env steps per env)")
    p.add_argument("--envs", type=int, default=2)
    p.add_argument("--camera", default="robot0_eye_in_hand")
    p.add_argument("--json", action="store_true", help="print one JSON line per case instead of a table")
    a = p.parse_args(argv)
    rows = []
    for cams in ((), (a.camera,)):
        for workers in (1, 2):
            r = bench_case(a.task, cams, a.envs, workers, a.chunks)
            rows.append(r)
            if a.json:
                print(json.dumps(r), flush=True)
            else:
                print(f"{r['task']:>6s} {r['obs']:>15s}  envs={r['envs']} workers={r['workers']}: "
                      f"{r['env_steps_per_s']:7.1f} env steps/s ({r['env_steps']} steps in {r['seconds']} s; "
                      f"start-up {r['startup_s']} s; load avg {r['load_avg_1min']})", flush=True)
    if not a.json:
        for obs in ("low-dim", "pixels 1x96x96"):
            one, two = (next(r for r in rows if r["obs"] == obs and r["workers"] == w) for w in (1, 2))
            print(f"{obs}: 2 workers / 1 worker = {two['env_steps_per_s'] / one['env_steps_per_s']:.2f}x")


if __name__ == "__main__":
    main()
