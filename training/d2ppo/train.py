"""Pre-train a D²PPO diffusion policy on robomimic-format demos: diffusion loss + λ · dispersive loss.

    python -m d2ppo.train --data data/lift_img.hdf5 --out runs/lift_img --cameras robot0_eye_in_hand --steps 20000

Writes into ``--out``: ``config.json`` (the full typed config), ``tb/`` (TensorBoard), ``checkpoint/``
(resumable, atomic; ``--resume`` continues from it) and ``policy/`` (the policy package, EMA weights).
``--package DIR`` also writes the final package there (e.g. under policies/).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from d2ppo.model import DiffusionPolicy, PolicyConfig
from d2ppo.model.policy import DISPERSIVE_LAYERS, DispersiveConfig
from d2ppo.obs import PROPRIO_KEYS, ObsSpec, image_key


@dataclass
class TrainConfig:
    """Everything a pre-training run depends on; saved as config.json beside its outputs."""

    data: str  # robomimic-format HDF5
    out: str  # run folder
    package: str | None = None  # also write the final policy package here
    cameras: tuple[str, ...] = ("robot0_eye_in_hand",)  # () = low-dim policy
    # Low-dim obs keys; add "object" (robomimic's object pose, 10-D for Lift) for a simulation-only low-dim
    # policy like DPPO's state-based ones (a proprio-only low-dim Lift policy cannot see where the cube is).
    lowdim_keys: tuple[str, ...] = PROPRIO_KEYS
    image_size: int = 96
    n_obs_steps: int = 1
    max_demos: int | None = None  # use only the first N training demos (weak-policy experiments)
    filter_key: str | None = "train"  # mask/<key> of the file; None = all demos
    model: PolicyConfig = field(default_factory=PolicyConfig)
    dispersive: DispersiveConfig = field(default_factory=DispersiveConfig)
    steps: int = 20000  # gradient steps
    batch_size: int = 64
    lr: float = 1e-4
    weight_decay: float = 1e-6
    warmup_steps: int = 500
    ema_decay: float = 0.995
    seed: int = 0
    threads: int = 0  # torch threads; 0 = torch default
    log_every: int = 100
    ckpt_every: int = 2000
    eval_episodes: int = 0  # evaluate the final package in robosuite (0 = skip)
    eval_seed: int = 1000
    eval_workers: int = 1
    render_profile: str = "fast"

    def to_json(self) -> dict:
        d = asdict(self)
        d["model"] = self.model.to_dict()
        d["cameras"] = list(self.cameras)
        return d


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent)
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "training"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent)
        return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "") if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def hardware() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} CPU cores ({cpu}), torch {torch.__version__}, no GPU" if not torch.cuda.is_available() else torch.cuda.get_device_name()


class EMA:
    """Exponential moving average of the weights; the released package carries the EMA weights."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.model = copy.deepcopy(model).eval()
        self.decay = decay
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))  # warm-up: early weights are not averaged in for long
        for e, p in zip(self.model.parameters(), model.parameters()):
            e.lerp_(p, 1 - d)
        for e, b in zip(self.model.buffers(), model.buffers()):
            e.copy_(b)


def _batches(dataset, batch_size: int, rng: np.random.Generator):
    """Endless shuffled mini-batches (the dataset holds everything in memory and gathers a batch at once)."""
    n = len(dataset)
    while True:
        perm = rng.permutation(n)
        for i in range(0, n - batch_size + 1, batch_size):
            yield dataset.get_batch(torch.from_numpy(perm[i : i + batch_size]))


def robot_base_pos(env_args: dict | None) -> tuple[float, float, float]:
    """World position of the robot base in the training data's frame (the ROS stack publishes panda_link0)."""
    if not env_args or env_args.get("type", 1) != 1:
        return (0.0, 0.0, 0.0)
    from d2ppo.envs.robosuite_env import make_env

    args = copy.deepcopy(env_args)
    env = make_env(args, seed=0, camera_names=())
    try:
        env.reset()
        pos = env.robots[0].base_pos if hasattr(env.robots[0], "base_pos") else env.sim.data.get_body_xpos("robot0_base")
        return tuple(float(v) for v in np.asarray(pos).reshape(3))
    finally:
        env.close()


def _lowdim_dims(path: str, keys) -> tuple[int, ...]:
    """Widths of low-dim obs keys as stored in the file (first demo)."""
    import h5py

    with h5py.File(path, "r") as f:
        obs = f["data"][next(iter(f["data"]))]["obs"]
        missing = [k for k in keys if k not in obs]
        if missing:
            raise SystemExit(f"error: {path}: demos have no obs key(s) {missing}")
        return tuple(int(obs[k].shape[-1]) for k in keys)


def _has_mask(path: str, key: str) -> bool:
    import h5py

    with h5py.File(path, "r") as f:
        return f"mask/{key}" in f


def train(cfg: TrainConfig, resume: bool = False, command: str | None = None) -> Path:
    from torch.utils.tensorboard import SummaryWriter
    from tqdm import tqdm

    from d2ppo.checkpoint import load_checkpoint, save_checkpoint
    from d2ppo.data.dataset import SequenceDataset
    from d2ppo.data.robomimic_hdf5 import read_env_args, validate_file
    from d2ppo.package import save_policy

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)

    # Validate first: a file that is not a robomimic HDF5 file (or lacks a key) raises DatasetFormatError, which
    # main() reports in one line, before anything below opens it with h5py directly.
    validate_file(cfg.data, obs_keys=[*(image_key(c) for c in cfg.cameras), *cfg.lowdim_keys])
    spec = ObsSpec(camera_names=tuple(cfg.cameras), image_size=cfg.image_size, n_obs_steps=cfg.n_obs_steps,
                   lowdim_keys=tuple(cfg.lowdim_keys), lowdim_dims=_lowdim_dims(cfg.data, cfg.lowdim_keys))
    env_args = read_env_args(cfg.data)
    if cfg.filter_key and not _has_mask(cfg.data, cfg.filter_key):
        print(f"[train] {cfg.data} has no mask/{cfg.filter_key}: training on all demos", flush=True)
        cfg.filter_key = None
    dataset = SequenceDataset(cfg.data, spec, horizon=cfg.model.horizon, filter_key=cfg.filter_key, max_demos=cfg.max_demos)
    norms = dataset.normalizers
    if len(dataset) < cfg.batch_size:
        raise SystemExit(f"{cfg.data}: only {len(dataset)} training windows, fewer than batch size {cfg.batch_size}")
    print(f"[train] {cfg.data}: {len(dataset)} windows; cameras={list(spec.camera_names) or 'none'}; "
          f"dispersive λ={cfg.dispersive.weight} {cfg.dispersive.variant} on {cfg.dispersive.layer}", flush=True)

    model = DiffusionPolicy(spec, cfg.model)
    ema = EMA(model, cfg.ema_decay)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    def lr_at(step: int) -> float:  # linear warm-up, cosine decay to 10 %
        if step < cfg.warmup_steps:
            return cfg.lr * (step + 1) / cfg.warmup_steps
        frac = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))

    start, elapsed_before = 0, 0.0
    ckpt_dir = out / "checkpoint"
    if resume and (ckpt_dir / "meta.json").exists():
        meta = load_checkpoint(ckpt_dir, {"model": model, "ema": ema.model}, opt)
        start, elapsed_before = meta["step"], meta.get("elapsed_s", 0.0)
        rng = np.random.default_rng(cfg.seed + start)
        torch.manual_seed(cfg.seed + start)
        print(f"[train] resumed from {ckpt_dir} at step {start}", flush=True)
    (out / "config.json").write_text(json.dumps(cfg.to_json(), indent=2))

    writer = SummaryWriter(str(out / "tb"))
    batches = _batches(dataset, cfg.batch_size, rng)
    t0 = time.time()
    model.train()
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc="pre-train", dynamic_ncols=True, mininterval=2.0)
    disp = cfg.dispersive
    for step in bar:
        batch = next(batches)
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        obs = {k: batch[k] for k in ("rgb", "state") if k in batch}
        log_now = step % cfg.log_every == 0 or step == cfg.steps - 1
        loss, logs = model.diffusion_loss(obs, batch["actions"], disp, metrics=log_now)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema.update(model, step)
        if log_now:
            for k, v in logs.items():
                writer.add_scalar(k, v, step)
            writer.add_scalar("lr", lr_at(step), step)
            bar.set_postfix(loss=f"{logs['loss/diffusion']:.4f}", disp=f"{logs.get('loss/dispersive', 0.0):.3f}")
        if (step + 1) % cfg.ckpt_every == 0 and step + 1 < cfg.steps:
            save_checkpoint(ckpt_dir, {"model": model, "ema": ema.model}, opt,
                            {"step": step + 1, "elapsed_s": elapsed_before + time.time() - t0})
    bar.close()
    train_time = elapsed_before + time.time() - t0
    save_checkpoint(ckpt_dir, {"model": model, "ema": ema.model}, opt, {"step": cfg.steps, "elapsed_s": train_time})
    writer.close()

    training = {
        "command": command or "python -m d2ppo.train " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "git_commit": git_commit(),
        "data": {"path": cfg.data, "demos": dataset.num_demos, "windows": len(dataset), "filter_key": cfg.filter_key},
        "seed": cfg.seed,
        "steps": cfg.steps,
        "batch_size": cfg.batch_size,
        "dispersive": asdict(cfg.dispersive),
        "time_s": round(train_time, 1),
        "hardware": hardware(),
        "config": cfg.to_json(),
    }
    base = robot_base_pos(env_args)
    task = env_args.get("env_name", "unknown") if env_args else "unknown"
    targets = [out / "policy"] + ([Path(cfg.package)] if cfg.package else [])
    for target in targets:
        save_policy(target, ema.model, norms, task=task, env_args=env_args, render_profile=cfg.render_profile,
                    robot_base_pos=base, extra={"training": training})
    print(f"[train] done in {train_time / 60:.1f} min; package: {', '.join(map(str, targets))}", flush=True)

    if cfg.eval_episodes > 0:
        from d2ppo.evaluate import evaluate_and_record

        for target in targets:
            res = evaluate_and_record(target, cfg.eval_episodes, seed=cfg.eval_seed, workers=cfg.eval_workers,
                                      video_dir=out / "videos" if target == targets[0] else None)
        print(f"[train] success rate {res['success_rate']:.3f} over {res['episodes']} episodes", flush=True)
    return targets[-1]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="d2ppo train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="robomimic-format HDF5 file")
    p.add_argument("--out", required=True, help="run folder (config, TensorBoard, checkpoint, policy/)")
    p.add_argument("--package", help="also write the final policy package here (e.g. policies/lift_img_d2ppo)")
    p.add_argument("--cameras", nargs="*", default=["robot0_eye_in_hand"], help="camera names; 'none' for a low-dim policy")
    p.add_argument("--lowdim-keys", nargs="+", default=list(PROPRIO_KEYS),
                   help="low-dim obs keys (add 'object' for a simulation-only low-dim policy that sees the object pose)")
    p.add_argument("--image-size", type=int, default=96)
    p.add_argument("--n-obs-steps", type=int, default=1)
    p.add_argument("--max-demos", type=int)
    p.add_argument("--all-demos", action="store_true", help="ignore mask/train and use every demo")
    p.add_argument("--steps", type=int, default=20000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--dispersive-weight", type=float, default=0.5, help="λ; 0 = plain diffusion policy (DPPO baseline)")
    p.add_argument("--dispersive-tau", type=float, default=0.5)
    p.add_argument("--dispersive-variant", default="infonce_l2", choices=["infonce_l2", "infonce_cosine", "hinge", "covariance"])
    p.add_argument("--dispersive-layer", default="early", choices=list(DISPERSIVE_LAYERS))
    p.add_argument("--mlp-dims", type=int, nargs=3, default=[768, 768, 768])
    p.add_argument("--ckpt-every", type=int, default=2000)
    p.add_argument("--eval-episodes", type=int, default=0)
    p.add_argument("--eval-seed", type=int, default=1000)
    p.add_argument("--eval-workers", type=int, default=1)
    p.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint")
    return p


def config_from_args(a: argparse.Namespace) -> TrainConfig:
    cams = () if a.cameras in ([], ["none"]) else tuple(a.cameras)
    return TrainConfig(
        data=a.data, out=a.out, package=a.package, cameras=cams, lowdim_keys=tuple(a.lowdim_keys),
        image_size=a.image_size, n_obs_steps=a.n_obs_steps,
        max_demos=a.max_demos, filter_key=None if a.all_demos else "train",
        model=PolicyConfig(mlp_dims=tuple(a.mlp_dims)),
        dispersive=DispersiveConfig(weight=a.dispersive_weight, tau=a.dispersive_tau, variant=a.dispersive_variant, layer=a.dispersive_layer),
        steps=a.steps, batch_size=a.batch_size, lr=a.lr, seed=a.seed, threads=a.threads, ckpt_every=a.ckpt_every,
        eval_episodes=a.eval_episodes, eval_seed=a.eval_seed, eval_workers=a.eval_workers,
    )


def main(argv: list[str] | None = None) -> None:
    a = build_parser().parse_args(argv)
    if not Path(a.data).is_file():
        raise SystemExit(f"error: --data {a.data}: file not found (generate demos with: python -m d2ppo.experts.generate --help)")
    cfg = config_from_args(a)
    from d2ppo.data.robomimic_hdf5 import DatasetFormatError

    cmd = "python -m d2ppo.train " + " ".join(shlex.quote(x) for x in (argv if argv is not None else sys.argv[1:]))
    try:
        train(cfg, resume=a.resume, command=cmd)
    except DatasetFormatError as e:
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()
