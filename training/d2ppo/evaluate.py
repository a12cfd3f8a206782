"""Evaluate a policy package in robosuite: success rate with a 95 % confidence interval, plus rollout videos.

    python -m d2ppo.evaluate --policy policies/lift_img_d2ppo --episodes 50 --seed 1000 --videos 3

Episodes are run with fixed seeds (env seed = seed + worker, sampler noise seeded likewise), so the same
command gives the same numbers. Results are printed and written to ``<out>/eval.json`` (default: the package
folder's ``eval/``); ``--record`` also stores them in the package's policy.json under ``evaluation``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import deque
from pathlib import Path

import numpy as np

DEFAULT_HORIZON = {"Lift": 200, "PickPlaceCan": 400, "NutAssemblySquare": 400, "TwoArmTransport": 800}


def run_episodes(package_path: str, episode_ids: list[int], seed: int, horizon: int | None, video_ids: set[int],
                 video_dir: str | None, backend: str = "torch", threads: int = 1, on_episode=None) -> list[dict]:
    """Run some episodes in one process; returns one record per episode (worker entry point)."""
    import torch

    from d2ppo.envs.robosuite_env import is_success, make_env, raw_obs, render_frame
    from d2ppo.package import load_policy

    torch.set_num_threads(threads)
    pkg = load_policy(package_path)
    cams = list(pkg.spec.camera_names)
    horizon = horizon or DEFAULT_HORIZON.get(pkg.task, 400)
    env = make_env(pkg.env_args, seed=seed, render_profile=pkg.render_profile, camera_names=cams,
                   image_size=pkg.spec.image_size, horizon=horizon + 10)
    builder, sampler = pkg.obs_builder(), pkg.sampler(backend)
    rng = np.random.default_rng(seed)
    records = []
    try:
        for ep in episode_ids:
            builder.reset()
            builder.add(raw_obs(env.reset(), cams))
            frames, steps, success, t0 = [], 0, False, time.time()
            while steps < horizon and not success:
                chunk = sampler(builder.build(), noise=rng.standard_normal(sampler.noise_shape(1), dtype=np.float32))
                # Every control step's observation enters the history (training windows are consecutive
                # control steps); with one frame of history this builds one frame per chunk, as before.
                recent: deque = deque(maxlen=pkg.spec.n_obs_steps)
                for action in chunk[: pkg.act_steps]:
                    obs, _, _, _ = env.step(action)
                    recent.append(raw_obs(obs, cams))  # a copy: robosuite may reuse its arrays
                    steps += 1
                    if ep in video_ids:
                        frames.append(render_frame(env, "agentview", 256))
                    if is_success(env):
                        success = True
                        break
                    if steps >= horizon:
                        break
                for raw in recent:
                    builder.add(raw)
            if frames and video_dir:
                import imageio

                Path(video_dir).mkdir(parents=True, exist_ok=True)
                name = f"episode_{ep:03d}_{'success' if success else 'fail'}.mp4"
                imageio.mimsave(str(Path(video_dir) / name), frames, fps=20, macro_block_size=1)
            records.append({"episode": ep, "success": success, "steps": steps, "wall_s": round(time.time() - t0, 2)})
            if on_episode is not None:
                on_episode(records[-1])
    finally:
        env.close()
    return records


def evaluate_policy(package_path: str | Path, episodes: int = 50, seed: int = 1000, workers: int = 1,
                    horizon: int | None = None, video_dir: str | Path | None = None, videos: int = 3,
                    backend: str = "torch", progress: bool = True) -> dict:
    """Success rate of a package over ``episodes`` seeded episodes (split over ``workers`` processes)."""
    from tqdm import tqdm

    from d2ppo.package import wilson_interval

    package_path = str(package_path)
    workers = max(1, min(workers, episodes))
    video_ids = set(range(min(videos, episodes))) if video_dir else set()
    shards = [list(range(w, episodes, workers)) for w in range(workers)]
    t0 = time.time()
    records: list[dict] = []
    if workers == 1:
        # One process, one env for all episodes (its seeded episode sequence), progress per episode.
        bar = tqdm(total=episodes, desc="eval", disable=not progress, dynamic_ncols=True)
        threads = int(os.environ.get("OMP_NUM_THREADS", "2"))

        wins = [0]

        def tick(rec: dict) -> None:
            wins[0] += rec["success"]
            bar.update(1)
            bar.set_postfix(success=f"{wins[0]}/{bar.n}")

        records = run_episodes(package_path, shards[0], seed, horizon, video_ids, str(video_dir) if video_dir else None,
                               backend, threads, on_episode=tick)
        bar.close()
    else:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        with ctx.Pool(workers) as pool:
            jobs = [pool.apply_async(run_episodes, (package_path, shard, seed + w, horizon, video_ids,
                                                    str(video_dir) if video_dir else None, backend, 1))
                    for w, shard in enumerate(shards)]
            bar = tqdm(total=workers, desc=f"eval ({workers} workers)", disable=not progress, dynamic_ncols=True)
            for j in jobs:
                records.extend(j.get())
                bar.update(1)
            bar.close()
    records.sort(key=lambda r: r["episode"])
    k = sum(r["success"] for r in records)
    lo, hi = wilson_interval(k, len(records))
    return {
        "success_rate": k / len(records),
        "successes": k,
        "episodes": len(records),
        "ci95": [round(lo, 4), round(hi, 4)],
        "seed": seed,
        "workers": workers,
        "horizon": horizon or "task default",
        "backend": backend,
        "mean_steps": float(np.mean([r["steps"] for r in records])),
        "wall_s": round(time.time() - t0, 1),
        "episodes_detail": records,
    }


def evaluate_and_record(package_path: str | Path, episodes: int, seed: int = 1000, workers: int = 1,
                        video_dir: str | Path | None = None, horizon: int | None = None, key: str = "evaluation") -> dict:
    """Evaluate and store the result (without per-episode detail) in the package's policy.json under ``key``."""
    from d2ppo.package import load_policy, write_card

    res = evaluate_policy(package_path, episodes, seed, workers, horizon, video_dir)
    card = load_policy(package_path).card
    summary = {k: v for k, v in res.items() if k != "episodes_detail"}
    summary["command"] = f"python -m d2ppo.evaluate --policy {package_path} --episodes {episodes} --seed {seed} --workers {workers}"
    card[key] = summary
    write_card(package_path, card)
    return res


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="d2ppo eval", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--policy", required=True, help="policy package folder")
    p.add_argument("--episodes", type=int, default=50)
    p.add_argument("--seed", type=int, default=1000)
    p.add_argument("--workers", type=int, default=1, help="parallel env processes")
    p.add_argument("--horizon", type=int, help="max env steps per episode (default: per task)")
    p.add_argument("--videos", type=int, default=3, help="number of episodes to save as mp4")
    p.add_argument("--out", help="folder for eval.json and videos (default: <policy>/eval)")
    p.add_argument("--backend", default="torch", choices=["torch", "onnx", "naive"])
    p.add_argument("--record", action="store_true", help="store the result in the package's policy.json")
    a = p.parse_args(argv)

    from d2ppo.package import PolicyPackageError, load_policy, write_card

    try:
        pkg = load_policy(a.policy)
    except PolicyPackageError as e:
        sys.exit(f"error: {e}")
    if a.episodes < 1:
        sys.exit("error: --episodes must be >= 1")
    out = Path(a.out) if a.out else Path(a.policy) / "eval"
    res = evaluate_policy(a.policy, a.episodes, a.seed, a.workers, a.horizon, out / "videos" if a.videos else None, a.videos, a.backend)
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(res, indent=2))
    lo, hi = res["ci95"]
    print(f"{pkg.task}: success rate {res['success_rate']:.3f} ({res['successes']}/{res['episodes']}), "
          f"95% CI [{lo:.3f}, {hi:.3f}], mean {res['mean_steps']:.0f} steps, {res['wall_s']:.0f} s -> {out / 'eval.json'}")
    if a.record:
        card = pkg.card
        card["evaluation"] = {k: v for k, v in res.items() if k != "episodes_detail"}
        card["evaluation"]["command"] = "python -m d2ppo.evaluate " + " ".join(sys.argv[1:] if argv is None else argv)
        write_card(a.policy, card)


if __name__ == "__main__":
    main()
