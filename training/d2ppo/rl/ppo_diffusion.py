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
    ρ_{t,k} = exp(log π_θ - log π_old)          computed from the per-dimension mean log-density (DPPO), each
                                                element's log-density clamped to [-5, 2] first (DPPO's clamp)
    Â_{t,k} = γ_den^k · Â_t                     later (less noisy) steps get more credit; k = 0 is the last
    L_π = E[max(-Â ρ, -Â clip(ρ, 1 - ε_k, 1 + ε_k))]
    ε_k grows exponentially from clip_base at the first fine-tuned (noisiest) step to clip_last at k = 0
    L_V = ½ E[(V(s_t) - R_t)²],  R_t = Â_t + V_old(s_t)
    L_BC = -E[mean log π_θ(x̃_k | x̃_{k+1}, s_t)] (optional, weight bc_coef; DPPO's use_bc_loss): x̃ is a chain
           sampled from the frozen pre-trained policy on the same s_t, so the fine-tuned chain keeps giving the
           pre-trained policy's actions high probability (Eq. 2 of arXiv 2403.03949, as DPPO cites).
    Actor learning rate: linear warm-up from actor_lr_warmup_start · actor_lr to actor_lr over the first
    actor_lr_warmup_iters actor updates (DPPO's scheduler warm-up), then constant.
Chains: the means are the package's DDIM chain (its ddim_eta); the sampled chain adds noise of std σ_k above
(noise_eta = 1: DPPO's DDPM-like noise; 0: only the floor); evaluation runs the noise-free chain (eval_eta).
The executed chunk is clip(x_0, -1, 1) (clipping is part of the env, not of the density, so the stored chain
keeps the unclipped x_0 and its log-probability stays a true Gaussian density).

Encoder: for a pixel policy the ViT is fine-tuned with the denoiser, as in DPPO's image runs, and the update
batch's images are random-shifted (pad cfg.aug_shift = 4, one shift per image for the whole update, as DPPO's
``train.augment``); the old log-probabilities are recomputed on the shifted images so the first ratio is 1.
``train_encoder=False`` keeps the encoder at its pre-trained weights: its features are then computed once per
env step at rollout and the update needs no ViT passes (the cheaper CPU setting). A low-dim encoder is the
identity. With K′ < K and a fine-tuned encoder, the frozen steps keep a frozen copy of the pre-trained encoder
(DPPO's ``actor`` holds its own backbone). The critic is an MLP on the encoder's features (for low-dim: the
normalised state; for pixels: ViT features + state), detached.

The model's chain is split in place (``DiffusionPolicy.split_chain``): the saved package holds the frozen
networks, so deployment runs exactly the chain that was fine-tuned and evaluated (d2ppo.package, format 2).
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
from d2ppo.model.vit import random_shift
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
    # Fine-tune the observation encoder (the ViT of a pixel policy) with the denoiser. None = DPPO's choice: yes
    # for pixel policies, and a low-dim encoder (the identity) has nothing to fine-tune.
    train_encoder: bool | None = None
    # Random-shift augmentation of the update batch's images when the encoder is fine-tuned (DPPO: train.augment
    # True in its image configs, RandomShiftsAug(pad=4)); the pad is the package's aug_shift.
    augment: bool = True
    # Clamp of each element's log-density (per action element and denoising step) before the ratio; None = off.
    # DPPO clamps to [-5, 2] always (diffusion_ppo.py); with std ≥ 0.1 the upper bound never binds.
    logprob_clamp: tuple[float, float] | None = (-5.0, 2.0)
    bc_coef: float = 0.0  # weight of the BC regulariser L_BC (DPPO: use_bc_loss False, bc_loss_coeff 0)
    # Linear actor-lr warm-up over the first N actor updates from actor_lr_warmup_start · actor_lr. DPPO's robomimic
    # configs set warmup_steps 10 but min_lr = actor_lr, i.e. a constant rate, which 0 reproduces.
    actor_lr_warmup_iters: int = 0
    actor_lr_warmup_start: float = 0.1  # fraction of actor_lr at the first actor update (DPPO's min_lr / actor_lr)
    critic_dims: tuple[int, ...] = (256, 256, 256)

    def __post_init__(self):
        def need(ok: bool, name: str, what: str) -> None:
            if not ok:
                value = getattr(self, name)
                raise ValueError(f"{name} (--{name.replace('_', '-')}) must be {what}, got {value!r}")

        def finite(v) -> bool:
            return isinstance(v, int | float) and math.isfinite(v)

        # A σ floor of 0 gives σ = 0 at the last step (DDIM σ_0 = 0): log N(x; μ, 0) = ±inf, NaN ratios.
        need(finite(self.min_logprob_std) and self.min_logprob_std > 0, "min_logprob_std", "a finite number > 0")
        need(finite(self.noise_eta) and self.noise_eta >= 0, "noise_eta", "a finite number >= 0")
        need(finite(self.min_sampling_std) and self.min_sampling_std >= 0, "min_sampling_std", "a finite number >= 0")
        need(self.eval_eta is None or (finite(self.eval_eta) and self.eval_eta >= 0), "eval_eta", "a finite number >= 0")
        if self.logprob_clamp is not None:
            self.logprob_clamp = tuple(float(v) for v in self.logprob_clamp)
            need(len(self.logprob_clamp) == 2 and all(map(math.isfinite, self.logprob_clamp))
                 and self.logprob_clamp[0] < self.logprob_clamp[1], "logprob_clamp", "two finite numbers LO < HI")
        need(finite(self.bc_coef) and self.bc_coef >= 0, "bc_coef", "a finite number >= 0")
        need(isinstance(self.ft_denoising_steps, int) and self.ft_denoising_steps >= 1, "ft_denoising_steps", ">= 1")
        need(isinstance(self.actor_lr_warmup_iters, int) and self.actor_lr_warmup_iters >= 0, "actor_lr_warmup_iters",
             "an integer >= 0")
        need(finite(self.actor_lr_warmup_start) and 0 < self.actor_lr_warmup_start <= 1, "actor_lr_warmup_start",
             "in (0, 1]")

    def actor_lr_at(self, update: int) -> float:
        """Actor learning rate of the ``update``-th actor update (0-based): linear warm-up, then actor_lr."""
        if update >= self.actor_lr_warmup_iters:
            return self.actor_lr
        start = self.actor_lr_warmup_start
        return self.actor_lr * (start + (1 - start) * update / self.actor_lr_warmup_iters)


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
        self.train_encoder = model.spec.uses_images if cfg.train_encoder is None else cfg.train_encoder
        encoder_has_weights = any(True for _ in model.encoder.parameters())
        # Frozen pre-trained denoiser for the K - K′ earliest steps (and encoder, when the encoder is fine-tuned):
        # part of the model, so the saved package deploys this chain.
        model.split_chain(cfg.ft_denoising_steps, freeze_encoder=self.train_encoder and encoder_has_weights)
        self.frozen = model.frozen_denoiser
        # DiffusionPolicy.ddim_mean_std reads its σ table (buffer ddim_sigma, not saved); with eval_eta set,
        # act(deterministic=True) swaps in that η's table (see _sigma_table).
        self.sigma_eval = ddim_sigmas(model, cfg.eval_eta).to(device) if cfg.eval_eta is not None else None
        self.action_norm = action_normalizer
        self.K, self.K_ft = K, cfg.ft_denoising_steps
        self.model.encoder.requires_grad_(self.train_encoder)
        self.augment = cfg.augment and self.train_encoder and model.spec.uses_images
        # The BC teacher: the whole pre-trained chain (every step by the pre-trained denoiser and encoder).
        self.teacher_denoiser = self.teacher_encoder = None
        if cfg.bc_coef > 0:
            self.teacher_denoiser = (model.frozen_denoiser if model.frozen_denoiser is not None
                                     else copy.deepcopy(model.denoiser).requires_grad_(False))
            if model.frozen_encoder is not None:
                self.teacher_encoder = model.frozen_encoder
            elif self.train_encoder and encoder_has_weights:
                self.teacher_encoder = copy.deepcopy(model.encoder).requires_grad_(False)
        self.critic = Critic(model.encoder.cond_dim, cfg.critic_dims).to(device)
        actor_params = list(model.denoiser.parameters()) + (list(model.encoder.parameters()) if self.train_encoder else [])
        self.actor_params = [p for p in actor_params if p.requires_grad]
        self.actor_updates = 0  # iterations that updated the actor (the warm-up counts these)
        self.actor_opt = torch.optim.Adam(self.actor_params, lr=cfg.actor_lr_at(0))
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=cfg.critic_lr)
        self.clip_eps = clip_schedule(self.K_ft, cfg.clip_base, cfg.clip_last, cfg.clip_rate).to(device)
        self.den_discount = denoising_discount(self.K_ft, cfg.gamma_denoising).to(device)
        self.act_steps = model.cfg.act_steps
        self.model.eval()  # no dropout, and no augmentation inside the encoder (the update shifts images itself)

    # ------------------------------------------------------------------ helpers
    def _obs(self, obs: dict[str, np.ndarray]) -> dict[str, Tensor]:
        return {k: torch.as_tensor(v, device=self.device) for k, v in obs.items() if k in ("state", "rgb")}

    def encode(self, obs: dict[str, Tensor]) -> Tensor:
        """Features of the fine-tuned steps (and of the critic) [B, Dc]."""
        return self.model.encoder(obs)

    def _net(self, k: int) -> nn.Module:
        return self.model.denoiser_for(k)

    def _to_env(self, x0: Tensor) -> np.ndarray:
        """Normalised x_0 -> env actions (as ChunkSampler does): clip, unnormalise, clip to [-1, 1]."""
        act = self.action_norm.unnormalize(x0.clamp(-1.0, 1.0).cpu().numpy())
        return np.clip(act, -1.0, 1.0).astype(np.float32)

    def _log_prob(self, x: Tensor, mean: Tensor, sigma: Tensor) -> Tensor:
        """log π of one transition [B]: Σ over the executed actions and dims of each element's log-density with
        std max(noise_eta · σ, min_logprob_std), every element clamped to cfg.logprob_clamp (DPPO)."""
        cfg = self.cfg
        lp = gaussian_log_prob(x, mean, (cfg.noise_eta * sigma).clamp_min(cfg.min_logprob_std))
        if cfg.logprob_clamp is not None:
            lp = lp.clamp(*cfg.logprob_clamp)
        return lp[:, : self.act_steps].sum(dim=(1, 2))

    def _shift_images(self, rgb: Tensor) -> Tensor:
        """Random shift of every image (pad = the package's aug_shift) [B, To, Ncam, 3, H, W] uint8 -> same.

        Integer-pixel shifts sample pixel centres exactly, so rounding back to uint8 loses nothing.
        """
        img = rgb.reshape(-1, *rgb.shape[3:]).float()
        img = random_shift(img, self.model.cfg.aug_shift)
        return img.round_().clamp_(0, 255).to(torch.uint8).reshape(rgb.shape)

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
        cond, cond_frozen = self.model.encode(self._obs(obs))
        b = cond.shape[0]
        x = torch.randn(b, self.model.cfg.horizon, self.model.cfg.action_dim, device=self.device)
        chain, logps = [x] if self.K_ft == self.K else [], []
        for k in range(self.K - 1, -1, -1):
            mean, sigma = self.model.ddim_mean_std(x, k, cond if k < self.K_ft else cond_frozen, denoiser=self._net(k))
            if deterministic:
                x = mean
            else:
                z = torch.randn_like(x).clamp_(-cfg.randn_clip, cfg.randn_clip)
                x = mean + (cfg.noise_eta * sigma).clamp_min(cfg.min_sampling_std) * z
            if k < self.K_ft:
                logps.append(self._log_prob(x, mean, sigma))
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
            out.append(self._log_prob(chain[:, j + 1], mean, sigma))
        return torch.stack(out, 1)

    def bc_loss(self, cond: Tensor, teacher_cond: Tensor | None = None) -> Tensor:
        """L_BC: minus the per-dimension mean log π_θ of a chain sampled from the pre-trained policy (DPPO).

        cond [B, Dc]: the fine-tuned encoder's features (gradients flow); teacher_cond: the pre-trained encoder's
        (default: cond, detached, when the encoder is not fine-tuned). The teacher chain is sampled like a
        rollout's (σ_k = max(noise_eta · σ, min_sampling_std)) with the pre-trained denoiser at every step.
        """
        cfg = self.cfg
        with torch.no_grad():
            t_cond = cond.detach() if teacher_cond is None else teacher_cond
            x = torch.randn(cond.shape[0], self.model.cfg.horizon, self.model.cfg.action_dim, device=cond.device)
            chain = [x] if self.K_ft == self.K else []
            for k in range(self.K - 1, -1, -1):
                mean, sigma = self.model.ddim_mean_std(x, k, t_cond, denoiser=self.teacher_denoiser)
                z = torch.randn_like(x).clamp_(-cfg.randn_clip, cfg.randn_clip)
                x = mean + (cfg.noise_eta * sigma).clamp_min(cfg.min_sampling_std) * z
                if k <= self.K_ft:  # x_{K′} … x_0
                    chain.append(x)
            chain = torch.stack(chain, 1)
        n_el = self.act_steps * self.model.cfg.action_dim
        return -(self.chain_log_prob(cond, chain) / n_el).mean()

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
        logs: dict[str, list[float]] = {k: [] for k in ("pg_loss", "v_loss", "approx_kl", "clipfrac", "ratio", "bc_loss")}
        stop = False
        mb = min(cfg.minibatch_size, n)
        obs_keys = [k for k in ("state", "rgb") if k in t]
        if self.augment and "rgb" in t:
            # One shift per image for the whole update (DPPO augments the stored rollout once); the old
            # log-probabilities must be those of the shifted input, or the ratio starts away from 1.
            t["rgb"] = self._shift_images(t["rgb"])
            if update_actor:
                with torch.no_grad():
                    t["logprob"] = torch.cat([
                        self.chain_log_prob(self.encode({k: t[k][i : i + mb] for k in obs_keys}), t["chain"][i : i + mb])
                        for i in range(0, n, mb)
                    ])
        if update_actor:
            lr = cfg.actor_lr_at(self.actor_updates)
            for g in self.actor_opt.param_groups:
                g["lr"] = lr
            self.actor_updates += 1
        for _epoch in range(cfg.update_epochs):
            perm = torch.randperm(n, device=dev)
            for start in range(0, n - mb + 1, mb):  # drop the ragged tail, as DPPO does
                idx = perm[start : start + mb]
                obs_mb = {k: t[k][idx] for k in obs_keys}
                cond = self.encode(obs_mb) if self.train_encoder else t["cond"][idx]
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
                    if cfg.bc_coef > 0:
                        teacher_cond = None
                        if self.teacher_encoder is not None:
                            with torch.no_grad():
                                teacher_cond = self.teacher_encoder(obs_mb)
                        bc = self.bc_loss(cond, teacher_cond)
                        loss = loss + cfg.bc_coef * bc
                        logs["bc_loss"].append(bc.item())
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
        if update_actor:
            out["actor_lr"] = lr
        return out

    # ------------------------------------------------------------------ persistence
    def state_dicts(self) -> dict[str, dict]:
        return {"model": self.model.state_dict(), "critic": self.critic.state_dict()}
