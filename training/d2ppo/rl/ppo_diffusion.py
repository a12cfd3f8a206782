"""PPO over the denoising chain — the two-layer MDP of DPPO (Ren et al., arXiv 2409.00588), as D²PPO uses it.

Outer (environment) MDP, one step per action chunk:
    s_t = policy input (obs builder output), a_t = chunk x_0 [Ta, Da], r_t = success in the chunk (0/1).
    Advantages Â_t by GAE(γ, λ) over chunk steps (d2ppo.rl.rollout.compute_gae).
Inner (denoising) MDP, inside every env step, step k = K-1 … 0 maps x_{k+1} -> x_k (x_K ~ N(0, I)):
    π_θ(x_k | x_{k+1}, s_t) = N(μ_θ(x_{k+1}, k, s_t), σ_k² I),   σ_k = max(noise_eta · DDIM σ_k, min std)
    μ_θ is the DDIM mean of the pre-trained model (DiffusionPolicy.ddim_mean_std). Only the last K′ steps
    (k < K′) are fine-tuned; a frozen copy of the pre-trained denoiser runs steps K-1 … K′. The whole chain
    x_{K′} … x_0 is stored per env step; every fine-tuned transition is one PPO "action" of the env step's
    state, with the env step's advantage: log π(a_t | s_t) = Σ_k log π_θ(x_k | x_{k+1}, s_t).
PPO per (env step t, denoising step k):
    ρ_{t,k} = exp(log π_θ - log π_old)          computed from the per-dimension mean log-density (DPPO)
    Â_{t,k} = γ_den^k · Â_t                     later (less noisy) steps get more credit; k = 0 is the last
    L_π = E[max(-Â ρ, -Â clip(ρ, 1 - ε_k, 1 + ε_k))]
    ε_k grows exponentially from clip_base at the first fine-tuned (noisiest) step to clip_last at k = 0
    L_V = ½ E[(V(s_t) - R_t)²],  R_t = Â_t + V_old(s_t)
Chains: the means are the package's DDIM chain (its ddim_eta); the sampled chain adds noise of std σ_k above
(noise_eta = 1: DPPO's DDPM-like noise; 0: only the floor); evaluation runs the noise-free chain (eval_eta).
The executed chunk is clip(x_0, -1, 1) (clipping is part of the env, not of the density, so the stored chain
keeps the unclipped x_0 and its log-probability stays a true Gaussian density).

Encoder: by default only the denoiser is fine-tuned; the observation encoder (identity for low-dim, the ViT
for pixels) stays at its pre-trained weights, so its features are computed once per env step at rollout
and the update needs no ViT passes (``train_encoder=True`` fine-tunes it too). The critic is an MLP on the
encoder's features (for low-dim: the normalised state; for pixels: ViT features + state), detached.
"""

from __future__ import annotations

import copy
import math
from contextlib import contextmanager
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor, nn

from d2ppo.model import DiffusionPolicy
from d2ppo.rl.critic import Critic


@dataclass
class DiffusionPPOConfig:
    """Hyper-parameters of the update. Defaults follow DPPO's robomimic configs unless noted."""

    ft_denoising_steps: int = 10  # K′: fine-tuned denoising steps (the last K′ of the K DDIM steps)
    # Exploration noise of the sampled chain: std_k = max(noise_eta · σ_k, min_sampling_std), σ_k the DDIM σ of
    # the package's chain (its ddim_eta). 1 = DDPM-like noise at every step (DPPO; σ_k ≈ 0.85 at the first
    # step); 0 = only the floor, i.e. local noise around the deterministic chain that is evaluated and deployed.
    noise_eta: float = 1.0
    # Deterministic chain used for evaluation and written into the fine-tuned package: None = the package's own
    # chain (its ddim_eta, no noise: what the pre-trained package was evaluated with); 0 = plain deterministic
    # DDIM, as DPPO evaluates. Measured on a toy bandit after PPO with noise_eta = 1 moved the sampled actions'
    # mean from 0.28 to 0.69: the η = 0 chain gave 0.72, the noise-free η = 1 chain overshot to 0.96. But the
    # pre-trained Lift packages lose with η = 0 (0.78 -> ~0.31 for one under-trained policy).
    eval_eta: float | None = None
    min_sampling_std: float = 0.1  # σ floor when sampling the chain (exploration)
    min_logprob_std: float = 0.1  # σ floor when evaluating log-probabilities (stability)
    randn_clip: float = 3.0  # clip each standard-normal draw of the chain to ±randn_clip
    gamma_denoising: float = 0.99  # γ_den: advantage of denoising step k is scaled by γ_den^k
    clip_base: float = 0.01  # ε at the first (noisiest) fine-tuned step (DPPO: 0.001)
    clip_last: float = 0.1  # ε at the final step k = 0 (DPPO: 0.01); larger = faster, less conservative
    clip_rate: float = 3.0  # exponential rate of the ε schedule (DPPO's clip_ploss_coef_rate)
    actor_lr: float = 3e-5  # DPPO: 1e-5 with 50 envs; larger here to learn from ~2 envs in minutes
    critic_lr: float = 1e-3
    update_epochs: int = 5  # DPPO: 10
    minibatch_size: int = 256  # env steps per minibatch (each carries K′ transitions)
    vf_coef: float = 0.5
    clip_vloss: float | None = None  # clip of V around V_old (None = plain value loss, as DPPO robomimic)
    max_grad_norm: float = 1.0
    target_kl: float | None = 1.0  # stop the epoch loop when approx KL exceeds this (DPPO: 1)
    norm_adv: bool = True  # normalise advantages per minibatch
    train_encoder: bool = False  # also fine-tune the observation encoder (ViT for pixels)
    critic_dims: tuple[int, ...] = (256, 256, 256)


def clip_schedule(n_steps: int, base: float, last: float, rate: float) -> Tensor:
    """ε per fine-tuned denoising step, in chain order (first = noisiest): [n_steps].

    ε_j = base + (last - base) · (e^{rate·t_j} - 1) / (e^{rate} - 1),  t_j = j / (n_steps - 1).
    """
    if n_steps == 1:
        return torch.tensor([last])
    t = torch.arange(n_steps, dtype=torch.float32) / (n_steps - 1)
    return base + (last - base) * (torch.exp(rate * t) - 1) / (math.exp(rate) - 1)


def denoising_discount(n_steps: int, gamma_denoising: float) -> Tensor:
    """γ_den^k per fine-tuned step in chain order (k = n_steps-1 … 0): [n_steps], last entry 1."""
    return gamma_denoising ** torch.arange(n_steps - 1, -1, -1, dtype=torch.float32)


def ddim_sigmas(model: DiffusionPolicy, eta: float) -> Tensor:
    """DDIM σ_k (k = 0 … K-1) of the model's schedule for a given η (DDIM eq. 16):
    σ_k = η √((1 - ᾱ_prev) / (1 - ᾱ) · (1 - ᾱ / ᾱ_prev))."""
    ab, ab_prev = model.ddim_ab, model.ddim_ab_prev
    return eta * ((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)).clamp_min(0).sqrt()


def gaussian_log_prob(x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """Element-wise log N(x; mean, std²)."""
    return -((x - mean) ** 2) / (2 * std**2) - std.log() - 0.5 * math.log(2 * math.pi)


class DiffusionPPO:
    """The fine-tuned policy (actor + frozen early steps + critic) and its PPO update."""

    def __init__(self, model: DiffusionPolicy, action_normalizer, cfg: DiffusionPPOConfig, device: str = "cpu"):
        K = model.cfg.sample_steps
        if not 1 <= cfg.ft_denoising_steps <= K:
            raise ValueError(f"ft_denoising_steps must be in [1, {K}], got {cfg.ft_denoising_steps}")
        self.cfg, self.device = cfg, device
        self.model = model.to(device)
        # DiffusionPolicy.ddim_mean_std reads its σ table (buffer ddim_sigma, not saved); with eval_eta set,
        # act(deterministic=True) swaps in that η's table (see _sigma_table).
        self.sigma_eval = ddim_sigmas(model, cfg.eval_eta).to(device) if cfg.eval_eta is not None else None
        self.action_norm = action_normalizer
        self.K, self.K_ft = K, cfg.ft_denoising_steps
        # Frozen pre-trained denoiser for the K - K′ earliest steps.
        self.frozen = copy.deepcopy(model.denoiser).eval().requires_grad_(False)
        self.model.encoder.requires_grad_(cfg.train_encoder)
        self.critic = Critic(model.encoder.cond_dim, cfg.critic_dims).to(device)
        actor_params = list(model.denoiser.parameters()) + (list(model.encoder.parameters()) if cfg.train_encoder else [])
        self.actor_params = [p for p in actor_params if p.requires_grad]
        self.actor_opt = torch.optim.Adam(self.actor_params, lr=cfg.actor_lr)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=cfg.critic_lr)
        self.clip_eps = clip_schedule(self.K_ft, cfg.clip_base, cfg.clip_last, cfg.clip_rate).to(device)
        self.den_discount = denoising_discount(self.K_ft, cfg.gamma_denoising).to(device)
        self.act_steps = model.cfg.act_steps
        self.model.eval()  # no dropout/augmentation anywhere in the RL phase

    # ------------------------------------------------------------------ helpers
    def _obs(self, obs: dict[str, np.ndarray]) -> dict[str, Tensor]:
        return {k: torch.as_tensor(v, device=self.device) for k, v in obs.items() if k in ("state", "rgb")}

    def encode(self, obs: dict[str, Tensor]) -> Tensor:
        return self.model.encoder(obs)

    def _net(self, k: int) -> nn.Module:
        return self.model.denoiser if k < self.K_ft else self.frozen

    def _to_env(self, x0: Tensor) -> np.ndarray:
        """Normalised x_0 -> env actions (as ChunkSampler does): clip, unnormalise, clip to [-1, 1]."""
        act = self.action_norm.unnormalize(x0.clamp(-1.0, 1.0).cpu().numpy())
        return np.clip(act, -1.0, 1.0).astype(np.float32)

    @contextmanager
    def _sigma_table(self, sigma: Tensor):
        saved = self.model.ddim_sigma.clone()
        self.model.ddim_sigma.copy_(sigma)
        try:
            yield
        finally:
            self.model.ddim_sigma.copy_(saved)

    def deploy_config(self):
        """The model config to write into the fine-tuned package: its deterministic chain is the evaluated one."""
        if self.cfg.eval_eta is None:
            return replace(self.model.cfg, deploy_std=0.0)
        return replace(self.model.cfg, ddim_eta=self.cfg.eval_eta, deploy_std=0.0)

    # ------------------------------------------------------------------ acting
    @torch.no_grad()
    def act(self, obs: dict[str, np.ndarray], deterministic: bool = False) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Sample the chain for a batch of env obs.

        Returns env actions [N, Ta, Da] and the record to store: ``chain`` [N, K′+1, Ta, Da] (x_{K′} … x_0,
        x_0 unclipped), ``logprob`` [N, K′] (Σ over executed actions and dims of each transition's log-density,
        min_logprob_std floor), ``cond`` [N, Dc] (encoder features; cached for the update) and ``value`` [N].
        ``deterministic``: the η = eval_eta chain without noise (evaluation; the fine-tuned package's sampler).
        """
        if deterministic and self.sigma_eval is not None:
            with self._sigma_table(self.sigma_eval):
                return self._act(obs, True)
        return self._act(obs, deterministic)

    def _act(self, obs: dict[str, np.ndarray], deterministic: bool) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        cfg = self.cfg
        cond = self.encode(self._obs(obs))
        b = cond.shape[0]
        x = torch.randn(b, self.model.cfg.horizon, self.model.cfg.action_dim, device=self.device)
        chain, logps = [x] if self.K_ft == self.K else [], []
        for k in range(self.K - 1, -1, -1):
            mean, sigma = self.model.ddim_mean_std(x, k, cond, denoiser=self._net(k))
            if deterministic:
                x = mean
            else:
                z = torch.randn_like(x).clamp_(-cfg.randn_clip, cfg.randn_clip)
                x = mean + (cfg.noise_eta * sigma).clamp_min(cfg.min_sampling_std) * z
            if k < self.K_ft:
                lp = gaussian_log_prob(x, mean, (cfg.noise_eta * sigma).clamp_min(cfg.min_logprob_std))
                logps.append(lp[:, : self.act_steps].sum(dim=(1, 2)))
                chain.append(x)
            elif k == self.K_ft:
                chain.append(x)  # x_{K′}: input of the first fine-tuned step
        record = {
            "chain": torch.stack(chain, 1).cpu().numpy(),
            "logprob": torch.stack(logps, 1).cpu().numpy(),
            "cond": cond.cpu().numpy(),
            "value": self.critic(cond).cpu().numpy(),
        }
        return self._to_env(x), record

    @torch.no_grad()
    def value(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        return self.critic(self.encode(self._obs(obs))).cpu().numpy()

    # ------------------------------------------------------------------ log-probabilities
    def chain_log_prob(self, cond: Tensor, chain: Tensor) -> Tensor:
        """log π_θ of every fine-tuned transition of stored chains: [B, K′].

        chain [B, K′+1, Ta, Da] = (x_{K′}, …, x_0); transition j (j = 0 … K′-1) is denoising step
        k = K′-1-j, x_{k+1} -> x_k. Summed over the executed actions (first act_steps) and action dims.
        """
        out = []
        for j in range(self.K_ft):
            k = self.K_ft - 1 - j
            mean, sigma = self.model.ddim_mean_std(chain[:, j], k, cond)
            lp = gaussian_log_prob(chain[:, j + 1], mean, (self.cfg.noise_eta * sigma).clamp_min(self.cfg.min_logprob_std))
            out.append(lp[:, : self.act_steps].sum(dim=(1, 2)))
        return torch.stack(out, 1)

    # ------------------------------------------------------------------ the update
    def update(self, batch: dict[str, np.ndarray], update_actor: bool = True) -> dict[str, float]:
        """PPO epochs over one rollout. batch (flattened over env steps, B = steps · envs):
        obs keys (``state`` [B, To, Ds], ``rgb``), ``chain`` [B, K′+1, Ta, Da], ``logprob`` [B, K′],
        ``cond`` [B, Dc], ``advantage`` [B], ``return`` [B], ``value`` [B].
        ``update_actor=False``: critic warm-up (actor frozen).
        """
        cfg, dev = self.cfg, self.device
        t = {k: torch.as_tensor(v, device=dev) for k, v in batch.items()}
        n = t["advantage"].shape[0]
        n_el = self.act_steps * self.model.cfg.action_dim  # elements of one transition's log-density
        logs: dict[str, list[float]] = {k: [] for k in ("pg_loss", "v_loss", "approx_kl", "clipfrac", "ratio")}
        stop = False
        mb = min(cfg.minibatch_size, n)
        for _epoch in range(cfg.update_epochs):
            perm = torch.randperm(n, device=dev)
            for start in range(0, n - mb + 1, mb):  # drop the ragged tail, as DPPO does
                idx = perm[start : start + mb]
                if cfg.train_encoder:
                    cond = self.encode({k: t[k][idx] for k in ("state", "rgb") if k in t})
                else:
                    cond = t["cond"][idx]
                # Critic: ½ (V - R)², optionally clipped around V_old.
                v = self.critic(cond.detach())
                ret, v_old = t["return"][idx], t["value"][idx]
                if cfg.clip_vloss is not None:
                    v_clip = v_old + (v - v_old).clamp(-cfg.clip_vloss, cfg.clip_vloss)
                    v_loss = 0.5 * torch.max((v - ret) ** 2, (v_clip - ret) ** 2).mean()
                else:
                    v_loss = 0.5 * ((v - ret) ** 2).mean()
                loss = cfg.vf_coef * v_loss
                if update_actor:
                    adv = t["advantage"][idx]
                    if cfg.norm_adv and adv.numel() > 1:
                        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
                    adv = adv[:, None] * self.den_discount[None, :]  # Â_{t,k} = γ_den^k Â_t   [mb, K′]
                    new_lp = self.chain_log_prob(cond, t["chain"][idx])
                    logratio = (new_lp - t["logprob"][idx]) / n_el  # per-dimension mean log-ratio (DPPO)
                    ratio = logratio.exp()
                    eps = self.clip_eps[None, :]
                    pg_loss = torch.max(-adv * ratio, -adv * ratio.clamp(1 - eps, 1 + eps)).mean()
                    loss = loss + pg_loss
                    with torch.no_grad():
                        approx_kl = ((ratio - 1) - logratio).mean().item()  # k3 estimator
                        logs["approx_kl"].append(approx_kl)
                        logs["clipfrac"].append(((ratio - 1).abs() > eps).float().mean().item())
                        logs["ratio"].append(ratio.mean().item())
                        logs["pg_loss"].append(pg_loss.item())
                self.actor_opt.zero_grad(set_to_none=True)
                self.critic_opt.zero_grad(set_to_none=True)
                loss.backward()
                if update_actor:
                    nn.utils.clip_grad_norm_(self.actor_params, cfg.max_grad_norm)
                    self.actor_opt.step()
                nn.utils.clip_grad_norm_(self.critic.parameters(), cfg.max_grad_norm)
                self.critic_opt.step()
                logs["v_loss"].append(v_loss.item())
                if update_actor and cfg.target_kl is not None and approx_kl > cfg.target_kl:
                    stop = True
                    break
            if stop:
                break
        out = {k: float(np.mean(v)) for k, v in logs.items() if v}
        out["epochs_run"] = _epoch + 1
        out["kl_stop"] = float(stop)
        return out

    # ------------------------------------------------------------------ persistence
    def state_dicts(self) -> dict[str, dict]:
        return {"model": self.model.state_dict(), "critic": self.critic.state_dict()}
