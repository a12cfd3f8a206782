"""The policy package: ``policy.json`` + ``model.safetensors`` (+ optional ``policy.onnx``).

ONE loader for training eval, fine-tuning, ONNX export and the ROS inference node. Loading never executes
code: weights are safetensors, metadata is JSON.

Format versions (``policy.json``: ``format_version``); this code reads both:
  1  one denoiser runs every DDIM step (pre-trained packages; fine-tuned with K′ = K).
  2  a split chain, written only for a package fine-tuned on the last K′ < K steps: ``denoising_chain`` =
     ``{"steps": K, "fine_tuned_steps": K′, "frozen_steps": K − K′, "frozen_encoder": bool}``; the first K − K′
     steps run the frozen pre-trained denoiser, stored in model.safetensors under ``frozen_denoiser.*`` (and,
     with ``frozen_encoder``, are conditioned on the pre-trained encoder under ``frozen_encoder.*``), the last
     K′ steps the fine-tuned ``denoiser.*`` / ``encoder.*``.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from d2ppo.model import DiffusionPolicy, PolicyConfig
from d2ppo.normalize import RangeNormalizer
from d2ppo.obs import ObservationBuilder, ObsSpec

FORMAT = "d2ppo-policy"
FORMAT_VERSION = 2  # newest version written; a package without a split chain is still written as version 1
READABLE_VERSIONS = (1, 2)
ACTION_NAMES = ("x", "y", "z", "roll", "pitch", "yaw", "gripper")
ACTION_CONVENTION = "robosuite OSC_POSE delta in the robot base frame, [-1,1] = ±0.05 m / ±0.5 rad per step; gripper > 0 closes"


class PolicyPackageError(ValueError):
    """A policy package that cannot be loaded; the message names the file and the problem."""


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_card(path: str | Path, card: dict) -> None:
    """Atomically (re)write policy.json of a package folder."""
    _atomic_write_bytes(Path(path) / "policy.json", (json.dumps(card, indent=2, sort_keys=False) + "\n").encode())


def save_policy(
    path: str | Path,
    model: DiffusionPolicy,
    normalizers: dict[str, RangeNormalizer | None],
    task: str,
    env_args: dict | None = None,
    render_profile: str = "fast",
    control_rate_hz: float = 20.0,
    robot_base_pos: tuple[float, float, float] = (0.0, 0.0, 0.0),
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a package folder (created if needed). Files are replaced atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    cfg = model.cfg
    card: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION if model.frozen_steps else 1,  # version 1 readers still load the rest
        "name": path.name,
        "task": task,
        "env_args": env_args,
        "render_profile": render_profile,
        "obs": {**model.spec.to_dict(), "robot_base_pos": [float(v) for v in robot_base_pos]},
        "action": {
            "dim": cfg.action_dim,
            "names": list(ACTION_NAMES[: cfg.action_dim]),
            "convention": ACTION_CONVENTION,
            "horizon": cfg.horizon,
            "act_steps": cfg.act_steps,
        },
        "control_rate_hz": float(control_rate_hz),
        "model": cfg.to_dict(),
        "normalization": {k: (v.to_dict() if v is not None else None) for k, v in normalizers.items()},
    }
    if model.frozen_steps:
        card["denoising_chain"] = {
            "steps": cfg.sample_steps,
            "fine_tuned_steps": cfg.sample_steps - model.frozen_steps,
            "frozen_steps": model.frozen_steps,
            "frozen_encoder": model.frozen_encoder is not None,
        }
    card.update(extra or {})
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    fd, tmp = tempfile.mkstemp(dir=path, prefix=".model.safetensors.")
    os.close(fd)
    try:
        save_file(state, tmp, metadata={"format": FORMAT})
        os.replace(tmp, path / "model.safetensors")
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    write_card(path, card)
    return path


@dataclass
class PolicyPackage:
    path: Path
    card: dict
    spec: ObsSpec
    model: DiffusionPolicy
    normalizers: dict[str, RangeNormalizer | None]

    @property
    def task(self) -> str:
        return self.card["task"]

    @property
    def cfg(self) -> PolicyConfig:
        return self.model.cfg

    @property
    def horizon(self) -> int:
        return self.model.cfg.horizon

    @property
    def act_steps(self) -> int:
        return self.model.cfg.act_steps

    @property
    def action_dim(self) -> int:
        return self.model.cfg.action_dim

    @property
    def control_rate_hz(self) -> float:
        return float(self.card.get("control_rate_hz", 20.0))

    @property
    def env_args(self) -> dict | None:
        return self.card.get("env_args")

    @property
    def render_profile(self) -> str:
        return self.card.get("render_profile", "fast")

    @property
    def robot_base_pos(self) -> np.ndarray:
        return np.asarray(self.card["obs"].get("robot_base_pos", [0.0, 0.0, 0.0]), dtype=np.float64)

    def obs_builder(self) -> ObservationBuilder:
        """The one observation builder, configured with this policy's spec and state normalisation."""
        return ObservationBuilder(self.spec, self.normalizers.get("state"))

    def sampler(self, backend: str = "torch", **kw) -> ChunkSampler:
        """backend: ``torch`` (encode once), ``naive`` (re-encode every step, reference) or ``onnx``."""
        if backend in ("torch", "naive"):
            return TorchChunkSampler(self, naive=backend == "naive", **kw)
        if backend == "onnx":
            from d2ppo.export import OnnxChunkSampler

            return OnnxChunkSampler(self, **kw)
        raise ValueError(f"unknown sampler backend {backend!r}; expected torch, naive or onnx")


class ChunkSampler:
    """obs (builder output, optionally batched) -> env actions [Ta, Da] (or [B, Ta, Da]), unnormalised, in [-1, 1]."""

    def __init__(self, package: PolicyPackage):
        self.package = package
        self.action_norm = package.normalizers["action"]
        self.steps = package.cfg.sample_steps

    def noise_shape(self, batch: int) -> tuple[int, ...]:
        cfg = self.package.cfg
        return (batch, cfg.sample_steps + 1, cfg.horizon, cfg.action_dim)

    def _batched(self, obs: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], bool]:
        unbatched = obs["state"].ndim == 2
        if unbatched:
            obs = {k: v[None] for k, v in obs.items()}
        return obs, unbatched

    def _finish(self, normalised: np.ndarray, unbatched: bool) -> np.ndarray:
        act = np.clip(self.action_norm.unnormalize(normalised), -1.0, 1.0).astype(np.float32)
        return act[0] if unbatched else act

    def __call__(self, obs: dict[str, np.ndarray], noise: np.ndarray | None = None) -> np.ndarray:
        raise NotImplementedError


class TorchChunkSampler(ChunkSampler):
    def __init__(self, package: PolicyPackage, naive: bool = False, std: float | None = None):
        super().__init__(package)
        self.naive = naive
        self.std = std

    @torch.inference_mode()
    def __call__(self, obs: dict[str, np.ndarray], noise: np.ndarray | None = None) -> np.ndarray:
        obs, unbatched = self._batched(obs)
        t_obs = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in obs.items()}
        b = t_obs["state"].shape[0]
        t_noise = torch.from_numpy(np.asarray(noise, np.float32)).reshape(self.noise_shape(b)) if noise is not None else None
        model = self.package.model
        fn = model.sample_naive if self.naive else model.sample
        return self._finish(fn(t_obs, t_noise, self.std).numpy(), unbatched)


def _fail(path: Path, problem: str) -> PolicyPackageError:
    return PolicyPackageError(f"{path}: {problem}")


def load_policy(path: str | Path, device: str = "cpu") -> PolicyPackage:
    """Load and validate a policy package folder. Raises PolicyPackageError naming the file and problem."""
    path = Path(path)
    if not path.is_dir():
        raise _fail(path, "policy package folder does not exist" if not path.exists() else "is not a folder")
    card_path, weights_path = path / "policy.json", path / "model.safetensors"
    if not card_path.is_file():
        raise _fail(card_path, "missing (a policy package needs policy.json and model.safetensors)")
    if not weights_path.is_file():
        raise _fail(weights_path, "missing (a policy package needs policy.json and model.safetensors)")
    try:
        card = json.loads(card_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise _fail(card_path, f"not valid JSON ({e})") from None
    if not isinstance(card, dict) or card.get("format") != FORMAT:
        raise _fail(card_path, f"not a {FORMAT} card (format={card.get('format') if isinstance(card, dict) else None!r})")
    version = card.get("format_version")
    if version not in READABLE_VERSIONS:
        raise _fail(card_path, f"unknown format_version {version!r} (this code reads {', '.join(map(str, READABLE_VERSIONS))})")
    for key in ("task", "obs", "model", "normalization"):
        if key not in card:
            raise _fail(card_path, f"missing key {key!r}")
    try:
        spec = ObsSpec.from_dict(card["obs"])
        cfg = PolicyConfig.from_dict(card["model"])
        norms = {k: (RangeNormalizer.from_dict(v) if v is not None else None) for k, v in card["normalization"].items()}
    except (TypeError, ValueError, KeyError) as e:
        raise _fail(card_path, f"invalid field: {e}") from None
    if norms.get("action") is None or norms["action"].dim != cfg.action_dim:
        raise _fail(card_path, f"normalization.action must have {cfg.action_dim} dims")
    if norms.get("state") is not None and norms["state"].dim != spec.state_dim:
        raise _fail(card_path, f"normalization.state has {norms['state'].dim} dims, obs spec has {spec.state_dim}")
    frozen_steps, frozen_encoder = _denoising_chain(card_path, card, cfg)

    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(weights_path), device=device)
    except (SafetensorError, OSError, ValueError) as e:
        raise _fail(weights_path, f"cannot read safetensors ({e})") from None
    for name, t in state.items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise _fail(weights_path, f"tensor {name!r} contains NaN or inf")
    model = DiffusionPolicy(spec, cfg, frozen_steps=frozen_steps, frozen_encoder=frozen_encoder)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise _fail(weights_path, f"weights do not match policy.json's model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    for name, t in state.items():
        if tuple(t.shape) != tuple(expected[name].shape):
            raise _fail(weights_path, f"tensor {name!r} has shape {tuple(t.shape)}, model expects {tuple(expected[name].shape)}")
    model.load_state_dict(state)
    model.to(device).eval()
    return PolicyPackage(path=path, card=card, spec=spec, model=model, normalizers=norms)


def _denoising_chain(card_path: Path, card: dict, cfg: PolicyConfig) -> tuple[int, bool]:
    """(frozen_steps, frozen_encoder) of a card: (0, False) for version 1, checked ``denoising_chain`` for 2."""
    if card["format_version"] == 1:
        if "denoising_chain" in card:
            raise _fail(card_path, "denoising_chain needs format_version 2 (it is 1)")
        return 0, False
    chain = card.get("denoising_chain")
    if chain is None:
        return 0, False
    if not isinstance(chain, dict) or set(chain) != {"steps", "fine_tuned_steps", "frozen_steps", "frozen_encoder"}:
        raise _fail(card_path, "denoising_chain must hold exactly steps, fine_tuned_steps, frozen_steps, frozen_encoder")
    K, ft, frozen = chain["steps"], chain["fine_tuned_steps"], chain["frozen_steps"]
    if K != cfg.sample_steps:
        raise _fail(card_path, f"denoising_chain.steps is {K!r}, model.sample_steps is {cfg.sample_steps}")
    if not isinstance(ft, int) or not 1 <= ft < K:
        raise _fail(card_path, f"denoising_chain.fine_tuned_steps must be in [1, {K - 1}], got {ft!r}")
    if frozen != K - ft:
        raise _fail(card_path, f"denoising_chain.frozen_steps must be steps - fine_tuned_steps = {K - ft}, got {frozen!r}")
    if not isinstance(chain["frozen_encoder"], bool):
        raise _fail(card_path, f"denoising_chain.frozen_encoder must be true or false, got {chain['frozen_encoder']!r}")
    return frozen, chain["frozen_encoder"]


def make_random_policy(
    path: str | Path,
    spec: ObsSpec | None = None,
    task: str = "Lift",
    seed: int = 0,
    cfg: PolicyConfig | None = None,
    frozen_steps: int = 0,
    frozen_encoder: bool = False,
) -> Path:
    """A randomly initialised package of the real format (for tests of the ROS stack and exports).

    Normalisation is the identity on [-1, 1] for actions and a plausible Lift range for the proprio.
    ``frozen_steps`` > 0 writes a split chain (format version 2) whose frozen denoiser (and encoder, with
    ``frozen_encoder``) are perturbed copies of the others, like a fine-tuned package's; the other weights are
    the same as without them.
    """
    spec = spec or ObsSpec()
    cfg = cfg or PolicyConfig()
    torch.manual_seed(seed)
    model = DiffusionPolicy(spec, cfg)
    if frozen_steps:
        model.split_chain(cfg.sample_steps - frozen_steps, freeze_encoder=frozen_encoder)
        with torch.no_grad():
            for module in (model.frozen_denoiser, model.frozen_encoder):
                for p in module.parameters() if module is not None else ():
                    p.add_(0.5 * p.std().nan_to_num(0.0) * torch.randn_like(p))
    act = RangeNormalizer(min=-np.ones(cfg.action_dim, np.float32), max=np.ones(cfg.action_dim, np.float32))
    lo = np.full(spec.state_dim, -1.0, np.float32)
    hi = np.full(spec.state_dim, 1.0, np.float32)
    state = RangeNormalizer(min=lo, max=hi)
    extra = {"training": {"note": "randomly initialised, untrained (test fixture)", "seed": seed}}
    return save_policy(path, model, {"state": state, "action": act}, task=task, extra=extra)


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a success rate."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (max(0.0, centre - half), min(1.0, centre + half))
