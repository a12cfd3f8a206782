"""Generate robomimic-format demonstrations with the scripted experts.

    python -m d2ppo.experts.generate --task lift --episodes 100 \\
        --cameras agentview robot0_eye_in_hand --image-size 96 --noise 0.1 --seed 0 --out data/lift_img.hdf5

``--episodes`` counts kept (successful) demos; failed attempts are dropped. Every attempt has
its own seed (derived from ``--seed`` and the attempt number), so a file does not depend on
``--workers``. ``--cameras none`` (or ``--cameras`` with no names, the default) gives a low-dim file
without images (~100x faster to generate), which ``d2ppo.train --cameras none`` trains on.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from d2ppo.data.robomimic_hdf5 import RobomimicWriter
from d2ppo.envs.robosuite_env import RENDER_PROFILES, canonical_task, default_env_args, is_success, make_env, raw_obs
from d2ppo.experts.scripted import EXPERT_TASKS, PickPlaceExpert, make_expert

DEFAULT_HORIZON = {"Lift": 100, "PickPlaceCan": 300, "NutAssemblySquare": 300}


class CameraError(ValueError):
    """A camera name the task's model does not have; the message names it and the available ones."""


class TaskError(ValueError):
    """A task without a scripted expert; the message names the ones there are."""


class TooFewDemosError(RuntimeError):
    """Fewer successful attempts than ``--episodes`` within ``--max-attempts``; the partial file is kept."""


def parse_cameras(names: Sequence[str]) -> list[str]:
    """``--cameras`` values -> camera names: ``none`` (or nothing) = a low-dim file, as ``d2ppo.train`` reads it."""
    names = list(names)
    if "none" in names:
        if len(names) > 1:
            raise CameraError(f"'none' (a low-dim file without images) cannot be combined with camera names "
                              f"{[n for n in names if n != 'none']}")
        return []
    return names


def check_cameras(task: str, camera_names: Sequence[str]) -> None:
    """Raise CameraError unless every name is a camera of the task's model (checked in a renderer-less env)."""
    if not camera_names:
        return
    env = make_env(default_env_args(task, camera_names=()), seed=0, camera_names=())
    try:
        have = tuple(env.sim.model.camera_names)
    finally:
        env.close()
    unknown = [c for c in camera_names if c not in have]
    if unknown:
        raise CameraError(f"unknown camera(s) {unknown} for {task}; its cameras are {list(have)} (or 'none')")


def reseed_episode(env, seed: int) -> None:
    """Make the next ``env.reset()`` draw its object placement / robot init noise from ``seed``.

    robosuite hands one ``np.random.Generator`` (``env.rng``) to its placement samplers and robot
    resets; setting that generator's state in place reseeds all of them without a hard reset.
    """
    env.rng.bit_generator.state = np.random.default_rng(seed).bit_generator.state


def _attempt_seeds(seed: int, attempt: int) -> tuple[int, int]:
    """(env placement seed, expert noise seed) for one attempt."""
    ss = np.random.SeedSequence([seed, attempt])
    a, b = ss.generate_state(2)
    return int(a), int(b)


def _stack(frames: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.stack([f[k] for f in frames]) for k in frames[0]}


def record_episode(
    env, expert: PickPlaceExpert, rng: np.random.Generator, camera_names: Sequence[str], max_steps: int
) -> dict:
    """Run one expert episode from ``env.reset()``; stops at the first successful step.

    Returns a dict with ``success``, ``obs``/``next_obs`` (key -> [T, ...]), ``actions`` [T, 7],
    ``rewards`` [T], ``dones`` [T] (1 at the success step), ``states`` [T, S] (sim state before each action).
    """
    obs = raw_obs(env.reset(), camera_names)
    expert.reset(env, rng)
    frames, next_frames, actions, rewards, dones, states = [], [], [], [], [], []
    success = False
    for _ in range(max_steps):
        states.append(np.array(env.sim.get_state().flatten()))
        action = expert.act(env)
        next_o, reward, _, _ = env.step(action)
        next_obs = raw_obs(next_o, camera_names)
        success = is_success(env)
        frames.append(obs)
        next_frames.append(next_obs)
        actions.append(action)
        rewards.append(float(reward))
        dones.append(int(success))
        obs = next_obs
        if success:
            break
    return {
        "success": success,
        "obs": _stack(frames),
        "next_obs": _stack(next_frames),
        "actions": np.asarray(actions, np.float32),
        "rewards": np.asarray(rewards),
        "dones": np.asarray(dones),
        "states": np.asarray(states),
    }


# --- worker ------------------------------------------------------------------------------------
_worker: dict = {}


def _init_worker(env_args: dict, render_profile: str, task: str, noise: float, camera_names: list[str], max_steps: int):
    env = make_env(env_args, seed=0, render_profile=render_profile)
    _worker.update(
        env=env,
        expert=make_expert(task, noise=noise),
        camera_names=camera_names,
        max_steps=max_steps,
        model_file=env.sim.model.get_xml(),
    )


def _run_attempt(args: tuple[int, int]) -> tuple[int, dict]:
    seed, attempt = args
    env_seed, expert_seed = _attempt_seeds(seed, attempt)
    env = _worker["env"]
    reseed_episode(env, env_seed)
    ep = record_episode(
        env, _worker["expert"], np.random.default_rng(expert_seed), _worker["camera_names"], _worker["max_steps"]
    )
    if not ep["success"]:  # do not ship failed image episodes between processes
        ep = {"success": False, "steps": len(ep["actions"])}
    return attempt, ep


def _attempts(n_workers: int, init_args: tuple, seed: int, max_attempts: int):
    """Yield (attempt, episode) in attempt order, in-process or from a worker pool."""
    jobs = ((seed, i) for i in range(max_attempts))
    if n_workers <= 1:
        _init_worker(*init_args)
        for job in jobs:
            yield _run_attempt(job)
        return
    ctx = mp.get_context("spawn")  # fresh processes: no inherited GL contexts
    with ctx.Pool(n_workers, initializer=_init_worker, initargs=init_args) as pool:
        yield from pool.imap(_run_attempt, jobs, chunksize=1)
        pool.terminate()


def generate(
    task: str,
    episodes: int,
    out: str | Path,
    camera_names: Sequence[str] = (),
    image_size: int = 96,
    noise: float = 0.1,
    seed: int = 0,
    render_profile: str = "fast",
    workers: int = 1,
    horizon: int | None = None,
    max_attempts: int | None = None,
    valid_fraction: float = 0.1,
    progress: bool = True,
    command: str | None = None,
) -> dict:
    """Write ``episodes`` successful expert demos to ``out``; returns a summary dict (counts, seconds)."""
    from tqdm import tqdm

    task = canonical_task(task)
    if task not in EXPERT_TASKS:  # here, not in the workers: a failing pool initializer is restarted forever
        raise TaskError(f"no scripted expert for {task!r}; have {', '.join(EXPERT_TASKS)} (lift, can, square)")
    horizon = horizon or DEFAULT_HORIZON.get(task, 300)
    cams = parse_cameras(camera_names)
    check_cameras(task, cams)  # here, not in the workers: a failing pool initializer is restarted forever
    env_args = default_env_args(task, camera_names=cams, image_size=image_size, horizon=horizon)
    # Not a robosuite kwarg (robomimic ignores extra top-level keys): images in this file were
    # rendered with this profile, and a policy trained on them must run with it.
    env_args["render_profile"] = render_profile
    max_attempts = max_attempts or 3 * episodes + 10
    init_args = (env_args, render_profile, task, noise, cams, horizon)
    # Written under a temporary name and renamed when complete, so nobody trains on half a file
    # (and readers of the final path never hold a lock the writer needs).
    out = Path(out)
    partial = out.with_name(out.name + ".partial")
    writer = RobomimicWriter(partial, env_args)
    t0 = time.time()
    attempts = kept = 0
    model_file = None
    bar = tqdm(total=episodes, desc=f"{task} demos", unit="demo", disable=not progress)
    gen = _attempts(workers, init_args, seed, max_attempts)
    try:
        for attempt, ep in gen:
            attempts += 1
            if ep["success"]:
                if model_file is None:
                    model_file = _model_xml(env_args, render_profile) if workers > 1 else _worker["model_file"]
                writer.add_demo(
                    ep["obs"],
                    ep["actions"],
                    rewards=ep["rewards"],
                    dones=ep["dones"],
                    states=ep["states"],
                    next_obs=ep["next_obs"],
                    model_file=model_file,
                    attrs={"attempt": attempt, "expert_noise": noise},
                )
                kept += 1
            bar.set_postfix(attempts=attempts, kept=kept, success=f"{kept / attempts:.0%}", refresh=False)
            bar.update(int(ep["success"]))
            if kept >= episodes:
                break
    finally:
        gen.close()
        bar.close()
    writer.write_masks(valid_fraction=valid_fraction, seed=seed)
    import h5py

    with h5py.File(partial, "a") as f:
        f["data"].attrs["d2ppo_generator"] = json.dumps(
            {
                "task": task,
                "noise": noise,
                "seed": seed,
                "render_profile": render_profile,
                "attempts": attempts,
                "kept": kept,
                "command": command,
            }
        )
    writer.close()
    if kept < episodes:
        raise TooFewDemosError(f"only {kept}/{episodes} successful demos in {attempts} attempts "
                               f"({kept / max(attempts, 1):.1%} kept); partial file {partial}")
    os.replace(partial, out)
    seconds = time.time() - t0
    summary = {
        "task": task,
        "out": str(out),
        "attempts": attempts,
        "kept": kept,
        "success_rate": kept / max(attempts, 1),
        "seconds": round(seconds, 1),
    }
    return summary


def _model_xml(env_args: dict, render_profile: str) -> str:
    """MJCF of the task's model (workers hold their own envs; one low-dim env gives the same XML)."""
    env = make_env(env_args, seed=0, render_profile=render_profile, camera_names=())
    try:
        return env.sim.model.get_xml()
    finally:
        env.close()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="d2ppo generate", description=__doc__.split("\n\n")[0])
    p.add_argument("--task", default="lift", help="lift | can | square (or Lift, PickPlaceCan, NutAssemblySquare)")
    p.add_argument("--episodes", type=int, default=100, help="successful demos to keep")
    p.add_argument("--cameras", nargs="*", default=[], help="camera names; 'none' (or no names) -> low-dim only")
    p.add_argument("--image-size", type=int, default=96, help="square image size, pixels")
    p.add_argument("--noise", type=float, default=0.1, help="std of Gaussian action noise")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output .hdf5 path (overwritten)")
    p.add_argument("--render-profile", default="fast", choices=sorted(RENDER_PROFILES))
    p.add_argument("--workers", type=int, default=1, help="processes (each runs its own env)")
    p.add_argument("--horizon", type=int, default=None, help="max steps per episode (Lift 100, Can 300, Square 300)")
    p.add_argument("--max-attempts", type=int, default=None, help="give up after this many attempts (3x + 10)")
    p.add_argument("--valid-fraction", type=float, default=0.1)
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    argv_list = sys.argv[1:] if argv is None else list(argv)
    try:
        summary = generate(
            task=args.task,
            episodes=args.episodes,
            out=args.out,
            camera_names=args.cameras,
            image_size=args.image_size,
            noise=args.noise,
            seed=args.seed,
            render_profile=args.render_profile,
            workers=args.workers,
            horizon=args.horizon,
            max_attempts=args.max_attempts,
            valid_fraction=args.valid_fraction,
            progress=not args.no_progress,
            command="d2ppo generate " + shlex.join(argv_list),
        )
    except CameraError as e:
        raise SystemExit(f"error: --cameras: {e}") from None
    except TaskError as e:
        raise SystemExit(f"error: --task: {e}") from None
    except TooFewDemosError as e:
        raise SystemExit(f"error: {e}") from None
    size_mb = os.path.getsize(args.out) / 1e6
    print(
        f"{summary['task']}: kept {summary['kept']}/{summary['attempts']} attempts "
        f"({summary['success_rate']:.1%}), {summary['seconds']} s, {size_mb:.1f} MB -> {summary['out']}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
