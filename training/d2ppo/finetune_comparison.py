"""Fine-tuning at equal env steps: D²PPO vs DPPO vs Gaussian PPO, several seeds per arm.

    python -m d2ppo.finetune_comparison --task square --seeds 0 1 2 --env-steps 200000
    python -m d2ppo.finetune_comparison --plot-only

Arms (as scripts/finetune_lift_lowdim.sh, whose fine-tuning flags are the defaults here):
  d2ppo     PPO over the denoising chain from a package pre-trained with λ = ``--dispersive-weight`` on ``--layer``
  dppo      the same from a package pre-trained with λ = 0 (a plain diffusion policy)
  gaussian  an MLP Gaussian policy on the same observations, behaviour-cloned for ``--bc-steps`` on the same
            demos (the d2ppo arm's package tells it which), then PPO
Per seed, the d2ppo and dppo packages are pre-trained with that seed on ``<data-dir>/<task>_lowdim.hdf5``
(state observations: proprio + object pose) for ``--pretrain-steps`` (``--max-demos`` for a weak start; pick
the budget where pre-training is least saturated) — or taken from the ablation's cells of that seed with
``--pretrained-from runs/ablation/<task>_state_s<steps>`` (its evaluations are reused then, when run with the
same episodes, evaluation seed and 1 worker) — and every arm is fine-tuned with that seed until its run
reaches ``--env-steps`` env steps (runs stop after the PPO iteration that reaches the budget, so arms differ by
less than one iteration: ``--envs`` x ``--steps-per-iter`` x 4 env steps).

The Gaussian arm's BC budget. BC is cheap and its optimum depends on the data, so tune ``--bc-steps`` on the
same demos before the comparison: ``--arms gaussian --seeds 0 1 2 --env-steps 0 --bc-steps N`` fine-tunes
nothing and records the BC policy's success over ``--final-eval-episodes`` episodes as ``final_success``; run it
for N in 1000 3000 10000 30000 (each with its own ``--out``, e.g. /tmp/bc_N.json) and use the N with the
highest mean success (the smallest N within its interval on a tie) — a fair start is the best BC policy, not
the diffusion policy's budget. The chosen N is stored in every gaussian record (``bc_steps``).

Resumable: a run is skipped when ``--out`` has its record or its run folder has ``record.json`` (the done
marker, written after its final evaluation); pre-trained packages are reused; an interrupted fine-tuning run
starts again. ``--out`` is rewritten atomically after every run: DESIGN.md's records ``{task, arm, seed,
env_steps, pretrained_success, final_success, episodes, curve}`` (``curve``: [[env steps, success]] of the
periodic evaluations, ``--eval-episodes`` episodes each, deterministic chain / mean action; ``episodes``: of
the final evaluation) plus ``budget, start, pretrained_episodes, final_ci95, bc_steps, pretrain, run, time_s,
command``. For
the diffusion arms ``pretrained_success`` is d2ppo.evaluate of the pre-trained package over
``--final-eval-episodes``; for the Gaussian arm it is the first curve point (the BC policy, ``--eval-episodes``
episodes), hence ``pretrained_episodes``. The PNG (``--out`` with .png): per arm the mean curve over seeds with a
95 % Student-t interval over seeds (seed curves interpolated linearly onto a common env-step grid, no
extrapolation past the shortest), thin lines for single seeds.
"""

from __future__ import annotations

import json
import math
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from d2ppo.results import (
    CellClock,
    atomic_write_json,
    config_from_namespace,
    parser_from_dataclass,
    read_records,
    record_key,
    relative,
    t_interval,
    unique,
    upsert,
)

ARMS = ("d2ppo", "dppo", "gaussian")
RECORD_KEY = ("task", "arm", "seed", "budget", "start")


class ComparisonError(ValueError):
    """Bad input, found before anything runs; one line naming the option and the problem."""


@dataclass
class ComparisonConfig:
    """The arms, the budget and the flags of every run; ``--help`` is generated from these fields."""

    task: str = field(default="square", metadata={"help": "lift | can | square | transport"})
    arms: tuple[str, ...] = field(default=ARMS, metadata={"help": "d2ppo | dppo | gaussian"})
    seeds: tuple[int, ...] = field(default=(0, 1, 2), metadata={"help": "seeds (pre-training and fine-tuning)"})
    env_steps: int = field(default=200_000, metadata={"help": "fine-tuning budget per run, env steps (0: evaluate the start only)"})
    # pre-training
    data_dir: str = field(default="data", metadata={"help": "folder of <task>_lowdim.hdf5"})
    pretrain_steps: int = field(default=5000, metadata={"help": "pre-training gradient steps"})
    max_demos: int | None = field(default=None, metadata={"help": "pre-train on the first N demos (weak start)"})
    dispersive_weight: float = field(default=0.5, metadata={"help": "λ of the d2ppo arm (dppo: 0)"})
    layer: str = field(default="early", metadata={"help": "regularised layer of the d2ppo arm"})
    batch_size: int = field(default=64, metadata={"help": "pre-training batch size"})
    mlp_dims: tuple[int, ...] = field(default=(768, 768, 768), metadata={"help": "denoiser widths"})
    pretrained_from: str | None = field(default=None, metadata={
        "help": "start from an ablation group's packages instead of pre-training: a folder with lam0_seed<s>/policy and "
                "lam<λ>_<layer>_seed<s>/policy (e.g. runs/ablation/square_state_s10000)"})
    # Gaussian arm
    bc_steps: int = field(default=3000, metadata={"help": "behaviour-cloning steps of the gaussian arm (tune: see above)"})
    gaussian_actor_lr: float = field(default=1e-5, metadata={"help": "gaussian arm's PPO actor learning rate"})
    # fine-tuning: scripts/finetune_lift_lowdim.sh's flags
    envs: int = field(default=8, metadata={"help": "parallel envs"})
    env_workers: int = field(default=2, metadata={"help": "env worker processes (finetune --workers)"})
    steps_per_iter: int = field(default=100, metadata={"help": "chunk steps per env per PPO iteration"})
    max_episode_steps: int | None = field(default=None, metadata={"help": "training-episode time limit, env steps (finetune --max-env-steps; default: the task's)"})
    eval_every: int = field(default=3, metadata={"help": "iterations between curve points"})
    eval_episodes: int = field(default=16, metadata={"help": "episodes per curve point"})
    final_eval_episodes: int = field(default=50, metadata={"help": "episodes of the pre-trained and final evaluations"})
    noise_eta: float = field(default=0.0, metadata={"help": "finetune --noise-eta"})
    actor_lr: float = field(default=1e-5, metadata={"help": "finetune --actor-lr (diffusion arms)"})
    clip_base: float = field(default=0.005, metadata={"help": "finetune --clip-base"})
    clip_last: float = field(default=0.05, metadata={"help": "finetune --clip-last"})
    target_kl: float = field(default=0.005, metadata={"help": "finetune --target-kl"})
    update_epochs: int = field(default=10, metadata={"help": "finetune --update-epochs"})
    minibatch_size: int = field(default=200, metadata={"help": "finetune --minibatch-size"})
    critic_warmup: int = field(default=1, metadata={"help": "finetune --critic-warmup"})
    threads: int = field(default=2, metadata={"help": "torch threads of the PPO update (rollouts use 1)"})
    finetune_args: str = field(default="", metadata={"help": "more d2ppo.rl.finetune flags, appended (one quoted string)"})
    runs_dir: str = field(default="runs/finetune_comparison", metadata={"help": "run folders"})
    out: str = field(default="docs/results/finetune_comparison.json", metadata={"help": "results file (plot: .png)"})
    plot_only: bool = field(default=False, metadata={"help": "only (re)draw the plot from --out"})
    dry_run: bool = field(default=False, metadata={"help": "print the runs that would run, and exit"})

    @property
    def data(self) -> Path:
        return Path(self.data_dir) / f"{self.task}_lowdim.hdf5"

    @property
    def plot_path(self) -> Path:
        return Path(self.out).with_suffix(".png")

    @property
    def start(self) -> str:
        """Names the starting packages in run folders: pre<steps>[_d<demos>], or from<ablation group>."""
        if self.pretrained_from:
            return "from_" + Path(self.pretrained_from).name
        return f"pre{self.pretrain_steps}" + (f"_d{self.max_demos}" if self.max_demos else "")

    def pretrain_dir(self, lam: float, seed: int) -> Path:
        demos = f"_d{self.max_demos}" if self.max_demos else ""
        name = f"lam0_seed{seed}" if lam == 0 else f"lam{lam:g}_{self.layer}_seed{seed}"
        return Path(self.runs_dir) / f"{self.task}_pre{self.pretrain_steps}{demos}" / name

    def run_dir(self, arm: str, seed: int) -> Path:
        extra = f"_bc{self.bc_steps}" if arm == "gaussian" else ""
        return Path(self.runs_dir) / f"{self.task}_{self.start}_b{self.env_steps}" / f"{arm}{extra}_seed{seed}"


def _key(cfg: ComparisonConfig, arm: str, seed: int) -> tuple:
    return record_key({"task": cfg.task, "arm": arm, "seed": seed, "budget": cfg.env_steps, "start": cfg.start},
                      RECORD_KEY)


def finetune_argv(cfg: ComparisonConfig, arm: str, seed: int, policy: Path, run: Path) -> list[str]:
    """The ``d2ppo.rl.finetune`` command line of one run."""
    act_steps = 4
    per_iter = cfg.envs * cfg.steps_per_iter * act_steps
    # Enough iterations for the budget even when episodes end mid-chunk; --env-step-budget stops the run.
    iterations = 0 if cfg.env_steps == 0 else 2 * math.ceil(cfg.env_steps / per_iter) + 1
    argv = ["--policy", str(policy), "--out", str(run / "package"), "--run-dir", str(run),
            "--algo", "gaussian" if arm == "gaussian" else "d2ppo", "--iterations", str(iterations),
            "--env-step-budget", str(cfg.env_steps), "--envs", str(cfg.envs), "--workers", str(cfg.env_workers),
            "--steps-per-iter", str(cfg.steps_per_iter), "--eval-every", str(cfg.eval_every),
            "--eval-episodes", str(cfg.eval_episodes), "--final-eval-episodes", str(cfg.final_eval_episodes),
            "--noise-eta", f"{cfg.noise_eta:g}", "--actor-lr", f"{cfg.actor_lr:g}", "--clip-base", f"{cfg.clip_base:g}",
            "--clip-last", f"{cfg.clip_last:g}", "--target-kl", f"{cfg.target_kl:g}",
            "--update-epochs", str(cfg.update_epochs), "--minibatch-size", str(cfg.minibatch_size),
            "--critic-warmup", str(cfg.critic_warmup), "--seed", str(seed), "--threads", str(cfg.threads)]
    if cfg.max_episode_steps:
        argv += ["--max-env-steps", str(cfg.max_episode_steps)]
    if arm == "gaussian":
        argv += ["--gaussian-init", "bc", "--bc-steps", str(cfg.bc_steps), "--gaussian-actor-lr", f"{cfg.gaussian_actor_lr:g}"]
    return argv + shlex.split(cfg.finetune_args)


def _pretrained_package(cfg: ComparisonConfig, lam: float, seed: int) -> Path:
    """The package an ablation cell trained (``--pretrained-from``)."""
    name = f"lam0_seed{seed}" if lam == 0 else f"lam{lam:g}_{cfg.layer}_seed{seed}"
    return Path(cfg.pretrained_from) / name / "policy"


def _pretrain(cfg: ComparisonConfig, lam: float, seed: int) -> Path:
    from d2ppo.ablation import pretrain, pretrain_argv

    if cfg.pretrained_from:
        return _pretrained_package(cfg, lam, seed)

    argv = pretrain_argv(cfg.data, cfg.pretrain_dir(lam, seed), "state", cfg.pretrain_steps, seed, lam, cfg.layer,
                         max_demos=cfg.max_demos, batch_size=cfg.batch_size, mlp_dims=cfg.mlp_dims, threads=1)
    return pretrain(argv)


def _finetune(argv: list[str]) -> dict:
    """d2ppo.rl.finetune with these flags; returns its summary (tests replace this)."""
    from d2ppo.rl.finetune import build_parser, config_from_args, finetune

    return finetune(config_from_args(build_parser().parse_args(argv)),
                    command="python -m d2ppo.rl.finetune " + shlex.join(argv))


def _training_steps(policy: Path) -> int | None:
    try:
        return json.loads((policy / "policy.json").read_text())["training"]["steps"]
    except (OSError, KeyError, json.JSONDecodeError):
        return None


def run_one(cfg: ComparisonConfig, arm: str, seed: int) -> dict:
    """Pre-train (unless done), fine-tune, and return the run's record (also written to its record.json)."""
    run = cfg.run_dir(arm, seed)
    marker = run / "record.json"
    if marker.is_file():
        return json.loads(marker.read_text())
    lam = 0.0 if arm == "dppo" else cfg.dispersive_weight
    policy = _pretrain(cfg, lam, seed)
    argv = finetune_argv(cfg, arm, seed, policy, run)
    summary = _finetune(argv)
    card = json.loads((Path(summary["out"]) / "policy.json").read_text())
    curve = [[int(c["env_steps"]), float(c["success_rate"])] for c in card["finetuning"].get("curve", [])]
    pre = summary.get("pretrained_evaluation")
    final = summary.get("evaluation") or {}
    if arm == "gaussian" or pre is None:  # the BC policy: the curve's first point (before any PPO update)
        pre_success = curve[0][1] if curve and curve[0][0] == 0 else None
        pre_episodes = cfg.eval_episodes if pre_success is not None else 0
    else:
        pre_success, pre_episodes = pre["success_rate"], pre["episodes"]
    record = {
        "task": cfg.task, "arm": arm, "seed": seed, "env_steps": int(summary["env_steps"]),
        "pretrained_success": pre_success, "final_success": final.get("success_rate"),
        "episodes": final.get("episodes", 0), "curve": curve,
        # beyond the contract's fields
        "budget": cfg.env_steps, "pretrained_episodes": pre_episodes, "final_ci95": final.get("ci95"),
        "bc_steps": cfg.bc_steps if arm == "gaussian" else None, "start": cfg.start,
        "pretrain": {"lambda": lam, "layer": cfg.layer if lam > 0 else None, "policy": relative(policy),
                     "steps": _training_steps(policy)},
        "run": relative(run), "time_s": summary.get("total_time_s"),
        "command": "python -m d2ppo.rl.finetune " + shlex.join(argv),
    }
    atomic_write_json(marker, record)
    return record


# ---------------------------------------------------------------------- plot
def plot(records: list[dict], path: str | Path) -> Path:
    """Success vs env steps per arm: mean over seeds and a 95 % t-interval over seeds, single seeds thin."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = unique((r["task"], r.get("budget"), r.get("start")) for r in records)
    fig, axes = plt.subplots(1, len(groups), figsize=(6.4 * len(groups), 4.2), squeeze=False)
    colors = {"d2ppo": "C0", "dppo": "C1", "gaussian": "C2"}
    for ax, (task, budget, start) in zip(axes[0], groups):
        sub = [r for r in records if (r["task"], r.get("budget"), r.get("start")) == (task, budget, start) and r.get("curve")]
        for arm in [a for a in ARMS if any(r["arm"] == a for r in sub)]:
            curves = [np.asarray(r["curve"], dtype=float) for r in sub if r["arm"] == arm]
            for c in curves:
                ax.plot(c[:, 0], c[:, 1], color=colors[arm], lw=0.7, alpha=0.35)
            end = min(c[-1, 0] for c in curves)
            x = np.linspace(0, end, 25) if end > 0 else np.zeros(1)
            ys = np.stack([np.interp(x, c[:, 0], c[:, 1]) for c in curves])
            stats = np.array([t_interval(ys[:, i]) for i in range(len(x))])
            ax.plot(x, stats[:, 0], color=colors[arm], lw=2, label=f"{arm} ({len(curves)} seeds)")
            if len(curves) > 1:
                ax.fill_between(x, stats[:, 1], stats[:, 2], color=colors[arm], alpha=0.18)
        ax.set_xlabel("fine-tuning env steps")
        ax.set_ylabel("success rate (periodic evaluation)")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.set_title(f"{task} ({start}): equal budget of {budget} env steps; mean and 95 % t-interval over seeds",
                     fontsize=9)
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------- input checks and main
def check(cfg: ComparisonConfig) -> None:
    from d2ppo.ablation import LAYERS, STATE_KEYS, TASKS

    if cfg.task not in TASKS:
        raise ComparisonError(f"--task: unknown task {cfg.task!r}; choose from {list(TASKS)}")
    bad = [a for a in cfg.arms if a not in ARMS]
    if bad:
        raise ComparisonError(f"--arms: unknown arm(s) {bad}; choose from {list(ARMS)}")
    if cfg.layer not in LAYERS[:3]:
        raise ComparisonError(f"--layer: {cfg.layer!r} is not one of {list(LAYERS[:3])} (state observations)")
    if not (math.isfinite(cfg.dispersive_weight) and cfg.dispersive_weight > 0):
        raise ComparisonError(f"--dispersive-weight: the d2ppo arm needs λ > 0, got {cfg.dispersive_weight}")
    if not cfg.seeds or any(s < 0 for s in cfg.seeds):
        raise ComparisonError(f"--seeds: need one or more seeds >= 0, got {list(cfg.seeds)}")
    for opt, v, lo in (("--env-steps", cfg.env_steps, 0), ("--pretrain-steps", cfg.pretrain_steps, 1),
                       ("--bc-steps", cfg.bc_steps, 0), ("--envs", cfg.envs, 1), ("--steps-per-iter", cfg.steps_per_iter, 1),
                       ("--final-eval-episodes", cfg.final_eval_episodes, 1), ("--eval-every", cfg.eval_every, 1),
                       ("--eval-episodes", cfg.eval_episodes, 1), ("--threads", cfg.threads, 1)):
        if v < lo:
            raise ComparisonError(f"{opt}: must be >= {lo}, got {v}")
    try:
        shlex.split(cfg.finetune_args)
        records = read_records(cfg.out)
    except ValueError as e:
        raise ComparisonError(f"--out / --finetune-args: {e}") from None
    if cfg.plot_only:
        if not records:
            raise ComparisonError(f"--plot-only: no records in {cfg.out}")
        return
    if not cfg.data.is_file():
        raise ComparisonError(f"--data-dir {cfg.data_dir}: no {cfg.data} for task {cfg.task} (make it with: python -m "
                              f"d2ppo.experts.generate --task {cfg.task} --episodes 200 --cameras none --out {cfg.data})")
    from d2ppo.data.robomimic_hdf5 import DatasetFormatError, validate_file

    try:
        validate_file(cfg.data, obs_keys=STATE_KEYS, action_dim=7)
    except DatasetFormatError as e:
        raise ComparisonError(f"--data-dir: {e}") from None
    if cfg.pretrained_from:
        lams = {0.0 if a == "dppo" else cfg.dispersive_weight for a in cfg.arms}
        missing = [str(_pretrained_package(cfg, lam, s)) for lam in sorted(lams) for s in cfg.seeds
                   if not (_pretrained_package(cfg, lam, s) / "policy.json").is_file()]
        if missing:
            raise ComparisonError(f"--pretrained-from: no package {missing[0]} ({len(missing)} missing)")


def main(argv: list[str] | None = None) -> None:
    cfg = config_from_namespace(ComparisonConfig, parser_from_dataclass(ComparisonConfig, "d2ppo finetune-comparison",
                                                                        __doc__).parse_args(argv))
    try:
        check(cfg)
    except ComparisonError as e:
        raise SystemExit(f"error: {e}") from None
    records = read_records(cfg.out)
    if not cfg.plot_only:
        have = {record_key(r, RECORD_KEY) for r in records}
        # Seeds outermost: an interrupted comparison has every arm at the same number of seeds.
        todo = [(arm, s) for s in cfg.seeds for arm in cfg.arms if _key(cfg, arm, s) not in have]
        if len(todo) < len(cfg.seeds) * len(cfg.arms):
            print(f"[comparison] {len(cfg.seeds) * len(cfg.arms) - len(todo)} run(s) already in {cfg.out}, skipped",
                  flush=True)
        if cfg.dry_run:
            for arm, s in todo:
                print(f"{cfg.task} {arm} seed {s} -> {cfg.run_dir(arm, s)}")
            return
        clock = CellClock(len(todo), 1, prefix="[comparison]", unit="run")
        for arm, seed in todo:
            name = f"{cfg.task} {arm} seed {seed}"
            clock.start(name)
            rec = run_one(cfg, arm, seed)
            records = upsert(records, rec, RECORD_KEY)
            atomic_write_json(cfg.out, records)
            fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
            clock.finish(name, f"{fmt(rec['pretrained_success'])} -> {fmt(rec['final_success'])} "
                               f"in {rec['env_steps']} env steps")
    if records:
        print(f"[comparison] {len(records)} records in {cfg.out}; plot -> {plot(records, cfg.plot_path)}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
