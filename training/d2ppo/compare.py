"""λ = 0 (plain diffusion policy, the DPPO baseline) vs λ = 0.5 (D²PPO) on the same data, seeds and budget.

    python -m d2ppo.compare --data data/lift_lowdim.hdf5 --cameras none --steps 3000 --seeds 0 1 --episodes 50

Trains one policy per (λ, seed) with identical configs apart from λ, evaluates each on the same seeded
episodes, prints both success rates (mean over seeds, with the pooled 95 % interval) and writes
``<out>/compare.json`` and ``<out>/compare.png``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="d2ppo compare", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--out", default="runs/compare")
    p.add_argument("--cameras", nargs="*", default=["none"])
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--max-demos", type=int)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--lambdas", type=float, nargs="+", default=[0.0, 0.5])
    p.add_argument("--layer", default="early")
    p.add_argument("--variant", default="infonce_l2")
    p.add_argument("--episodes", type=int, default=50)
    p.add_argument("--eval-seed", type=int, default=1000)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)

    from d2ppo.evaluate import evaluate_and_record
    from d2ppo.package import wilson_interval
    from d2ppo.train import build_parser, config_from_args, train

    out = Path(a.out)
    results: dict[str, dict] = {}
    for lam in a.lambdas:
        runs = []
        for seed in a.seeds:
            run = out / f"lambda{lam:g}_seed{seed}"
            args = ["--data", a.data, "--out", str(run), "--cameras", *a.cameras, "--steps", str(a.steps), "--seed", str(seed),
                    "--threads", str(a.threads), "--dispersive-weight", str(lam), "--dispersive-layer", a.layer,
                    "--dispersive-variant", a.variant]
            if a.max_demos:
                args += ["--max-demos", str(a.max_demos)]
            cfg = config_from_args(build_parser().parse_args(args))
            pkg = train(cfg, command="python -m d2ppo.train " + " ".join(args))
            res = evaluate_and_record(pkg, a.episodes, seed=a.eval_seed, workers=a.workers)
            runs.append({"seed": seed, "package": str(pkg), "success_rate": res["success_rate"], "successes": res["successes"],
                         "episodes": res["episodes"]})
            print(f"[compare] λ={lam:g} seed={seed}: success {res['success_rate']:.3f} ({res['successes']}/{res['episodes']})", flush=True)
        k = sum(r["successes"] for r in runs)
        n = sum(r["episodes"] for r in runs)
        results[f"{lam:g}"] = {"lambda": lam, "runs": runs, "success_rate": k / n, "successes": k, "episodes": n,
                               "ci95": list(wilson_interval(k, n))}
    out.mkdir(parents=True, exist_ok=True)
    summary = {"data": a.data, "steps": a.steps, "seeds": a.seeds, "layer": a.layer, "variant": a.variant,
               "eval_seed": a.eval_seed, "results": results}
    (out / "compare.json").write_text(json.dumps(summary, indent=2))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    names = [f"λ={k}" + (" (DPPO)" if float(k) == 0 else " (D²PPO)") for k in results]
    rates = [r["success_rate"] for r in results.values()]
    errs = [[r["success_rate"] - r["ci95"][0] for r in results.values()], [r["ci95"][1] - r["success_rate"] for r in results.values()]]
    ax.bar(names, rates, yerr=errs, capsize=6, color=["#999999", "#2a7ab9"][: len(names)] + ["#2a7ab9"] * (len(names) - 2))
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(f"success rate ({a.episodes} episodes × {len(a.seeds)} seeds)")
    ax.set_title(f"pre-training only, {a.steps} steps, same data and seeds")
    fig.savefig(out / "compare.png", dpi=120, bbox_inches="tight")
    print("\n  λ      success   95% CI          episodes")
    for key, r in results.items():
        print(f"  {key:6s} {r['success_rate']:.3f}     [{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}]  {r['episodes']}")
    print(f"-> {out / 'compare.json'}, {out / 'compare.png'}")


if __name__ == "__main__":
    main()
