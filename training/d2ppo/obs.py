"""The one observation builder: raw observations (robomimic key names) -> policy input.

Used by the training dataset, the robosuite env wrapper, the sim node and the inference node, so
sim, real and training see identical inputs.

Raw observation dict (robomimic key names):
  ``<camera>_image``        uint8 [H, W, 3] upright RGB (any size; resized to the spec's size)
  ``robot0_eef_pos``        float [3] metres, in the training data's world frame
  ``robot0_eef_quat``       float [4] (x, y, z, w)
  ``robot0_gripper_qpos``   float [2] metres (finger joint positions)
Policy input (what ``ObservationBuilder.build`` returns, batch dim not included):
  ``rgb``    uint8  [To, Ncam, 3, H, W]   (absent when the spec has no cameras)
  ``state``  float32 [To, Ds]             normalised to [-1, 1]
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

import numpy as np

from d2ppo.normalize import RangeNormalizer

PROPRIO_KEYS: tuple[str, ...] = ("robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos")
PROPRIO_DIMS: dict[str, int] = {"robot0_eef_pos": 3, "robot0_eef_quat": 4, "robot0_gripper_qpos": 2}


def image_key(camera: str) -> str:
    """robomimic's dataset key for a camera's images."""
    return f"{camera}_image"


@dataclass
class ObsSpec:
    """What a policy observes. Stored in policy.json under ``obs``."""

    camera_names: tuple[str, ...] = ("robot0_eye_in_hand",)
    image_size: int = 96  # square images, pixels
    lowdim_keys: tuple[str, ...] = PROPRIO_KEYS
    lowdim_dims: tuple[int, ...] = field(default_factory=lambda: tuple(PROPRIO_DIMS[k] for k in PROPRIO_KEYS))
    n_obs_steps: int = 1  # observation history To

    def __post_init__(self):
        self.camera_names = tuple(self.camera_names)
        self.lowdim_keys = tuple(self.lowdim_keys)
        self.lowdim_dims = tuple(int(d) for d in self.lowdim_dims)
        if len(self.lowdim_keys) != len(self.lowdim_dims):
            raise ValueError(f"lowdim_keys {self.lowdim_keys} and lowdim_dims {self.lowdim_dims} differ in length")
        if self.n_obs_steps < 1:
            raise ValueError(f"n_obs_steps must be >= 1, got {self.n_obs_steps}")

    @property
    def state_dim(self) -> int:
        return int(sum(self.lowdim_dims))

    @property
    def image_keys(self) -> tuple[str, ...]:
        return tuple(image_key(c) for c in self.camera_names)

    @property
    def uses_images(self) -> bool:
        return len(self.camera_names) > 0

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: Mapping) -> ObsSpec:
        return cls(**{k: d[k] for k in ("camera_names", "image_size", "lowdim_keys", "lowdim_dims", "n_obs_steps") if k in d})


def resize_image(img: np.ndarray, size: int) -> np.ndarray:
    """uint8 [H, W, 3] -> uint8 [size, size, 3]; area interpolation when shrinking."""
    if img.shape[0] == size and img.shape[1] == size:
        return img
    import cv2

    interp = cv2.INTER_AREA if img.shape[0] > size else cv2.INTER_LINEAR
    return cv2.resize(img, (size, size), interpolation=interp)


def frame_images(spec: ObsSpec, raw: Mapping[str, np.ndarray]) -> np.ndarray:
    """One time step's images: uint8 [Ncam, 3, H, W], from ``<camera>_image`` HWC arrays."""
    out = np.empty((len(spec.camera_names), 3, spec.image_size, spec.image_size), dtype=np.uint8)
    for i, key in enumerate(spec.image_keys):
        if key not in raw:
            raise KeyError(f"observation is missing camera image {key!r}")
        img = np.asarray(raw[key])
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise ValueError(f"{key}: expected uint8 [H, W, 3], got {img.dtype} {img.shape}")
        out[i] = resize_image(img, spec.image_size).transpose(2, 0, 1)
    return out


def frame_state(spec: ObsSpec, raw: Mapping[str, np.ndarray]) -> np.ndarray:
    """One time step's proprio, concatenated in spec order (unnormalised): float32 [Ds]."""
    parts = []
    for key, dim in zip(spec.lowdim_keys, spec.lowdim_dims):
        if key not in raw:
            raise KeyError(f"observation is missing low-dim key {key!r}")
        v = np.asarray(raw[key], dtype=np.float32).reshape(-1)
        if v.shape[0] != dim:
            raise ValueError(f"{key}: expected {dim} values, got {v.shape[0]}")
        parts.append(v)
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)


class ObservationBuilder:
    """Keeps the last ``n_obs_steps`` frames and builds the policy input.

    History is padded by repeating the first frame after ``reset()``, as in training windows
    that start at the first step of a demo.
    """

    def __init__(self, spec: ObsSpec, state_normalizer: RangeNormalizer | None):
        self.spec = spec
        self.state_normalizer = state_normalizer
        self._rgb: deque[np.ndarray] = deque(maxlen=spec.n_obs_steps)
        self._state: deque[np.ndarray] = deque(maxlen=spec.n_obs_steps)

    def reset(self) -> None:
        self._rgb.clear()
        self._state.clear()

    def add(self, raw: Mapping[str, np.ndarray]) -> None:
        """Append one time step's raw observation (robomimic key names)."""
        state = frame_state(self.spec, raw)
        if not np.all(np.isfinite(state)):
            raise ValueError("observation state contains NaN or inf")
        if self.state_normalizer is not None:
            state = self.state_normalizer.normalize(state)
        if self.spec.uses_images:
            self._rgb.append(frame_images(self.spec, raw))
        self._state.append(state.astype(np.float32))

    @property
    def ready(self) -> bool:
        return len(self._state) > 0

    def build(self) -> dict[str, np.ndarray]:
        """Policy input for the newest frame: {"rgb": [To, Ncam, 3, H, W], "state": [To, Ds]}."""
        if not self.ready:
            raise RuntimeError("ObservationBuilder.build() called before any observation was added")
        pad = self.spec.n_obs_steps - len(self._state)
        states = [self._state[0]] * pad + list(self._state)
        out = {"state": np.stack(states).astype(np.float32)}
        if self.spec.uses_images:
            rgbs = [self._rgb[0]] * pad + list(self._rgb)
            out["rgb"] = np.stack(rgbs)
        return out

    def __call__(self, raw: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Add one frame and build."""
        self.add(raw)
        return self.build()
