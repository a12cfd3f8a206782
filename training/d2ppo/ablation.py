"""The pre-training ablation: dispersive weight λ x regularised layer x seeds, plus a λ sweep at one layer.

    python -m d2ppo.ablation --tasks can square --seeds 0 1 2 --steps 5000 --episodes 50 --workers 2
    python -m d2ppo.ablation --plot-only                       # the PNG from docs/results/ablation.json
    python -m d2ppo.ablation --tasks square --auto             # automatic layer/λ choice (below)

Every cell is ``d2ppo.train`` (state observations: proprio + the sim's object pose, as
scripts/finetune_lift_lowdim.sh; ``--obs pixels`` trains on ``--cameras`` + proprio instead) followed by
``d2ppo.evaluate`` over ``--episodes`` seeded episodes, the same episodes for every cell (``--eval-seed``;
d2ppo.evaluate's episode seeds also depend on the number of evaluation processes: ``--workers``, or 1 with
``--jobs`` > 1 — keep them fixed across a grid). Demonstrations
are read from ``<data-dir>/<task>_lowdim.hdf5`` (state) or ``<task>_img.hdf5`` (pixels), e.g.
``python -m d2ppo.experts.generate --task square --episodes 200 --cameras none --out data/square_lowdim.hdf5``.

Cells: for each task, λ in ``--lambdas`` x layer in ``--layers`` x seed in ``--seeds`` (the grid), then for each
task of ``--sweep-tasks``, λ in ``--sweep-lambdas`` at ``--sweep-layer`` (``best``: the layer with the highest
mean success over λ > 0 in the grid; ``auto``: the automatic choice; ``none``: no sweep). λ = 0 has no
regularised layer: it is trained once per task and seed and recorded under each layer it is compared with
(those records share their ``run``).

Resumable: a cell is skipped when ``--out`` already has its record with this evaluation (same episodes,
evaluation seed and evaluation processes), or when its run folder holds ``cell.json`` (the done marker, written
after its evaluation); an interrupted training resumes from its checkpoint, a trained policy is not trained
again (a changed evaluation re-evaluates it). ``--out`` is
rewritten atomically after every cell: a JSON list of DESIGN.md's records ``{task, obs, lambda, layer,
variant, seed, steps, success_rate, successes, episodes}`` plus ``tau, max_demos, run, eval_seed,
eval_workers, ci95`` (the cell's Wilson interval), ``train_time_s, eval_time_s``. The plot (``--out`` with
.png) shows per cell the mean success over seeds with a 95 % Student-t interval over seeds (t_{0.975, n-1}
s/√n; none for one seed), and each seed's rate as a dot.

Automatic choice (``--auto``; the paper's open questions 2 and 4). One short probe run per (layer, λ) in
``--layers`` x ``--probe-lambdas``, plus one λ = 0 probe, each ``--probe-steps`` gradient steps (seed
``--probe-seeds``), then each is scored without the simulator on held-out windows (the file's
``mask/valid`` demos, ``--probe-windows`` windows): the validation diffusion loss, i.e. the ε-prediction MSE of
the EMA weights at 8 diffusion steps t evenly spread over [0, 99] with the same noise for every probe. The
choice is the (layer, λ) with the lowest validation loss (λ = 0 can win: then regularising does not help). The
effective rank and mean pairwise distance of the probed layer's features (t = 50, as d2ppo.features) are
reported beside it, not used. Then the chosen cell is trained and evaluated at full ``--steps`` for every seed
like any other cell, and ``<out>_auto.json`` records the probes, the choice and — refreshed by every later run
and by ``--plot-only`` — its success next to the best manual cell's.
"""

from __future__ import annotations

import math
import os
import shlex
import sys
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
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

TASKS = ("lift", "can", "square", "transport")  # record names (DESIGN.md); robosuite's via canonical_task
LAYERS = ("early", "mid", "late", "encoder")  # d2ppo.model.policy.DISPERSIVE_LAYERS
STATE_KEYS = ("robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos", "object")  # proprio + object pose
PROPRIO_KEYS = STATE_KEYS[:3]
# The fields that identify a cell: a record with the same values replaces the old one.
RECORD_KEY = ("task", "obs", "lambda", "layer", "variant", "tau", "seed", "steps", "max_demos")


class AblationError(ValueError):
    """Bad input, found before anything runs; the message is one line naming the option and the problem."""


@dataclass
class AblationConfig:
    """The grid, the sweep, the automatic choice and where everything goes. ``python -m d2ppo.ablation --help``
    is generated from these fields."""

    tasks: tuple[str, ...] = field(default=("can", "square"), metadata={"help": "tasks: lift | can | square | transport"})
    lambdas: tuple[float, ...] = field(default=(0.0, 0.5), metadata={"help": "dispersive weights λ of the grid"})
    layers: tuple[str, ...] = field(default=("early", "mid", "late"), metadata={"help": "regularised layers of the grid"})
    seeds: tuple[int, ...] = field(default=(0, 1, 2), metadata={"help": "training seeds of every cell"})
    steps: int = field(default=5000, metadata={"help": "gradient steps per cell"})
    episodes: int = field(default=50, metadata={"help": "evaluation episodes per cell"})
    sweep_tasks: tuple[str, ...] = field(default=("square",), metadata={"help": "tasks of the λ sweep"})
    sweep_lambdas: tuple[float, ...] = field(default=(0.1, 0.3, 0.5, 0.7, 0.9), metadata={"help": "λ of the sweep"})
    sweep_layer: str = field(default="best", metadata={
        "help": "layer of the λ sweep: early | mid | late | best (highest mean success over λ > 0 in the grid) | "
                "auto (the --auto choice) | none (no sweep)"})
    obs: str = field(default="state", metadata={"help": "state (proprio + object pose) | pixels (--cameras + proprio)"})
    cameras: tuple[str, ...] = field(default=("agentview", "robot0_eye_in_hand"), metadata={"help": "cameras (--obs pixels)"})
    image_size: int = field(default=96, metadata={"help": "camera image size of the data, pixels (--obs pixels)"})
    variant: str = field(default="infonce_l2", metadata={"help": "dispersive loss variant"})
    tau: float = field(default=0.5, metadata={"help": "dispersive temperature τ"})
    max_demos: int | None = field(default=None, metadata={"help": "train on the first N training demos only"})
    batch_size: int = field(default=64, metadata={"help": "pre-training batch size"})
    mlp_dims: tuple[int, ...] = field(default=(768, 768, 768), metadata={"help": "denoiser widths [early, mid, late]"})
    eval_seed: int = field(default=1000, metadata={"help": "seed of the evaluation episodes (d2ppo.evaluate --seed)"})
    data_dir: str = field(default="data", metadata={"help": "folder of <task>_lowdim.hdf5 / <task>_img.hdf5"})
    runs_dir: str = field(default="runs/ablation", metadata={"help": "run folders, one per trained policy"})
    out: str = field(default="docs/results/ablation.json", metadata={"help": "results file (plot: same name .png)"})
    workers: int = field(default=1, metadata={"help": "evaluation processes per cell (1 when --jobs > 1)"})
    jobs: int = field(default=1, metadata={"help": "cells trained and evaluated at once (processes)"})
    threads: int = field(default=1, metadata={"help": "torch threads per training / evaluation process"})
    plot_only: bool = field(default=False, metadata={"help": "only (re)draw the plot from --out"})
    dry_run: bool = field(default=False, metadata={"help": "print the cells that would run, and exit"})
    auto: bool = field(default=False, metadata={"help": "automatic layer/λ choice for --tasks (instead of the grid)"})
    probe_steps: int = field(default=1000, metadata={"help": "gradient steps of each --auto probe"})
    probe_lambdas: tuple[float, ...] = field(default=(0.1, 0.5, 0.9), metadata={"help": "λ > 0 probed per layer"})
    probe_seeds: tuple[int, ...] = field(default=(0,), metadata={"help": "seeds of the probes (scores averaged)"})
    probe_windows: int = field(default=1024, metadata={"help": "held-out windows scored per probe"})

    @property
    def plot_path(self) -> Path:
        return Path(self.out).with_suffix(".png")

    @property
    def auto_path(self) -> Path:
        out = Path(self.out)
        return out.with_name(out.stem + "_auto.json")

    def data_path(self, task: str) -> Path:
        return Path(self.data_dir) / f"{task}_{'lowdim' if self.obs == 'state' else 'img'}.hdf5"

    def group(self, task: str) -> Path:
        """Run folder of a task's cells at this budget: <runs-dir>/<task>_<obs>_s<steps>[_<cameras>_<size>px][_d<max
        demos>][_<variant>][_tau<τ>]."""
        name = f"{task}_{self.obs}_s{self.steps}"
        if self.obs == "pixels":
            name += f"_{'+'.join(self.cameras)}_{self.image_size}px"
        if self.max_demos:
            name += f"_d{self.max_demos}"
        if self.variant != "infonce_l2":
            name += f"_{self.variant}"
        if self.tau != 0.5:
            name += f"_tau{self.tau:g}"
        return Path(self.runs_dir) / name


# ---------------------------------------------------------------------- cells
@dataclass(frozen=True)
class Cell:
    """One record of the results file: (task, λ, layer, seed) at the config's obs, variant, τ, steps, demos."""

    task: str
    lam: float
    layer: str
    seed: int


def run_dir(cfg: AblationConfig, cell: Cell, probe_steps: int | None = None) -> Path:
    """<group>/lam<λ>_<layer>_seed<s>, or <group>/probes_s<probe steps>/... for an --auto probe. λ = 0 trains no
    layer: one run per task and seed, whatever the layer."""
    name = f"lam0_seed{cell.seed}" if cell.lam == 0 else f"lam{cell.lam:g}_{cell.layer}_seed{cell.seed}"
    base = cfg.group(cell.task)
    return base / f"probes_s{probe_steps}" / name if probe_steps else base / name


def _record_of(cfg: AblationConfig, cell: Cell, done: dict, run: Path) -> dict:
    return {
        "task": cell.task, "obs": cfg.obs, "lambda": float(cell.lam), "layer": cell.layer, "variant": cfg.variant,
        "seed": cell.seed, "steps": cfg.steps, "success_rate": done["success_rate"], "successes": done["successes"],
        "episodes": done["episodes"],
        # beyond the contract's fields: what else identifies the cell, and where it came from
        "tau": cfg.tau, "max_demos": cfg.max_demos, "run": relative(run), "eval_seed": done["eval_seed"],
        "eval_workers": done["eval_workers"], "ci95": done["ci95"], "train_time_s": done.get("train_time_s"),
        "eval_time_s": done.get("eval_time_s"),
    }


def _key(cfg: AblationConfig, cell: Cell) -> tuple:
    probe = {"task": cell.task, "obs": cfg.obs, "lambda": float(cell.lam), "layer": cell.layer, "variant": cfg.variant,
             "tau": cfg.tau, "seed": cell.seed, "steps": cfg.steps, "max_demos": cfg.max_demos}
    return record_key(probe, RECORD_KEY)


def eval_workers(cfg: AblationConfig) -> int:
    """Evaluation processes per cell (d2ppo.evaluate's episode seeds depend on it): 1 when cells run at once."""
    return min(cfg.workers if cfg.jobs == 1 else 1, cfg.episodes)


def _has_evaluation(cfg: AblationConfig, done: dict | None) -> bool:
    """A record / cell.json holds this config's evaluation: same episodes, evaluation seed and worker count."""
    return bool(done) and (done.get("episodes"), done.get("eval_seed"), done.get("eval_workers")) == (
        cfg.episodes, cfg.eval_seed, eval_workers(cfg))


def pretrain_argv(data: str | Path, out: str | Path, obs: str, steps: int, seed: int, lam: float, layer: str,
                  cameras: tuple[str, ...] = (), variant: str = "infonce_l2", tau: float = 0.5,
                  max_demos: int | None = None, batch_size: int = 64, mlp_dims: tuple[int, ...] = (768, 768, 768),
                  threads: int = 1, image_size: int = 96) -> list[str]:
    """The ``d2ppo.train`` command line of one pre-training run (also its provenance in the package card).
    ``obs``: ``state`` = proprio + object pose, no cameras (scripts/finetune_lift_lowdim.sh); ``pixels`` = cameras
    + proprio."""
    obs_args = ["--cameras", "none", "--lowdim-keys", *STATE_KEYS] if obs == "state" else [
        "--cameras", *cameras, "--lowdim-keys", *PROPRIO_KEYS, "--image-size", str(image_size)]
    argv = ["--data", str(data), "--out", str(out), *obs_args, "--steps", str(steps), "--seed", str(seed),
            "--threads", str(threads), "--batch-size", str(batch_size), "--mlp-dims", *map(str, mlp_dims),
            "--dispersive-weight", f"{lam:g}", "--dispersive-layer", layer if lam > 0 else "early",
            "--dispersive-variant", variant, "--dispersive-tau", f"{tau:g}"]
    if max_demos:
        argv += ["--max-demos", str(max_demos)]
    return argv


def pretrain(argv: list[str]) -> Path:
    """Run ``d2ppo.train`` with ``argv`` unless its package exists (an interrupted run resumes from its
    checkpoint); returns the package folder."""
    from d2ppo.train import build_parser, config_from_args, train

    args = build_parser().parse_args(argv)
    policy = Path(args.out) / "policy"
    if not (policy / "policy.json").is_file():
        train(config_from_args(args), resume=True, command="python -m d2ppo.train " + shlex.join(argv))
    return policy


def train_argv(cfg: AblationConfig, cell: Cell, out: Path, steps: int) -> list[str]:
    return pretrain_argv(cfg.data_path(cell.task), out, cfg.obs, steps, cell.seed, cell.lam, cell.layer, cfg.cameras,
                         cfg.variant, cfg.tau, cfg.max_demos, cfg.batch_size, cfg.mlp_dims, cfg.threads, cfg.image_size)


def run_job(job: dict) -> dict:
    """Train one run (unless its policy exists) and, with ``episodes`` > 0, evaluate it (unless its cell.json has
    that evaluation). Returns the content of cell.json (or {} for a probe). A worker-process entry point."""
    import json

    from d2ppo.results import atomic_write_json as write

    run = Path(job["run"])
    os.environ["OMP_NUM_THREADS"] = str(job["threads"])  # d2ppo.evaluate's in-process thread count
    policy = pretrain(job["train_argv"])
    if job["episodes"] <= 0:
        return {}
    marker = run / "cell.json"
    done = json.loads(marker.read_text()) if marker.is_file() else None
    if done and (done.get("episodes"), done.get("eval_seed"), done.get("eval_workers")) == (
            job["episodes"], job["eval_seed"], job["workers"]):
        return done
    from d2ppo.evaluate import evaluate_policy
    from d2ppo.package import load_policy

    res = evaluate_policy(policy, job["episodes"], seed=job["eval_seed"], workers=job["workers"], progress=False)
    # Where d2ppo.evaluate puts it: d2ppo.rl.finetune reuses it for a package fine-tuned from this cell.
    write(policy / "eval" / "eval.json", res)
    card = load_policy(policy).card
    done = {"success_rate": res["success_rate"], "successes": res["successes"], "episodes": res["episodes"],
            "ci95": res["ci95"], "eval_seed": job["eval_seed"], "eval_workers": res["workers"],
            "mean_steps": res["mean_steps"], "eval_time_s": res["wall_s"],
            "train_time_s": card.get("training", {}).get("time_s"), "policy": str(policy)}
    write(marker, done)
    return done


def _jobs(cfg: AblationConfig, cells: list[Cell], records: list[dict]) -> list[tuple[Path, list[Cell]]]:
    """Cells still to run, grouped by run folder (λ = 0 cells of several layers share one run)."""
    have = {record_key(r, RECORD_KEY): r for r in records}
    todo: dict[Path, list[Cell]] = {}
    for cell in unique(cells):
        r = have.get(_key(cfg, cell))
        if _has_evaluation(cfg, r):
            continue
        todo.setdefault(run_dir(cfg, cell), []).append(cell)
    return list(todo.items())


def _describe(cells: list[Cell]) -> str:
    c = cells[0]
    lam = "λ=0" if c.lam == 0 else f"λ={c.lam:g} {c.layer}"
    layers = f" (recorded for {', '.join(x.layer for x in cells)})" if c.lam == 0 else ""
    return f"{c.task} {lam} seed {c.seed}{layers}"


def run_cells(cfg: AblationConfig, cells: list[Cell], records: list[dict], phase: str) -> list[dict]:
    """Run the cells that have no record yet; the results file is rewritten after each run. Returns the records."""
    jobs = _jobs(cfg, cells, records)
    skipped = len(unique(cells)) - sum(len(c) for _, c in jobs)
    if skipped:
        print(f"[ablation] {phase}: {skipped} cell(s) already in {cfg.out}, skipped", flush=True)
    if not jobs:
        return records
    clock = CellClock(len(jobs), cfg.jobs, prefix=f"[ablation] {phase}:")
    specs = []
    for run, group in jobs:
        specs.append(({"run": str(run), "train_argv": train_argv(cfg, group[0], run, cfg.steps), "episodes": cfg.episodes,
                       "eval_seed": cfg.eval_seed, "workers": eval_workers(cfg),
                       "threads": cfg.threads}, run, group))

    def finished(done: dict, run: Path, group: list[Cell]) -> None:
        nonlocal records
        for cell in group:
            records = upsert(records, _record_of(cfg, cell, done, run), RECORD_KEY)
        atomic_write_json(cfg.out, records)
        clock.finish(_describe(group), f"success {done['success_rate']:.2f} ({done['successes']}/{done['episodes']})")

    if cfg.jobs == 1:
        for spec, run, group in specs:
            clock.start(_describe(group))
            finished(run_job(spec), run, group)
    else:
        import multiprocessing as mp

        pending, running = list(specs), {}
        with ProcessPoolExecutor(cfg.jobs, mp_context=mp.get_context("spawn")) as pool:
            while pending or running:
                while pending and len(running) < cfg.jobs:  # submit only what starts now: true start lines
                    spec, run, group = pending.pop(0)
                    clock.start(_describe(group))
                    running[pool.submit(run_job, spec)] = (run, group)
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for fut in done:
                    finished(fut.result(), *running.pop(fut))
    return records


# ---------------------------------------------------------------------- grid, sweep, summaries
def grid_cells(cfg: AblationConfig) -> list[Cell]:
    return [Cell(t, lam, layer, s) for t in cfg.tasks for lam in cfg.lambdas for layer in cfg.layers for s in cfg.seeds]


def _matching(cfg: AblationConfig, records: list[dict], task: str) -> list[dict]:
    return [r for r in records if r["task"] == task and r["obs"] == cfg.obs and r["steps"] == cfg.steps
            and r["variant"] == cfg.variant and r.get("tau", 0.5) == cfg.tau and r.get("max_demos") == cfg.max_demos]


def cell_means(records: list[dict], merge_lambda_zero: bool = False) -> dict[tuple[float, str | None], dict]:
    """(λ, layer) -> {mean, lo, hi, seeds, rates} over the records' seeds (t-interval). ``merge_lambda_zero``: the
    λ = 0 records of all layers (the same policies) count as one cell, (0, None)."""
    by: dict[tuple[float, str | None], dict[int, dict]] = {}
    for r in records:
        lam = float(r["lambda"])
        key = (lam, None) if merge_lambda_zero and lam == 0 else (lam, r["layer"])
        by.setdefault(key, {})[r["seed"]] = r
    by = {k: list(v.values()) for k, v in by.items()}
    out = {}
    for k, rs in by.items():
        rates = [r["success_rate"] for r in sorted(rs, key=lambda r: r["seed"])]
        m, lo, hi = t_interval(rates)
        out[k] = {"mean": m, "lo": lo, "hi": hi, "seeds": sorted(r["seed"] for r in rs), "rates": rates}
    return out


def best_layer(cfg: AblationConfig, records: list[dict], task: str) -> str:
    """The grid layer with the highest mean success over its λ > 0 cells (ties: the earlier layer)."""
    means = cell_means(_matching(cfg, records, task))
    scores = {layer: np.mean([v["mean"] for (lam, lay), v in means.items() if lay == layer and lam > 0 and lam in cfg.lambdas])
              for layer in cfg.layers if any(lay == layer and lam > 0 for lam, lay in means)}
    if not scores:
        raise AblationError(f"--sweep-layer best: no grid results with λ > 0 for {task} in {cfg.out}; run the grid "
                            f"for {task} first or name the layer (--sweep-layer late)")
    return max(scores, key=lambda layer: (scores[layer], -cfg.layers.index(layer)))


def sweep_cells(cfg: AblationConfig, records: list[dict]) -> list[Cell]:
    if cfg.sweep_layer == "none":
        return []
    cells = []
    for task in cfg.sweep_tasks:
        if cfg.sweep_layer == "best":
            layer = best_layer(cfg, records, task)
            print(f"[ablation] sweep: best layer for {task} in the grid: {layer}", flush=True)
        elif cfg.sweep_layer == "auto":
            layer = _auto_choice(cfg, task)["best_regularised"]["layer"]
            print(f"[ablation] sweep: automatically chosen layer for {task}: {layer}", flush=True)
        else:
            layer = cfg.sweep_layer
        cells += [Cell(task, lam, layer, s) for lam in cfg.sweep_lambdas for s in cfg.seeds]
    return cells


# ---------------------------------------------------------------------- automatic choice
VAL_T_STEPS = 8  # diffusion steps t at which the validation loss is averaged (evenly spread over [0, T-1])


def probe_scores(policy: str | Path, data: str | Path, layers: tuple[str, ...], windows: int, seed: int = 0) -> dict:
    """Held-out scores of a pre-trained package: ``val_loss`` (mean ε-MSE over ``windows`` windows of the file's
    mask/valid demos and VAL_T_STEPS diffusion steps, fixed noise), its standard error over windows, and per layer
    the effective rank and mean pairwise distance of the features (t = 50)."""
    import h5py
    import torch

    from d2ppo.data.dataset import SequenceDataset
    from d2ppo.features import layer_features
    from d2ppo.losses import dispersion_metrics
    from d2ppo.package import load_policy

    pkg = load_policy(policy)
    with h5py.File(data, "r") as f:
        split = "valid" if "mask/valid" in f else None
    ds = SequenceDataset(str(data), pkg.spec, horizon=pkg.horizon, filter_key=split, normalizers=pkg.normalizers)
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.permutation(len(ds))[:windows])
    batch = ds.get_batch(torch.from_numpy(idx))
    model = pkg.model.eval()
    g = torch.Generator().manual_seed(seed)
    T = model.cfg.denoising_steps
    with torch.no_grad():
        cond = model.encoder({k: batch[k] for k in ("rgb", "state") if k in batch})
        a0 = batch["actions"]
        per_window = torch.zeros(a0.shape[0])
        for t in torch.linspace(0, T - 1, VAL_T_STEPS).round().long():
            noise = torch.randn(a0.shape, generator=g)
            ab = model.alphas_cumprod[t]
            eps = model.denoiser(ab.sqrt() * a0 + (1 - ab).sqrt() * noise, t.expand(a0.shape[0]), cond)
            per_window += ((eps - noise) ** 2).mean(dim=(1, 2)) / VAL_T_STEPS
    feats = {layer: dispersion_metrics(torch.from_numpy(layer_features(pkg, batch, layer, 50, seed))) for layer in layers}
    return {"val_loss": float(per_window.mean()), "val_loss_se": float(per_window.std() / math.sqrt(len(per_window))),
            "windows": len(idx), "split": split or "all demos (the file has no mask/valid)",
            "features": {k: {"effective_rank": v["effective_rank"], "mean_pairwise_dist": v["mean_pairwise_dist"]}
                         for k, v in feats.items()}}


def run_auto(cfg: AblationConfig, records: list[dict]) -> list[dict]:
    """Probe, choose, then train and evaluate the chosen cell for every seed; writes ``<out>_auto.json``."""
    import json

    auto = _read_auto(cfg)
    for task in cfg.tasks:
        probes = [Cell(task, 0.0, "early", s) for s in cfg.probe_seeds]
        probes += [Cell(task, lam, layer, s) for layer in cfg.layers for lam in cfg.probe_lambdas for s in cfg.probe_seeds]
        todo = [c for c in probes if not (run_dir(cfg, c, cfg.probe_steps) / "policy" / "policy.json").is_file()]
        clock = CellClock(len(todo), 1, prefix="[ablation] auto:", unit="probe")
        for c in todo:
            run = run_dir(cfg, c, cfg.probe_steps)
            clock.start(_describe([c]))
            run_job({"run": str(run), "train_argv": train_argv(cfg, c, run, cfg.probe_steps), "episodes": 0,
                     "eval_seed": cfg.eval_seed, "workers": 1, "threads": cfg.threads})
            clock.finish(_describe([c]), "trained")
        rows = []
        for c in probes:
            run = run_dir(cfg, c, cfg.probe_steps)
            cache = run / "probe.json"
            score = json.loads(cache.read_text()) if cache.is_file() else None
            if not score or score.get("windows_asked") != cfg.probe_windows:
                score = probe_scores(run / "policy", cfg.data_path(task), cfg.layers, cfg.probe_windows, seed=0)
                score["windows_asked"] = cfg.probe_windows
                atomic_write_json(cache, score)
            rows.append({"lambda": c.lam, "layer": None if c.lam == 0 else c.layer, "seed": c.seed,
                         "val_loss": score["val_loss"], "val_loss_se": score["val_loss_se"],
                         "features": score["features"], "run": relative(run)})
        choice = choose(rows)
        entry = {"task": task, "obs": cfg.obs, "steps": cfg.steps, "probe_steps": cfg.probe_steps,
                 "probe_seeds": list(cfg.probe_seeds), "probe_windows": cfg.probe_windows,
                 "score": ("validation diffusion loss (ε-MSE of the EMA weights on held-out windows, 8 diffusion "
                           "steps, fixed noise), lower is better; lowest (layer, λ) wins"),
                 **choice, "probes": rows}
        auto = [a for a in auto if not (a["task"] == task and a["obs"] == cfg.obs and a["steps"] == cfg.steps)] + [entry]
        atomic_write_json(cfg.auto_path, auto)
        lam, layer = choice["choice"]["lambda"], choice["choice"]["layer"]
        print(f"[ablation] auto choice for {task}: λ={lam:g}" + (f" on {layer}" if layer else " (no regularisation)")
              + f" (validation loss {choice['choice']['val_loss']:.4f})", flush=True)
        layers = [layer] if layer else list(cfg.layers)
        records = run_cells(cfg, [Cell(task, lam, lay, s) for lay in layers for s in cfg.seeds], records, "auto cell")
    return records


def choose(rows: list[dict]) -> dict:
    """The (λ, layer) with the lowest validation loss averaged over probe seeds, and the best λ > 0 one."""
    by: dict[tuple[float, str | None], list[float]] = {}
    for r in rows:
        by.setdefault((r["lambda"], r["layer"]), []).append(r["val_loss"])
    means = {k: float(np.mean(v)) for k, v in by.items()}
    best = min(means, key=means.get)
    reg = min((k for k in means if k[0] > 0), key=means.get)
    return {"choice": {"lambda": best[0], "layer": best[1], "val_loss": means[best]},
            "best_regularised": {"lambda": reg[0], "layer": reg[1], "val_loss": means[reg]}}


def _read_auto(cfg: AblationConfig) -> list[dict]:
    import json

    try:
        auto = json.loads(cfg.auto_path.read_text()) if cfg.auto_path.is_file() else []
    except json.JSONDecodeError as e:
        raise AblationError(f"{cfg.auto_path}: not a JSON file ({e.msg})") from None
    return auto if isinstance(auto, list) else []


def _auto_choice(cfg: AblationConfig, task: str) -> dict:
    for a in _read_auto(cfg):
        if a["task"] == task and a["obs"] == cfg.obs and a["steps"] == cfg.steps:
            return a
    raise AblationError(f"--sweep-layer auto: no automatic choice for {task} ({cfg.obs}, {cfg.steps} steps) in "
                        f"{cfg.auto_path}; run python -m d2ppo.ablation --tasks {task} --auto first")


def refresh_auto_comparison(cfg: AblationConfig, records: list[dict]) -> None:
    """Write, next to each automatic choice, its cell's success and the best manual cell's (from the records)."""
    auto = _read_auto(cfg)
    if not auto:
        return
    for a in auto:
        sub = [r for r in records if r["task"] == a["task"] and r["obs"] == a["obs"] and r["steps"] == a["steps"]]
        means = cell_means(sub, merge_lambda_zero=True)
        lam, layer = a["choice"]["lambda"], a["choice"]["layer"]
        mine = means.get((lam, layer if lam > 0 else None))
        if not means:
            a["comparison"] = None
            continue
        best_key = max(means, key=lambda k: means[k]["mean"])
        ranked = sorted(means.values(), key=lambda v: -v["mean"])
        a["comparison"] = {
            "auto_cell": None if mine is None else {"lambda": lam, "layer": layer, **_summary(mine)},
            "best_manual_cell": {"lambda": best_key[0], "layer": best_key[1], **_summary(means[best_key])},
            "auto_is_best": None if mine is None else mine["mean"] >= means[best_key]["mean"],
            "auto_rank": None if mine is None else 1 + sum(v["mean"] > mine["mean"] for v in ranked),
            "cells": len(means),
            "note": "success = mean over seeds with a 95 % t-interval; cells = (λ, layer) pairs with records",
        }
    atomic_write_json(cfg.auto_path, auto)


def _summary(v: dict) -> dict:
    return {"success_mean": round(v["mean"], 4), "ci95": [round(v["lo"], 4), round(v["hi"], 4)], "seeds": v["seeds"]}


# ---------------------------------------------------------------------- plot
def plot(records: list[dict], path: str | Path, auto: list[dict] | None = None) -> Path:
    """Per (task, obs, steps): the layer x λ grid (left) and λ at each layer that has more than the grid's λ
    (right). Bars/points: mean success over seeds, whiskers: 95 % t-interval over seeds, dots: single seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = unique((r["task"], r["obs"], r["steps"]) for r in records)
    fig, axes = plt.subplots(len(groups), 2, figsize=(12, 3.8 * len(groups)), squeeze=False)
    for row, (task, obs, steps) in enumerate(groups):
        sub = [r for r in records if (r["task"], r["obs"], r["steps"]) == (task, obs, steps)]
        means = cell_means(sub)
        choice = next((a for a in auto or [] if (a["task"], a["obs"], a["steps"]) == (task, obs, steps)), None)
        chosen = (choice["choice"]["lambda"], choice["choice"]["layer"]) if choice else None
        layers = [lay for lay in LAYERS if any(k[1] == lay for k in means)]
        lams = sorted({k[0] for k in means})
        grid_lams = [lam for lam in lams if sum(k[0] == lam for k in means) >= len(layers)]  # λ at every layer
        ax = axes[row, 0]
        width = 0.8 / max(1, len(grid_lams))
        for j, lam in enumerate(grid_lams):
            for i, layer in enumerate(layers):
                v = means.get((lam, layer))
                if v is None:
                    continue
                x = i + (j - (len(grid_lams) - 1) / 2) * width
                label = ("λ=0 (no layer: the same policies at each layer)" if lam == 0 else f"λ={lam:g}") if i == 0 else None
                ax.bar(x, v["mean"], width * 0.9, color=f"C{j}", alpha=0.75, label=label)
                ax.errorbar(x, v["mean"], yerr=[[v["mean"] - v["lo"]], [v["hi"] - v["mean"]]], color="k", capsize=3)
                ax.scatter(np.full(len(v["rates"]), x), v["rates"], color="k", s=8, zorder=3)
                if chosen and chosen[0] == lam and (chosen[1] in (None, layer)):
                    ax.scatter([x], [min(1.04, v["hi"] + 0.04)], marker="*", s=140, color="gold", edgecolor="k", zorder=4)
        ax.set_xticks(range(len(layers)), layers)
        ax.set_ylim(0, 1.08)
        ax.set_ylabel("success rate")
        ax.set_title(f"{task} ({obs}, {steps} steps): layer × λ" + ("  ★ = auto choice" if chosen else ""), fontsize=10)
        ax.legend(fontsize=8, loc="upper left")
        ax.grid(axis="y", alpha=0.3)
        ax = axes[row, 1]
        for i, layer in enumerate(layers):
            pts = sorted((lam, v) for (lam, lay), v in means.items() if lay == layer)
            if len(pts) <= len(grid_lams):
                continue
            x = [p[0] for p in pts]
            y = np.array([p[1]["mean"] for p in pts])
            err = [y - np.array([p[1]["lo"] for p in pts]), np.array([p[1]["hi"] for p in pts]) - y]
            ax.errorbar(x, y, yerr=err, marker="o", capsize=3, color=f"C{i + 3}", label=f"{layer} (λ=0: no layer)")
            for lam, v in pts:
                ax.scatter(np.full(len(v["rates"]), lam), v["rates"], color="k", s=8, zorder=3)
                if chosen and chosen[0] == lam and chosen[1] in (None, layer):
                    ax.scatter([lam], [min(1.04, v["hi"] + 0.04)], marker="*", s=140, color="gold", edgecolor="k", zorder=4)
        ax.set_xlabel("dispersive weight λ")
        ax.set_ylim(0, 1.08)
        ax.set_title(f"{task}: λ sweep", fontsize=10)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "no sweep yet", ha="center", va="center", transform=ax.transAxes, color="0.5")
        ax.grid(alpha=0.3)
    n_ep = sorted({r["episodes"] for r in records})
    fig.suptitle(f"Pre-training ablation: success over {'/'.join(map(str, n_ep))} episodes per policy; mean over "
                 "seeds with 95 % t-interval over seeds (dots: seeds)", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------- input checks
def check(cfg: AblationConfig) -> None:
    """Every input problem as one AblationError line, before anything is trained."""
    from d2ppo.envs.robosuite_env import canonical_task
    from d2ppo.losses import VARIANTS

    for opt, names in (("--tasks", cfg.tasks), ("--sweep-tasks", cfg.sweep_tasks)):
        bad = [t for t in names if t not in TASKS]
        if bad:
            raise AblationError(f"{opt}: unknown task(s) {bad}; choose from {list(TASKS)}")
    if not cfg.tasks and not cfg.plot_only:
        raise AblationError("--tasks: no task given")
    for opt, names in (("--layers", cfg.layers),):
        bad = [x for x in names if x not in LAYERS]
        if bad:
            raise AblationError(f"{opt}: unknown layer(s) {bad}; choose from {list(LAYERS)}")
    if cfg.sweep_layer not in (*LAYERS, "best", "auto", "none"):
        raise AblationError(f"--sweep-layer: unknown layer {cfg.sweep_layer!r}; choose from {list(LAYERS)}, best, auto "
                            "or none")
    if cfg.obs not in ("state", "pixels"):
        raise AblationError(f"--obs: {cfg.obs!r} is not state or pixels")
    if cfg.obs == "state" and "encoder" in (*cfg.layers, cfg.sweep_layer):
        raise AblationError("--layers encoder: with --obs state the encoder is the identity (no weights to regularise)")
    for opt, lams in (("--lambdas", cfg.lambdas), ("--sweep-lambdas", cfg.sweep_lambdas), ("--probe-lambdas", cfg.probe_lambdas)):
        bad = [x for x in lams if not (math.isfinite(x) and x >= 0)]
        if bad:
            raise AblationError(f"{opt}: λ must be finite and >= 0, got {bad}")
    if any(x == 0 for x in cfg.probe_lambdas):
        raise AblationError("--probe-lambdas: λ = 0 is always probed; give the λ > 0 to compare with it")
    if cfg.variant not in VARIANTS:
        raise AblationError(f"--variant: unknown {cfg.variant!r}; choose from {list(VARIANTS)}")
    if not (math.isfinite(cfg.tau) and cfg.tau > 0):
        raise AblationError(f"--tau: must be > 0, got {cfg.tau}")
    for opt, v in (("--steps", cfg.steps), ("--episodes", cfg.episodes), ("--workers", cfg.workers), ("--jobs", cfg.jobs),
                   ("--threads", cfg.threads), ("--probe-steps", cfg.probe_steps), ("--probe-windows", cfg.probe_windows),
                   ("--batch-size", cfg.batch_size)):
        if v < 1:
            raise AblationError(f"{opt}: must be >= 1, got {v}")
    if cfg.max_demos is not None and cfg.max_demos < 1:
        raise AblationError(f"--max-demos: must be >= 1, got {cfg.max_demos}")
    if any(s < 0 for s in (*cfg.seeds, *cfg.probe_seeds)) or not cfg.seeds:
        raise AblationError(f"--seeds: need one or more seeds >= 0, got {list(cfg.seeds)}")
    try:
        records = read_records(cfg.out)
    except ValueError as e:
        raise AblationError(f"--out: {e}") from None
    if cfg.plot_only:
        if not records:
            raise AblationError(f"--plot-only: no records in {cfg.out}")
        return
    tasks = unique([*cfg.tasks, *([] if cfg.auto or cfg.sweep_layer == "none" else cfg.sweep_tasks)])
    keys = STATE_KEYS if cfg.obs == "state" else [*PROPRIO_KEYS, *(f"{c}_image" for c in cfg.cameras)]
    from d2ppo.data.robomimic_hdf5 import DatasetFormatError, read_env_args, validate_file

    for task in tasks:
        path = cfg.data_path(task)
        if not path.is_file():
            gen = (f"python -m d2ppo.experts.generate --task {task} --episodes 200 "
                   + ("--cameras none" if cfg.obs == "state" else "--cameras " + " ".join(cfg.cameras)) + f" --out {path}")
            raise AblationError(f"--data-dir {cfg.data_dir}: no {path} for task {task} (make it with: {gen})")
        try:
            validate_file(path, obs_keys=keys, action_dim=7)
            env_name = read_env_args(path).get("env_name")
        except DatasetFormatError as e:
            raise AblationError(f"--data-dir: {e}") from None
        if env_name != canonical_task(task):
            raise AblationError(f"--data-dir: {path} holds {env_name} demos, not {canonical_task(task)} ({task})")
    if cfg.sweep_layer == "auto" and not cfg.auto:
        for task in cfg.sweep_tasks:
            _auto_choice(cfg, task)
    if cfg.sweep_layer == "best" and not cfg.auto:
        for task in cfg.sweep_tasks:
            if task not in cfg.tasks:
                best_layer(cfg, records, task)


# ---------------------------------------------------------------------- main
def build_parser():
    return parser_from_dataclass(AblationConfig, "d2ppo ablation", __doc__)


def main(argv: list[str] | None = None) -> None:
    cfg = config_from_namespace(AblationConfig, build_parser().parse_args(argv))
    try:
        check(cfg)
        records = read_records(cfg.out)
        if cfg.plot_only:
            refresh_auto_comparison(cfg, records)
            print(f"[ablation] plot -> {plot(records, cfg.plot_path, _read_auto(cfg))}", flush=True)
            return
        if cfg.dry_run:
            cells = grid_cells(cfg) if not cfg.auto else []
            for run, group in _jobs(cfg, cells, records):
                print(f"{_describe(group)} -> {run}")
            if not cfg.auto and cfg.sweep_layer != "none":
                print(f"+ λ sweep {list(cfg.sweep_lambdas)} on {list(cfg.sweep_tasks)} at layer {cfg.sweep_layer} "
                      f"x seeds {list(cfg.seeds)} (cells already in the grid are not run twice)")
            return
        if cfg.auto:
            records = run_auto(cfg, records)
        else:
            records = run_cells(cfg, grid_cells(cfg), records, "grid")
            records = run_cells(cfg, sweep_cells(cfg, records), records, "sweep")
        refresh_auto_comparison(cfg, records)
        if records:
            print(f"[ablation] {len(records)} records in {cfg.out}; plot -> {plot(records, cfg.plot_path, _read_auto(cfg))}",
                  flush=True)
    except AblationError as e:
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main(sys.argv[1:])
