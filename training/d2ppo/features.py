"""The collapse figure: 2-D PCA / t-SNE of one layer's features for two policies, side by side.

    python -m d2ppo.features --policies runs/l0/policy runs/l05/policy --data data/lift_lowdim.hdf5 \\
        --layer early --method pca --out features.png

Both policies see the same observation windows, the same diffusion step t and the same noisy actions x_t, so
the panels differ only by the weights. Points are coloured by progress through their demo; each panel's title
reports the mean pairwise distance and effective rank of the features (higher = more dispersed).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch


@torch.no_grad()
def layer_features(package, batch: dict[str, torch.Tensor], layer: str, t: int, seed: int = 0) -> np.ndarray:
    """Features [N, D] of ``layer`` (early | mid | late | encoder) for a batch of observation windows."""
    model = package.model.eval()
    cond = model.encoder({k: batch[k] for k in ("rgb", "state") if k in batch})
    if layer == "encoder":
        return cond.numpy()
    g = torch.Generator().manual_seed(seed)
    a0 = batch["actions"]
    noise = torch.randn(a0.shape, generator=g)
    ab = model.alphas_cumprod[t]
    x_t = ab.sqrt() * a0 + (1 - ab).sqrt() * noise
    _, hidden = model.denoiser(x_t, torch.full((a0.shape[0],), t), cond, return_hidden=True)
    return hidden[layer].numpy()


def embed_2d(x: np.ndarray, method: str, seed: int = 0) -> np.ndarray:
    x = x - x.mean(axis=0)
    if method == "pca":
        _, _, vt = np.linalg.svd(x, full_matrices=False)
        return x @ vt[:2].T
    from sklearn.manifold import TSNE

    return TSNE(n_components=2, init="pca", random_state=seed, perplexity=min(30, len(x) - 1)).fit_transform(x)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="d2ppo features", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--policies", nargs=2, required=True, metavar=("A", "B"))
    p.add_argument("--labels", nargs=2, default=None)
    p.add_argument("--data", required=True)
    p.add_argument("--layer", default=None, help="early | mid | late | encoder (default: the layer policy B was regularised on)")
    p.add_argument("--method", default="pca", choices=["pca", "tsne"])
    p.add_argument("--samples", type=int, default=512)
    p.add_argument("--t", type=int, default=50, help="diffusion step at which hidden layers are read")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="features.png")
    a = p.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from d2ppo.data.dataset import SequenceDataset
    from d2ppo.losses import dispersion_metrics
    from d2ppo.package import load_policy

    pkgs = [load_policy(x) for x in a.policies]
    layer = a.layer or pkgs[1].card.get("training", {}).get("dispersive", {}).get("layer", "early")
    labels = a.labels or [Path(x).name if Path(x).name != "policy" else Path(x).parent.name for x in a.policies]
    rng = np.random.default_rng(a.seed)
    idx = None
    fig, axes = plt.subplots(1, 2, figsize=(11, 5))
    summary = {}
    for ax, pkg, label in zip(axes, pkgs, labels):
        # Each policy normalises with its own statistics; the windows (and their order) are the same.
        ds = SequenceDataset(a.data, pkg.spec, horizon=pkg.horizon, normalizers=pkg.normalizers)
        if idx is None:
            idx = np.sort(rng.permutation(len(ds))[: a.samples])
        batch = ds.get_batch(torch.from_numpy(idx))
        feats = layer_features(pkg, batch, layer, a.t, a.seed)
        m = dispersion_metrics(torch.from_numpy(feats))
        summary[label] = m
        xy = embed_2d(feats, a.method, a.seed)
        obs_idx, _ = ds.window_indices(torch.from_numpy(idx))
        t, first, last = obs_idx[:, -1], ds._first[idx], ds._last[idx]
        progress = ((t - first) / (last - first).clamp_min(1)).numpy()
        sc = ax.scatter(xy[:, 0], xy[:, 1], c=progress, cmap="viridis", s=8)
        ax.set_title(f"{label}\nmean pairwise dist {m['mean_pairwise_dist']:.3f}, eff. rank {m['effective_rank']:.1f}", fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(sc, ax=axes, label="progress through demo")
    fig.suptitle(f"{a.method.upper()} of '{layer}' features (t={a.t}, {len(idx)} observation windows)")
    fig.savefig(a.out, dpi=120, bbox_inches="tight")
    print(json.dumps({"layer": layer, "method": a.method, "metrics": summary, "figure": a.out}))


if __name__ == "__main__":
    main()
