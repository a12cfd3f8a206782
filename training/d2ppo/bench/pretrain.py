"""Pre-training throughput of the paper's image model at batch 64, with and without the dispersive term.

    python -m d2ppo.bench.pretrain [--batch 64] [--iters 20] [--threads N]

Both arms run the same model, data and optimiser in the same process, interleaved in rounds so that
machine load affects them alike; prints samples/s per arm, the dispersive overhead in %, and a final JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch

from d2ppo.model import DiffusionPolicy, PolicyConfig
from d2ppo.model.policy import DispersiveConfig
from d2ppo.obs import ObsSpec


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--iters", type=int, default=20, help="timed steps per arm per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--layer", default="early")
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "0")) or torch.get_num_threads())
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    spec = ObsSpec(camera_names=("robot0_eye_in_hand",), image_size=96)
    model = DiffusionPolicy(spec, PolicyConfig()).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    b = a.batch
    obs = {"rgb": torch.randint(0, 256, (b, 1, 1, 3, 96, 96), dtype=torch.uint8), "state": torch.rand(b, 1, 9) * 2 - 1}
    actions = torch.rand(b, 4, 7) * 2 - 1
    arms = {"diffusion only (λ=0)": None, f"+ dispersive (λ=0.5, {a.layer})": DispersiveConfig(weight=0.5, layer=a.layer)}

    def step(disp):
        loss, _ = model.diffusion_loss(obs, actions, disp, metrics=False)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for disp in arms.values():  # warm-up
        for _ in range(3):
            step(disp)
    times: dict[str, list[float]] = {k: [] for k in arms}
    for _ in range(a.rounds):
        for name, disp in arms.items():
            for _ in range(a.iters):
                t0 = time.perf_counter()
                step(disp)
                times[name].append(time.perf_counter() - t0)
    rows = {}
    for name, ts in times.items():
        med = float(np.median(ts))
        rows[name] = {"samples_per_s": b / med, "step_ms_median": med * 1e3}
    base, disp_name = list(rows)
    overhead = rows[disp_name]["step_ms_median"] / rows[base]["step_ms_median"] - 1
    print(f"paper image model (ViT patch 8 depth 1, MLP [768,768,768]), batch {b}, {a.threads} threads, "
          f"{a.rounds}x{a.iters} steps per arm")
    for name, r in rows.items():
        print(f"  {name:34s} {r['samples_per_s']:8.1f} samples/s   {r['step_ms_median']:7.1f} ms/step")
    print(f"  dispersive overhead: {overhead * 100:+.1f} %  (goal < 10 %)")
    print(json.dumps({"batch": b, "threads": a.threads, "arms": rows, "dispersive_overhead_pct": round(overhead * 100, 2)}))


if __name__ == "__main__":
    main()
