"""Inpainting seam: a new chunk whose first actions are conditioned to equal the actions already committed.

A pipelined chunk is computed while the previous one still runs (``PolicyRunner`` with ``lead`` > 0), so its
first ``m`` slots overlap actions of the previous chunk that will execute (or have executed) anyway. Left
alone the two chunks need not agree there, and the arm sees a jump at the seam. In the spirit of real-time
chunking for flow policies (and of RePaint for diffusion models), the DDIM chain is run with those ``m``
slots *replaced* at every step by the committed actions, noised to that step's level:

    x_{k-1}[:m] = sqrt(ab_prev_k) * a_known + sqrt(1 - ab_prev_k) * z,   z ~ N(0, I)

so the free slots are denoised in the context of the known ones, and the last step (ab_prev = 1) returns the
committed actions exactly. Only the torch backend exposes the chain step by step; the ONNX graph runs it
whole, so an inpainting runner samples with torch.
"""

from __future__ import annotations

import numpy as np
import torch


class InpaintingSampler:
    """``sampler(obs, noise=None, known=None)``: like the package's torch sampler; ``known`` is an env-unit
    ``[m, Da]`` array (m <= horizon) the first m actions are conditioned on (None: plain sampling)."""

    def __init__(self, package):
        self.package = package
        self.model = package.model
        self.action_norm = package.normalizers["action"]
        self._plain = package.sampler("torch")

    def noise_shape(self, batch: int) -> tuple[int, ...]:
        return self._plain.noise_shape(batch)

    @torch.inference_mode()
    def __call__(self, obs: dict[str, np.ndarray], noise: np.ndarray | None = None, known: np.ndarray | None = None):
        if known is None or len(known) == 0:
            return self._plain(obs, noise=noise)
        model, cfg = self.model, self.model.cfg
        known = np.asarray(known, dtype=np.float64)[: cfg.horizon]
        m = len(known)
        batch = {k: torch.from_numpy(np.ascontiguousarray(v))[None] for k, v in obs.items()}
        K = cfg.sample_steps
        shape = (1, K + 1, cfg.horizon, cfg.action_dim)
        z = torch.randn(shape) if noise is None else torch.from_numpy(np.asarray(noise, np.float32)).reshape(shape)
        a_known = torch.from_numpy(np.asarray(self.action_norm.normalize(known), dtype=np.float32))[None]
        cond, cond_frozen = model.encode(batch)  # a K' < K package runs its frozen steps on their own features
        std = cfg.deploy_std
        x = z[:, 0].clone()
        x[:, :m] = model.ddim_ab[K - 1].sqrt() * a_known + (1 - model.ddim_ab[K - 1]).sqrt() * x[:, :m]
        for i, k in enumerate(range(K - 1, -1, -1)):
            net = model.denoiser_for(k)
            mean, _ = model.ddim_mean_std(x, k, cond if net is model.denoiser else cond_frozen, denoiser=net)
            x = mean + std * z[:, i + 1] if std > 0 else mean
            ab_prev = model.ddim_ab_prev[k]
            x[:, :m] = ab_prev.sqrt() * a_known + (1 - ab_prev).sqrt() * z[:, i + 1, :m]
        out = np.clip(self.action_norm.unnormalize(x.clamp(-1.0, 1.0).numpy()), -1.0, 1.0).astype(np.float32)
        return out[0]
