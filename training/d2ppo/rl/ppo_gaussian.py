"""Baseline: PPO with a Gaussian MLP policy over the same action chunks (DPPO's "Gaussian" arm).

Policy: a ~ N(μ_φ(s), diag σ²) over the normalised chunk [Ta, Da]; μ = tanh(MLP(features)), σ a learned
per-dimension parameter clamped to [std_min, std_max] (DPPO: init 0.1, range [0.01, 0.2]). Features are
the diffusion package's frozen encoder output (the normalised state for low-dim, ViT features + state
for pixels), so both arms see the same observation. Initialisation (``init``):
  bc       behaviour cloning (MSE of μ to the demo chunks) on the demos the diffusion package was trained on
           (path, filter key and max_demos read from its card), for ``bc_steps`` steps;
  scratch  random weights.
PPO on the env MDP only (one "denoising" step): ρ = exp(mean over executed dims of log-ratio), clipped at
ε = clip; value loss and critic as the diffusion arm (d2ppo.rl.ppo_diffusion).
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from d2ppo.rl.critic import Critic

GAUSSIAN_FORMAT = "d2ppo-gaussian-policy"


@dataclass
class GaussianPPOConfig:
    init: str = "bc"  # bc | scratch
    bc_steps: int = 3000
    bc_lr: float = 1e-3
    bc_batch_size: int = 256
    mlp_dims: tuple[int, ...] = (512, 512, 512)
    init_std: float = 0.1
    std_min: float = 0.01
    std_max: float = 0.2
    clip: float = 0.1  # ε (same as the diffusion arm's final-step ε)
    actor_lr: float = 1e-5  # DPPO's; 1e-4 gave a per-dimension approx KL of 0.67 in one iteration on Lift
    critic_lr: float = 1e-3
    update_epochs: int = 5
    minibatch_size: int = 256
    vf_coef: float = 0.5
    max_grad_norm: float = 1.0
    target_kl: float | None = 1.0
    norm_adv: bool = True
    critic_dims: tuple[int, ...] = (256, 256, 256)

    def __post_init__(self):
        # σ = clamp(exp(log_std), std_min, std_max): a bound <= 0 allows σ = 0 and a non-finite log-density.
        if not (math.isfinite(self.std_min) and self.std_min > 0):
            raise ValueError(f"std_min must be a finite number > 0, got {self.std_min!r}")
        if not (math.isfinite(self.std_max) and self.std_max >= self.std_min):
            raise ValueError(f"std_max must be a finite number >= std_min ({self.std_min}), got {self.std_max!r}")
        if not (math.isfinite(self.init_std) and self.init_std > 0):
            raise ValueError(f"init_std must be a finite number > 0, got {self.init_std!r}")

    def to_json(self) -> dict:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


class GaussianActor(nn.Module):
    """features [B, Dc] -> (mean [B, Ta, Da] in [-1, 1], std [Ta, Da]); encoder frozen (from the package)."""

    def __init__(self, encoder: nn.Module, horizon: int, action_dim: int, act_steps: int, cfg: GaussianPPOConfig):
        super().__init__()
        self.encoder = encoder.requires_grad_(False)
        self.horizon, self.action_dim, self.act_steps = horizon, action_dim, act_steps
        self.std_min, self.std_max = cfg.std_min, cfg.std_max
        layers: list[nn.Module] = []
        d = encoder.cond_dim
        for h in cfg.mlp_dims:
            layers += [nn.Linear(d, h), nn.Mish()]
            d = h
        layers.append(nn.Linear(d, horizon * action_dim))
        self.mlp = nn.Sequential(*layers)
        self.log_std = nn.Parameter(torch.full((horizon, action_dim), math.log(cfg.init_std)))

    def forward(self, cond: Tensor) -> tuple[Tensor, Tensor]:
        mean = torch.tanh(self.mlp(cond)).reshape(-1, self.horizon, self.action_dim)
        std = self.log_std.exp().clamp(self.std_min, self.std_max)
        return mean, std


def _demo_dataset(pkg):
    """The demos the diffusion package was pre-trained on (from its card's provenance)."""
    from d2ppo.data.dataset import SequenceDataset

    training = pkg.card.get("training") or {}
    data = training.get("data") or {}
    path = data.get("path")
    if not path or not Path(path).is_file():
        raise ValueError(f"{pkg.path}: card's training.data.path {path!r} is not a file; cannot behaviour-clone "
                         "the Gaussian baseline (use --gaussian-init scratch)")
    max_demos = (training.get("config") or {}).get("max_demos")
    return SequenceDataset(path, pkg.spec, horizon=pkg.horizon, filter_key=data.get("filter_key"),
                           normalizers=pkg.normalizers, max_demos=max_demos)


def pretrain_gaussian(pkg, cfg: GaussianPPOConfig, seed: int = 0) -> GaussianActor:
    """Build the Gaussian actor on the package's frozen encoder; behaviour-clone it when cfg.init == "bc"."""
    torch.manual_seed(seed)
    encoder = copy.deepcopy(pkg.model.encoder).eval()
    actor = GaussianActor(encoder, pkg.horizon, pkg.action_dim, pkg.act_steps, cfg)
    if cfg.init == "scratch":
        return actor
    if cfg.init != "bc":
        raise ValueError(f"unknown Gaussian init {cfg.init!r}; expected bc or scratch")
    ds = _demo_dataset(pkg)
    opt = torch.optim.Adam(actor.mlp.parameters(), lr=cfg.bc_lr)
    rng = np.random.default_rng(seed)
    for _ in range(cfg.bc_steps):
        b = ds.get_batch(rng.integers(len(ds), size=min(cfg.bc_batch_size, len(ds))))
        with torch.no_grad():
            cond = actor.encoder({k: b[k] for k in ("state", "rgb") if k in b})
        mean, _ = actor(cond)
        loss = ((mean - b["actions"]) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    print(f"[gaussian] behaviour-cloned {cfg.bc_steps} steps on {ds.num_demos} demos; final MSE {loss.item():.4f}",
          flush=True)
    return actor


class GaussianPPO:
    """Same interface as DiffusionPPO: act / value / update."""

    def __init__(self, actor: GaussianActor, cfg: GaussianPPOConfig, action_normalizer=None, device: str = "cpu"):
        self.actor, self.cfg, self.device = actor.to(device), cfg, device
        self.action_norm = action_normalizer
        self.critic = Critic(actor.encoder.cond_dim, cfg.critic_dims).to(device)
        self.actor_params = [p for p in actor.parameters() if p.requires_grad]
        self.actor_opt = torch.optim.Adam(self.actor_params, lr=cfg.actor_lr)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=cfg.critic_lr)

    def _cond(self, obs: dict[str, np.ndarray]) -> Tensor:
        return self.actor.encoder({k: torch.as_tensor(v, device=self.device) for k, v in obs.items() if k in ("state", "rgb")})

    def _log_prob(self, mean: Tensor, std: Tensor, a: Tensor) -> Tensor:
        """Σ over executed actions and dims of log N(a; mean, std²): [B]."""
        lp = -((a - mean) ** 2) / (2 * std**2) - std.log() - 0.5 * math.log(2 * math.pi)
        return lp[:, : self.actor.act_steps].sum(dim=(1, 2))

    def _to_env(self, a: Tensor) -> np.ndarray:
        a = a.clamp(-1.0, 1.0).cpu().numpy()
        if self.action_norm is not None:
            a = self.action_norm.unnormalize(a)
        return np.clip(a, -1.0, 1.0).astype(np.float32)

    @torch.no_grad()
    def act(self, obs: dict[str, np.ndarray], deterministic: bool = False):
        cond = self._cond(obs)
        mean, std = self.actor(cond)
        a = mean if deterministic else mean + std * torch.randn_like(mean).clamp_(-3, 3)
        record = {"action": a.cpu().numpy(), "logprob": self._log_prob(mean, std, a).cpu().numpy(),
                  "cond": cond.cpu().numpy(), "value": self.critic(cond).cpu().numpy()}
        return self._to_env(a), record

    @torch.no_grad()
    def value(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        return self.critic(self._cond(obs)).cpu().numpy()

    def update(self, batch: dict[str, np.ndarray], update_actor: bool = True) -> dict[str, float]:
        cfg, dev = self.cfg, self.device
        t = {k: torch.as_tensor(v, device=dev) for k, v in batch.items()}
        n = t["advantage"].shape[0]
        n_el = self.actor.act_steps * self.actor.action_dim
        mb = min(cfg.minibatch_size, n)
        logs: dict[str, list[float]] = {k: [] for k in ("pg_loss", "v_loss", "approx_kl", "clipfrac", "std")}
        stop = False
        for _epoch in range(cfg.update_epochs):
            perm = torch.randperm(n, device=dev)
            for start in range(0, n - mb + 1, mb):
                idx = perm[start : start + mb]
                cond = t["cond"][idx]
                v_loss = 0.5 * ((self.critic(cond) - t["return"][idx]) ** 2).mean()
                loss = cfg.vf_coef * v_loss
                if update_actor:
                    adv = t["advantage"][idx]
                    if cfg.norm_adv and adv.numel() > 1:
                        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
                    mean, std = self.actor(cond)
                    logratio = (self._log_prob(mean, std, t["action"][idx]) - t["logprob"][idx]) / n_el
                    ratio = logratio.exp()
                    pg_loss = torch.max(-adv * ratio, -adv * ratio.clamp(1 - cfg.clip, 1 + cfg.clip)).mean()
                    loss = loss + pg_loss
                    with torch.no_grad():
                        approx_kl = ((ratio - 1) - logratio).mean().item()
                        logs["approx_kl"].append(approx_kl)
                        logs["clipfrac"].append(((ratio - 1).abs() > cfg.clip).float().mean().item())
                        logs["pg_loss"].append(pg_loss.item())
                        logs["std"].append(std.mean().item())
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


# ---------------------------------------------------------------------- package (baseline format)
def save_gaussian_policy(path: str | Path, actor: GaussianActor, pkg, extra: dict | None = None) -> Path:
    """policy.json + model.safetensors of the Gaussian baseline (format ``d2ppo-gaussian-policy``).

    Same observation/action/normalisation fields as a diffusion package; d2ppo.package.load_policy rejects
    it by format (the deployment stack runs diffusion packages only); load with load_gaussian_policy.
    """
    from safetensors.torch import save_file

    from d2ppo.package import write_card

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    card = {
        "format": GAUSSIAN_FORMAT,
        "format_version": 1,
        "name": path.name,
        "task": pkg.task,
        "env_args": pkg.env_args,
        "render_profile": pkg.render_profile,
        "obs": pkg.card["obs"],
        "action": pkg.card["action"],
        "control_rate_hz": pkg.control_rate_hz,
        "encoder_model": pkg.card["model"],  # config of the (frozen) encoder taken from this diffusion package
        "gaussian": {"mlp_dims": [m.out_features for m in actor.mlp if isinstance(m, nn.Linear)][:-1],
                     "std_min": actor.std_min, "std_max": actor.std_max},
        "normalization": pkg.card["normalization"],
        "source_package": str(pkg.path),
    }
    card.update(extra or {})
    state = {k: v.detach().cpu().contiguous() for k, v in actor.state_dict().items()}
    save_file(state, str(path / "model.safetensors"), metadata={"format": GAUSSIAN_FORMAT})
    write_card(path, card)
    return path


def load_gaussian_policy(path: str | Path) -> tuple[GaussianActor, dict]:
    """(actor, card) of a package written by save_gaussian_policy."""
    from safetensors.torch import load_file

    from d2ppo.model import DiffusionPolicy, PolicyConfig
    from d2ppo.obs import ObsSpec

    path = Path(path)
    card = json.loads((path / "policy.json").read_text())
    if card.get("format") != GAUSSIAN_FORMAT:
        raise ValueError(f"{path / 'policy.json'}: not a {GAUSSIAN_FORMAT} card")
    spec, mcfg = ObsSpec.from_dict(card["obs"]), PolicyConfig.from_dict(card["encoder_model"])
    g = card["gaussian"]
    cfg = GaussianPPOConfig(mlp_dims=tuple(g["mlp_dims"]), std_min=g["std_min"], std_max=g["std_max"])
    encoder = DiffusionPolicy(spec, mcfg).encoder
    actor = GaussianActor(encoder, mcfg.horizon, mcfg.action_dim, mcfg.act_steps, cfg)
    actor.load_state_dict(load_file(str(path / "model.safetensors")))
    return actor.eval(), card
