"""Training windows over robomimic demos: (observation history, action chunk) pairs.

Every demo is loaded once into memory and turned into per-frame policy inputs with the one
observation builder's functions (``d2ppo.obs.frame_images`` / ``frame_state``), so training sees
exactly what deployment sees. Windows are then cut by indexing, with no per-item file reads or
image resizes.

Window for time t of a demo of length T (To = spec.n_obs_steps, Ta = horizon):
  observations  t-To+1 .. t      (indices < 0 repeat the demo's first frame, like
                                  ``ObservationBuilder`` right after ``reset()``)
  actions       t .. t+Ta-1      (indices >= T repeat the demo's last action)
"""

from __future__ import annotations

from collections.abc import Sequence

import h5py
import numpy as np
import torch

from d2ppo.data.robomimic_hdf5 import DatasetFormatError, list_demos, read_demo
from d2ppo.normalize import RangeNormalizer
from d2ppo.obs import ObsSpec, frame_images, frame_state


def _demo_images(spec: ObsSpec, obs: dict[str, np.ndarray]) -> np.ndarray:
    """uint8 [T, Ncam, 3, H, W] for a whole demo via ``frame_images`` (resizing each frame once, at load)."""
    T = next(iter(obs.values())).shape[0]
    out = np.empty((T, len(spec.camera_names), 3, spec.image_size, spec.image_size), dtype=np.uint8)
    keys = spec.image_keys
    for t in range(T):
        out[t] = frame_images(spec, {k: obs[k][t] for k in keys})
    return out


def _demo_states(spec: ObsSpec, obs: dict[str, np.ndarray]) -> np.ndarray:
    """float32 [T, Ds] via ``frame_state``."""
    T = next(iter(obs.values())).shape[0]
    if not spec.lowdim_keys:
        return np.zeros((T, 0), np.float32)
    return np.stack([frame_state(spec, {k: obs[k][t] for k in spec.lowdim_keys}) for t in range(T)])


class SequenceDataset(torch.utils.data.Dataset):
    """Windows over every time step of every demo in a robomimic file.

    Items: ``{"rgb": uint8 [To, Ncam, 3, H, W]`` (only with cameras), ``"state": float32 [To, Ds]``
    normalised to [-1, 1], ``"actions": float32 [Ta, Da]`` normalised to [-1, 1]``}``.

    Args:
        path: robomimic HDF5 file.
        spec: what the policy observes (cameras, image size, low-dim keys, To).
        horizon: action chunk length Ta.
        filter_key: "train" / "valid" to use ``mask/<key>``; None for all demos.
        normalizers: {"state": RangeNormalizer, "action": RangeNormalizer} to reuse (e.g. the
            training set's for the validation set); fitted on this data when None.
        max_demos: use only the first N demos (numeric order).
    """

    def __init__(
        self,
        path,
        spec: ObsSpec,
        horizon: int = 4,
        filter_key: str | None = None,
        normalizers: dict | None = None,
        max_demos: int | None = None,
    ):
        if horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {horizon}")
        self.path = str(path)
        self.spec = spec
        self.horizon = int(horizon)
        names = list_demos(path, filter_key)
        if max_demos is not None:
            names = names[:max_demos]
        if not names:
            raise DatasetFormatError(f"{path}: no demos (filter_key={filter_key!r})")
        self.demo_names = names
        keys = list(spec.image_keys) + list(spec.lowdim_keys)
        states, rgbs, actions, starts, lengths = [], [], [], [], []
        offset = 0
        with h5py.File(path, "r") as f:
            for name in names:
                demo = read_demo(f, name, obs_keys=keys, next_obs=False)
                states.append(_demo_states(spec, demo.obs))
                if spec.uses_images:
                    rgbs.append(_demo_images(spec, demo.obs))
                actions.append(demo.actions)
                starts.append(offset)
                lengths.append(len(demo))
                offset += len(demo)
        action_dims = {a.shape[1] for a in actions}
        if len(action_dims) != 1:
            raise DatasetFormatError(f"{path}: actions: demos differ in action dimension {sorted(action_dims)}")
        raw_state = np.concatenate(states).astype(np.float32)
        raw_actions = np.concatenate(actions).astype(np.float32)
        if normalizers is None:
            normalizers = {"state": RangeNormalizer.fit(raw_state), "action": RangeNormalizer.fit(raw_actions)}
        self.normalizers = normalizers
        # Everything below is contiguous over all demos; windows index into it. numpy for the
        # index arithmetic (torch's per-op overhead dominates single-item access), torch views out.
        self._state = normalizers["state"].normalize(raw_state).astype(np.float32)
        self._actions = normalizers["action"].normalize(raw_actions).astype(np.float32)
        self._rgb = np.concatenate(rgbs) if spec.uses_images else None
        self.action_dim = raw_actions.shape[1]
        # Per window t (global row index): its demo's first and last global rows.
        starts_a = np.asarray(starts)
        lengths_a = np.asarray(lengths)
        demo_of = np.repeat(np.arange(len(names)), lengths_a)
        self._first_np = starts_a[demo_of]
        self._last_np = starts_a[demo_of] + lengths_a[demo_of] - 1
        self._first = torch.from_numpy(self._first_np)  # torch views, for callers' tensor arithmetic
        self._last = torch.from_numpy(self._last_np)
        self._obs_offsets = np.arange(-spec.n_obs_steps + 1, 1)  # [To]
        self._act_offsets = np.arange(self.horizon)  # [Ta]

    def __len__(self) -> int:
        return int(self._first_np.shape[0])

    @property
    def num_demos(self) -> int:
        return len(self.demo_names)

    def _rows(self, idx) -> tuple[np.ndarray, np.ndarray]:
        t = np.asarray(idx)
        if t.ndim:
            t = t[:, None]  # [B, 1] broadcasts against the [To] / [Ta] offsets
        obs_idx = np.maximum(t + self._obs_offsets, self._first_np[t])
        act_idx = np.minimum(t + self._act_offsets, self._last_np[t])
        return obs_idx, act_idx

    def window_indices(self, idx) -> tuple[torch.Tensor, torch.Tensor]:
        """Global (observation [..., To], action [..., Ta]) row indices of window(s) ``idx``, padding applied."""
        idx = idx.numpy() if isinstance(idx, torch.Tensor) else idx
        obs_idx, act_idx = self._rows(idx)
        return torch.from_numpy(obs_idx), torch.from_numpy(act_idx)

    def __getitem__(self, idx) -> dict[str, torch.Tensor]:
        if isinstance(idx, torch.Tensor):
            idx = idx.numpy()
        obs_idx, act_idx = self._rows(idx)
        item = {"state": torch.from_numpy(self._state[obs_idx]), "actions": torch.from_numpy(self._actions[act_idx])}
        if self._rgb is not None:
            item["rgb"] = torch.from_numpy(self._rgb[obs_idx])
        return item

    def get_batch(self, idx: Sequence[int] | np.ndarray | torch.Tensor) -> dict[str, torch.Tensor]:
        """Many windows at once ([B, ...] tensors): faster than a DataLoader over ``__getitem__``."""
        idx = idx.numpy() if isinstance(idx, torch.Tensor) else np.asarray(idx)
        return self[idx.reshape(-1)]

    def state_dict_normalizers(self) -> dict:
        """{"state": {...}, "action": {...}} JSON-able, as stored in policy.json."""
        return {k: v.to_dict() for k, v in self.normalizers.items()}
