"""Fine-tune a pre-trained policy package with PPO in robosuite (D²PPO / DPPO / Gaussian-PPO baseline).

    python -m d2ppo.rl.finetune --policy runs/lift_weak/policy --out policies/lift_lowdim_d2ppo_ft \\
        --iterations 40 --envs 2 --steps-per-iter 100 --eval-every 5 --eval-episodes 20 --seed 0

Arms of the paper's comparison, one command each (same envs, seeds and budget):
  D²PPO     --algo d2ppo    --policy <package pre-trained with dispersive weight 0.5>
  DPPO      --algo d2ppo    --policy <package pre-trained with dispersive weight 0 (plain diffusion)>
  Gaussian  --algo gaussian --policy <either package>: an MLP Gaussian policy, behaviour-cloned on the
            package's own training demos (``--gaussian-init bc``) or from scratch (``scratch``), then PPO.

Writes ``--out`` (the final policy package, with learning_curve.png; its card records the pre-trained and
fine-tuned evaluations and the fine-tuning provenance) and ``--run-dir`` (default runs/finetune/<out name>):
config.json, metrics.jsonl, tb/ (TensorBoard), learning_curve.png and checkpoints/iter_NNNN/ (packages).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from d2ppo.rl.ppo_diffusion import DiffusionPPO, DiffusionPPOConfig
from d2ppo.rl.ppo_gaussian import GaussianPPOConfig


@dataclass
class FinetuneConfig:
    """Everything a fine-tuning run depends on; saved as config.json in the run folder and in the card."""

    policy: str  # pre-trained policy package
    out: str  # fine-tuned package to write
    run_dir: str | None = None  # default runs/finetune/<name of out>
    algo: str = "d2ppo"  # d2ppo (diffusion, two-layer MDP; DPPO = same from a λ = 0 package) | gaussian
    iterations: int = 40  # PPO iterations (rollout + update)
    envs: int = 2  # parallel envs
    workers: int = 2  # env worker processes (0 = in this process)
    steps_per_iter: int = 100  # chunk steps per env per iteration
    # Episode time limit of training rollouts and periodic evaluations (default: d2ppo.evaluate's per-task
    # horizon). A shorter limit wastes fewer env steps on failed episodes; the final evaluations always use
    # d2ppo.evaluate's horizon.
    max_env_steps: int | None = None
    gamma: float = 0.99  # discount per chunk step (Lift episodes are <= 50 chunks)
    gae_lambda: float = 0.95
    reward_scaling: bool = True  # running reward scaling (DPPO)
    critic_warmup_iters: int = 2  # iterations updating only the critic (actor frozen)
    eval_every: int = 5  # iterations between deterministic evaluations (0 = only at start and end)
    eval_episodes: int = 20  # episodes per periodic evaluation (fixed placement seeds eval_seed + i)
    eval_seed: int = 5000
    final_eval_episodes: int = 50  # d2ppo.evaluate of the pre-trained and the fine-tuned package
    final_eval_seed: int = 1000  # d2ppo.evaluate's default seed, so numbers match a plain `d2ppo.evaluate` run
    final_eval_workers: int = 1  # d2ppo.evaluate's default; its episode seeds depend on the worker count
    seed: int = 0
    # torch threads for the update; rollouts always use 1. Measured on the 2-core machine: with no other jobs,
    # 2 threads cut the update of 8 envs x 100 steps from a median of 18.4 s to 11.5 s (the env workers wait
    # meanwhile);
    # under load ~10 from other jobs, 2 threads made the update 6x and inference 30x slower than 1.
    threads: int = 1
    max_minutes: float | None = None  # stop after this wall time (checked between iterations)
    # Stop after the iteration in which the run's env steps reach this budget (the arms of a comparison at equal
    # env steps: they differ by less than one iteration's envs x steps_per_iter x act_steps).
    env_step_budget: int | None = None
    ppo: DiffusionPPOConfig = field(default_factory=DiffusionPPOConfig)
    gaussian: GaussianPPOConfig = field(default_factory=GaussianPPOConfig)

    def to_json(self) -> dict:
        d = asdict(self)
        d["ppo"]["critic_dims"] = list(self.ppo.critic_dims)
        d["gaussian"] = self.gaussian.to_json()
        return d


# ---------------------------------------------------------------------- agents
def build_agent(cfg: FinetuneConfig, pkg):
    if cfg.algo == "d2ppo":
        return DiffusionPPO(pkg.model, pkg.normalizers["action"], cfg.ppo)
    if cfg.algo == "gaussian":
        from d2ppo.rl.ppo_gaussian import GaussianPPO, pretrain_gaussian

        actor = pretrain_gaussian(pkg, cfg.gaussian, seed=cfg.seed)
        return GaussianPPO(actor, cfg.gaussian, pkg.normalizers["action"])
    raise ValueError(f"unknown --algo {cfg.algo!r}; expected d2ppo or gaussian")


def save_agent(agent, cfg: FinetuneConfig, pkg, path: Path, extra: dict) -> Path:
    """Write the agent's policy as a package (diffusion: the standard format; Gaussian: its own format)."""
    if cfg.algo == "d2ppo":

        return _save_diffusion(agent.model, agent.deploy_config(), pkg, path, extra)
    from d2ppo.rl.ppo_gaussian import save_gaussian_policy

    return save_gaussian_policy(path, agent.actor, pkg, extra)


def _save_diffusion(model, deploy_cfg, pkg, path: Path, extra: dict) -> Path:
    """save_policy with ``deploy_cfg`` as the card's model config (the deterministic chain that was evaluated)."""
    from d2ppo.package import save_policy

    card_extra = {k: pkg.card[k] for k in ("training",) if k in pkg.card}
    card_extra.update(extra)
    train_cfg = model.cfg
    model.cfg = deploy_cfg
    try:
        return save_policy(path, model, pkg.normalizers, task=pkg.task, env_args=pkg.env_args,
                           render_profile=pkg.render_profile, control_rate_hz=pkg.control_rate_hz,
                           robot_base_pos=tuple(pkg.robot_base_pos), extra=card_extra)
    finally:
        model.cfg = train_cfg


def final_evaluation(cfg: FinetuneConfig, path: Path, agent=None, venv=None) -> dict:
    """≥ 50-episode evaluation: d2ppo.evaluate for diffusion packages (the project's one evaluator, its
    per-task horizon, whatever --max-env-steps the training used); the Gaussian baseline, which d2ppo.evaluate
    cannot load, runs the same seeds and horizon in the RL harness."""
    if cfg.algo == "d2ppo":
        from d2ppo.evaluate import evaluate_policy

        res = evaluate_policy(path, cfg.final_eval_episodes, seed=cfg.final_eval_seed, workers=cfg.final_eval_workers,
                              progress=False)
        res = {k: v for k, v in res.items() if k != "episodes_detail"}
        res["command"] = (f"python -m d2ppo.evaluate --policy {path} --episodes {cfg.final_eval_episodes} "
                          f"--seed {cfg.final_eval_seed} --workers {cfg.final_eval_workers}")
        return res
    from d2ppo.rl.rollout import evaluate_agent

    res = evaluate_agent(agent, venv, [cfg.final_eval_seed + i for i in range(cfg.final_eval_episodes)])
    res.update({"seed": cfg.final_eval_seed, "harness": "d2ppo.rl.rollout.evaluate_agent (deterministic mean action)"})
    return res


def _package_name(path: str) -> str:
    """runs/x/policy -> x/policy (a pre-training run's package folder is always called policy)."""
    p = Path(path)
    return f"{p.parent.name}/{p.name}" if p.name == "policy" else p.name


def _cpu_seconds() -> float:
    """User + system CPU time of this process and its reaped children."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _reusable_evaluation(cfg: FinetuneConfig, policy: Path) -> dict | None:
    """A d2ppo.evaluate result already stored in ``<policy>/eval/eval.json`` with the same episodes, seed and
    horizon (the evaluator is deterministic for these), so the pre-trained package is not evaluated twice."""
    path = policy / "eval" / "eval.json"
    try:
        res = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    horizon = "task default"
    if (res.get("episodes"), res.get("seed"), res.get("horizon"), res.get("backend"), res.get("workers")) != (
            cfg.final_eval_episodes, cfg.final_eval_seed, horizon, "torch", cfg.final_eval_workers):
        return None
    print(f"[finetune] pre-trained evaluation reused from {path}", flush=True)
    res = {k: v for k, v in res.items() if k != "episodes_detail"}
    res["source"] = str(path)
    return res


# ---------------------------------------------------------------------- learning curve
def plot_curve(history: list[dict], path: Path, title: str) -> None:
    """Success vs env steps: deterministic evaluations (with 95 % CI) and the stochastic training rollouts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    train = [h for h in history if h.get("rollout_success") is not None]
    if train:
        ax.plot([h["env_steps"] for h in train], [h["rollout_success"] for h in train], color="0.6", lw=1,
                label="training rollouts (stochastic chain)")
    ev = [h for h in history if "eval" in h]
    if ev:
        x = np.array([h["env_steps"] for h in ev])
        y = np.array([h["eval"]["success_rate"] for h in ev])
        lo = y - np.array([h["eval"]["ci95"][0] for h in ev])
        hi = np.array([h["eval"]["ci95"][1] for h in ev]) - y
        ax.errorbar(x, y, yerr=[lo, hi], marker="o", capsize=3, color="C0",
                    label=f"evaluation ({ev[0]['eval']['episodes']} episodes, deterministic)")
    ax.set_xlabel("environment steps")
    ax.set_ylabel("success rate")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=9)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# ---------------------------------------------------------------------- the loop
def finetune(cfg: FinetuneConfig, command: str | None = None) -> dict:
    from torch.utils.tensorboard import SummaryWriter
    from tqdm import tqdm

    from d2ppo.envs.chunked import chunked_env_configs
    from d2ppo.envs.vector import VectorChunkedEnv
    from d2ppo.package import load_policy, write_card
    from d2ppo.rl.rollout import RunningRewardScaler, advantages, collect, evaluate_agent

    out = Path(cfg.out)
    run_dir = Path(cfg.run_dir or Path("runs/finetune") / out.name)
    run_dir.mkdir(parents=True, exist_ok=True)
    pkg = load_policy(cfg.policy)
    if cfg.ppo.train_encoder is None:  # record the choice made for this package (DPPO: the ViT of a pixel policy)
        cfg.ppo = replace(cfg.ppo, train_encoder=pkg.spec.uses_images)
    (run_dir / "config.json").write_text(json.dumps(cfg.to_json(), indent=2))
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    t_start = time.time()

    pre_eval = None
    if cfg.final_eval_episodes > 0 and cfg.algo == "d2ppo":
        pre_eval = _reusable_evaluation(cfg, Path(cfg.policy))
        if pre_eval is None:
            print(f"[finetune] evaluating the pre-trained package ({cfg.final_eval_episodes} episodes)", flush=True)
            pre_eval = final_evaluation(cfg, Path(cfg.policy))
        print(f"[finetune] pre-trained success {pre_eval['success_rate']:.3f} "
              f"({pre_eval['successes']}/{pre_eval['episodes']})", flush=True)
        # The fine-tuned package's deterministic chain is DDIM η = eval_eta; evaluate the pre-trained weights
        # with that chain too, so the improvement is not confused with the change of sampler.
        deploy_cfg = replace(pkg.model.cfg, deploy_std=0.0)
        if cfg.ppo.eval_eta is not None:
            deploy_cfg = replace(deploy_cfg, ddim_eta=cfg.ppo.eval_eta)
        if deploy_cfg != pkg.model.cfg:
            same_chain = run_dir / "pretrained_deploy_chain"
            if not (same_chain / "policy.json").is_file():
                _save_diffusion(pkg.model, deploy_cfg, pkg, same_chain,
                                {"note": f"pre-trained weights of {cfg.policy} with the fine-tuned package's chain"})
            pre_eval_chain = _reusable_evaluation(cfg, same_chain)
            if pre_eval_chain is None:
                print(f"[finetune] evaluating the pre-trained weights with the DDIM η={cfg.ppo.eval_eta} chain", flush=True)
                pre_eval_chain = final_evaluation(cfg, same_chain)
                (same_chain / "eval").mkdir(exist_ok=True)
                (same_chain / "eval" / "eval.json").write_text(json.dumps(pre_eval_chain, indent=2))
            pre_eval["same_chain_as_finetuned"] = {k: pre_eval_chain[k] for k in ("success_rate", "successes",
                                                                                   "episodes", "ci95", "command")}
            print(f"[finetune] pre-trained success with the η={cfg.ppo.eval_eta} chain "
                  f"{pre_eval_chain['success_rate']:.3f}", flush=True)
    t_pre_eval = time.time() - t_start

    torch.set_num_threads(cfg.threads)
    agent = build_agent(cfg, pkg)
    configs = chunked_env_configs(pkg, cfg.envs, seed=cfg.seed * 1000, max_env_steps=cfg.max_env_steps)
    writer = SummaryWriter(str(run_dir / "tb"))
    metrics_f = (run_dir / "metrics.jsonl").open("w")
    history: list[dict] = []
    eval_seeds = [cfg.eval_seed + i for i in range(cfg.eval_episodes)]
    t0, cpu0 = time.time(), _cpu_seconds()
    env_steps, eval_time = 0, 0.0
    venv = VectorChunkedEnv(configs, workers=cfg.workers)
    try:
        scaler = RunningRewardScaler(cfg.envs, cfg.gamma) if cfg.reward_scaling else None

        def periodic_eval(it: int) -> dict:
            nonlocal eval_time
            te = time.time()
            torch.set_num_threads(1)
            res = evaluate_agent(agent, venv, eval_seeds)
            eval_time += time.time() - te
            for k in ("success_rate", "mean_env_steps"):
                writer.add_scalar(f"eval/{k}", res[k], env_steps)
            return res

        if cfg.eval_episodes > 0:
            history.append({"iteration": 0, "env_steps": 0, "eval": periodic_eval(0), "time_s": round(time.time() - t0, 1)})
            metrics_f.write(json.dumps(history[-1]) + "\n")
        obs = venv.reset(rng.integers(2**31, size=cfg.envs).tolist())
        bar = tqdm(range(1, cfg.iterations + 1), desc=f"finetune ({cfg.algo})", dynamic_ncols=True, mininterval=1.0)
        last_eval = history[-1]["eval"]["success_rate"] if history else float("nan")
        it = 0
        for it in bar:
            t_it = time.time()
            torch.set_num_threads(1)
            roll = collect(agent, venv, obs, cfg.steps_per_iter)
            obs = roll.next_obs
            env_steps += roll.env_steps
            t_roll = time.time() - t_it
            torch.set_num_threads(cfg.threads)
            adv, ret = advantages(roll, agent.value(obs), cfg.gamma, cfg.gae_lambda, scaler)
            batch = roll.flat()
            batch.update(advantage=adv.reshape(-1), **{"return": ret.reshape(-1)})
            logs = agent.update(batch, update_actor=it > cfg.critic_warmup_iters)
            t_upd = time.time() - t_it - t_roll
            succ = float(np.mean([e["success"] for e in roll.episodes])) if roll.episodes else None
            rec = {"iteration": it, "env_steps": env_steps, "episodes": len(roll.episodes), "rollout_success": succ,
                   "time_s": round(time.time() - t0, 1), "rollout_s": round(t_roll, 1), "update_s": round(t_upd, 1),
                   **{f"loss/{k}": v for k, v in logs.items()}}
            writer.add_scalar("rollout/success_rate", succ if succ is not None else float("nan"), env_steps)
            writer.add_scalar("rollout/episodes", len(roll.episodes), env_steps)
            writer.add_scalar("time/rollout_s", t_roll, env_steps)
            writer.add_scalar("time/update_s", t_upd, env_steps)
            for k, v in logs.items():
                writer.add_scalar(f"update/{k}", v, env_steps)
            out_of_time = cfg.max_minutes is not None and (time.time() - t0) / 60 >= cfg.max_minutes
            out_of_budget = cfg.env_step_budget is not None and env_steps >= cfg.env_step_budget
            last = it == cfg.iterations or out_of_time or out_of_budget
            if cfg.eval_every and cfg.eval_episodes > 0 and (it % cfg.eval_every == 0 or last):
                rec["eval"] = periodic_eval(it)
                last_eval = rec["eval"]["success_rate"]
                save_agent(agent, cfg, pkg, run_dir / "checkpoints" / f"iter_{it:04d}",
                           {"finetuning": {"iteration": it, "env_steps": env_steps, "periodic_eval": rec["eval"]}})
                obs = venv.reset(rng.integers(2**31, size=cfg.envs).tolist())  # eval left the envs mid-episode
                if scaler is not None:
                    scaler.reset()  # ... so the interrupted episodes' returns end here too
            history.append(rec)
            metrics_f.write(json.dumps(rec) + "\n")
            metrics_f.flush()
            bar.set_postfix(roll=f"{succ:.2f}" if succ is not None else "-", eval=f"{last_eval:.2f}",
                            steps=env_steps, kl=f"{logs.get('approx_kl', 0):.1e}")
            if out_of_budget:
                print(f"[finetune] env-step budget of {cfg.env_step_budget} reached after iteration {it} "
                      f"({env_steps} env steps)", flush=True)
                break
            if out_of_time:
                print(f"[finetune] time budget of {cfg.max_minutes} min reached after iteration {it}", flush=True)
                break
        bar.close()
        train_time = time.time() - t0
        venv.close()  # reaps the workers, so their CPU time shows in RUSAGE_CHILDREN
        cpu_time = _cpu_seconds() - cpu0
        plot_curve(history, run_dir / "learning_curve.png",
                   f"{pkg.task} {cfg.algo} fine-tuning from {_package_name(cfg.policy)} (seed {cfg.seed})")

        finetuning = {
            "command": command or "python -m d2ppo.rl.finetune " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
            "algo": cfg.algo,
            "pretrained_package": str(cfg.policy),
            "iterations": it,
            "env_steps": env_steps,
            "time_s": round(train_time, 1),
            "cpu_time_s": round(cpu_time, 1),  # this process + env workers during the training loop
            "load_avg_1min_at_end": round(os.getloadavg()[0], 2),  # the dev machine is shared
            "periodic_eval_time_s": round(eval_time, 1),
            "seed": cfg.seed,
            "config": cfg.to_json(),
            "curve": [{"env_steps": h["env_steps"], **{k: h["eval"][k] for k in ("success_rate", "episodes", "ci95")}}
                      for h in history if "eval" in h],
        }
        extra = {"finetuning": finetuning}
        if pre_eval is not None:
            extra["pretrained_evaluation"] = pre_eval
        save_agent(agent, cfg, pkg, out, extra)
        shutil.copy(run_dir / "learning_curve.png", out / "learning_curve.png")
        final = None
        if cfg.final_eval_episodes > 0:
            print(f"[finetune] evaluating the fine-tuned package ({cfg.final_eval_episodes} episodes)", flush=True)
            if cfg.algo != "d2ppo":  # fresh envs with d2ppo.evaluate's per-task horizon
                venv = VectorChunkedEnv(chunked_env_configs(pkg, cfg.envs, seed=cfg.seed * 1000), workers=cfg.workers)
            final = final_evaluation(cfg, out, agent, venv)
            card = json.loads((out / "policy.json").read_text())
            card["evaluation"] = final
            write_card(out, card)
    finally:
        venv.close()
        writer.close()
        metrics_f.close()
    summary = {
        "pretrained_evaluation": pre_eval,
        "evaluation": final,
        "env_steps": env_steps,
        "train_time_s": round(train_time, 1),
        "train_cpu_time_s": round(cpu_time, 1),
        "pretrained_eval_time_s": round(t_pre_eval, 1),
        "total_time_s": round(time.time() - t_start, 1),
        "out": str(out),
        "run_dir": str(run_dir),
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    msg = f"[finetune] done: {env_steps} env steps in {train_time / 60:.1f} min"
    if pre_eval:
        msg += f"; pre-trained {pre_eval['success_rate']:.3f} ({pre_eval['successes']}/{pre_eval['episodes']})"
    if final:
        msg += f"; fine-tuned {final['success_rate']:.3f} ({final['successes']}/{final['episodes']}) CI {final['ci95']}"
    print(msg + f" -> {out}", flush=True)
    return summary


# ---------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    d, pd, gd = FinetuneConfig(policy="", out=""), DiffusionPPOConfig(), GaussianPPOConfig()
    p = argparse.ArgumentParser(prog="d2ppo finetune", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--policy", required=True, help="pre-trained policy package")
    p.add_argument("--out", required=True, help="fine-tuned policy package to write")
    p.add_argument("--run-dir", help="run folder (default runs/finetune/<out name>)")
    p.add_argument("--algo", default=d.algo, choices=["d2ppo", "gaussian"])
    p.add_argument("--iterations", type=int, default=d.iterations)
    p.add_argument("--envs", type=int, default=d.envs)
    p.add_argument("--workers", type=int, default=None, help="env processes (default: = --envs; 0 = in-process)")
    p.add_argument("--steps-per-iter", type=int, default=d.steps_per_iter, help="chunk steps per env per iteration")
    p.add_argument("--max-env-steps", type=int, help="episode time limit in env steps (default: per task)")
    p.add_argument("--gamma", type=float, default=d.gamma)
    p.add_argument("--gae-lambda", type=float, default=d.gae_lambda)
    p.add_argument("--no-reward-scaling", action="store_true")
    p.add_argument("--critic-warmup", type=int, default=d.critic_warmup_iters, help="iterations with the actor frozen")
    p.add_argument("--eval-every", type=int, default=d.eval_every)
    p.add_argument("--eval-episodes", type=int, default=d.eval_episodes)
    p.add_argument("--final-eval-episodes", type=int, default=d.final_eval_episodes)
    p.add_argument("--final-eval-workers", type=int, default=d.final_eval_workers)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--threads", type=int, default=d.threads)
    p.add_argument("--max-minutes", type=float, help="wall-time budget for the training loop")
    p.add_argument("--env-step-budget", type=int,
                   help="stop after the iteration that reaches this many env steps (equal-budget comparisons)")
    g = p.add_argument_group("diffusion PPO (--algo d2ppo)")
    g.add_argument("--ft-denoising-steps", type=int, default=pd.ft_denoising_steps)
    g.add_argument("--noise-eta", type=float, default=pd.noise_eta,
                   help="exploration std = max(noise_eta · DDIM σ_k, min sampling std); 0 = only the floor")
    g.add_argument("--eval-eta", type=float, default=pd.eval_eta,
                   help="η of the deterministic evaluated/deployed chain (default: the package's own)")
    g.add_argument("--min-sampling-std", type=float, default=pd.min_sampling_std)
    g.add_argument("--min-logprob-std", type=float, default=pd.min_logprob_std)
    g.add_argument("--gamma-denoising", type=float, default=pd.gamma_denoising)
    g.add_argument("--clip-base", type=float, default=pd.clip_base)
    g.add_argument("--clip-last", type=float, default=pd.clip_last)
    g.add_argument("--actor-lr", type=float, default=pd.actor_lr)
    g.add_argument("--critic-lr", type=float, default=pd.critic_lr)
    g.add_argument("--update-epochs", type=int, default=pd.update_epochs)
    g.add_argument("--minibatch-size", type=int, default=pd.minibatch_size, help="env steps per minibatch")
    g.add_argument("--target-kl", type=float, default=pd.target_kl)
    g.add_argument("--train-encoder", action=argparse.BooleanOptionalAction, default=pd.train_encoder,
                   help="fine-tune the observation encoder (default: yes for a pixel policy's ViT, as DPPO)")
    g.add_argument("--no-augment", action="store_true",
                   help="no random-shift augmentation of the update's images when the ViT is fine-tuned")
    g.add_argument("--logprob-clamp", type=float, nargs=2, metavar=("LO", "HI"), default=pd.logprob_clamp,
                   help="clamp of each element's log-density (DPPO: -5 2)")
    g.add_argument("--no-logprob-clamp", action="store_true", help="no log-density clamp")
    g.add_argument("--bc-coef", type=float, default=pd.bc_coef,
                   help="weight of the BC regulariser toward the pre-trained policy's chain (0 = off, as DPPO)")
    g.add_argument("--actor-lr-warmup-iters", type=int, default=pd.actor_lr_warmup_iters,
                   help="actor updates of linear lr warm-up (0 = constant lr, as DPPO's robomimic configs)")
    g.add_argument("--actor-lr-warmup-start", type=float, default=pd.actor_lr_warmup_start,
                   help="fraction of --actor-lr at the first actor update of the warm-up")
    g = p.add_argument_group("Gaussian-policy PPO baseline (--algo gaussian)")
    g.add_argument("--gaussian-init", default=gd.init, choices=["bc", "scratch"])
    g.add_argument("--bc-steps", type=int, default=gd.bc_steps)
    g.add_argument("--gaussian-actor-lr", type=float, default=gd.actor_lr)
    return p


def config_from_args(a: argparse.Namespace) -> FinetuneConfig:
    ppo = DiffusionPPOConfig(
        ft_denoising_steps=a.ft_denoising_steps, noise_eta=a.noise_eta, eval_eta=a.eval_eta,
        min_sampling_std=a.min_sampling_std, min_logprob_std=a.min_logprob_std,
        gamma_denoising=a.gamma_denoising, clip_base=a.clip_base, clip_last=a.clip_last, actor_lr=a.actor_lr,
        critic_lr=a.critic_lr, update_epochs=a.update_epochs, minibatch_size=a.minibatch_size,
        target_kl=a.target_kl if a.target_kl and a.target_kl > 0 else None, train_encoder=a.train_encoder,
        augment=not a.no_augment, logprob_clamp=None if a.no_logprob_clamp else tuple(a.logprob_clamp),
        bc_coef=a.bc_coef, actor_lr_warmup_iters=a.actor_lr_warmup_iters, actor_lr_warmup_start=a.actor_lr_warmup_start,
    )
    gauss = GaussianPPOConfig(init=a.gaussian_init, bc_steps=a.bc_steps, actor_lr=a.gaussian_actor_lr,
                              critic_lr=a.critic_lr, update_epochs=a.update_epochs, minibatch_size=a.minibatch_size,
                              target_kl=ppo.target_kl)
    return FinetuneConfig(
        policy=a.policy, out=a.out, run_dir=a.run_dir, algo=a.algo, iterations=a.iterations, envs=a.envs,
        workers=a.envs if a.workers is None else a.workers, steps_per_iter=a.steps_per_iter,
        max_env_steps=a.max_env_steps, gamma=a.gamma, gae_lambda=a.gae_lambda, reward_scaling=not a.no_reward_scaling,
        critic_warmup_iters=a.critic_warmup, eval_every=a.eval_every, eval_episodes=a.eval_episodes,
        final_eval_episodes=a.final_eval_episodes, final_eval_workers=a.final_eval_workers, seed=a.seed, threads=a.threads, max_minutes=a.max_minutes,
        env_step_budget=a.env_step_budget,
        ppo=ppo, gaussian=gauss,
    )


def main(argv: list[str] | None = None) -> None:
    a = build_parser().parse_args(argv)
    from d2ppo.package import PolicyPackageError, load_policy

    try:
        cfg = config_from_args(a)  # the configs check their own values (e.g. a log-prob std floor > 0)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    try:
        load_policy(a.policy)
    except PolicyPackageError as e:
        raise SystemExit(f"error: {e}") from None
    args = argv if argv is not None else sys.argv[1:]
    finetune(cfg, command="python -m d2ppo.rl.finetune " + " ".join(shlex.quote(x) for x in args))


if __name__ == "__main__":
    main()
