"""robomimic's HDF5 demonstration format: reading, validating and writing it directly.

Layout (the same as robomimic's official datasets, so those load unchanged)::

    data/                          attrs: env_args (JSON string), total (sum of num_samples)
      demo_0/                      attrs: num_samples (T), model_file (MJCF XML, optional)
        obs/<key>                  [T, ...]  e.g. robot0_eef_pos [T, 3], agentview_image [T, H, W, 3] uint8 upright
        next_obs/<key>             [T, ...]  observation after each action (optional in old files)
        actions                    [T, Da]   float, robosuite OSC_POSE delta convention in [-1, 1]
        rewards                    [T]
        dones                      [T]
        states                     [T, S]    flattened MuJoCo sim state (optional)
    mask/train, mask/valid         arrays of demo names as bytes (b"demo_0", ...)

The robomimic package itself is not needed (DESIGN.md: it drags in a large CUDA torch).
"""

from __future__ import annotations

import json
import re
import signal
import time
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

# Images compress ~5-10x with gzip level 1 at little CPU cost; readers decompress transparently
# (gzip is built into every HDF5, unlike lzf). Low-dim arrays stay uncompressed.
IMAGE_COMPRESSION = {"compression": "gzip", "compression_opts": 1}


class DatasetFormatError(ValueError):
    """A demonstration file that does not follow robomimic's layout; the message names file, key and problem."""


@dataclass
class Demo:
    """One demonstration, arrays in memory.

    obs: key -> [T, ...] (images uint8 [T, H, W, 3] upright); actions: float32 [T, Da];
    rewards, dones: [T]; states: [T, S] or None.
    """

    name: str
    obs: dict[str, np.ndarray]
    actions: np.ndarray
    rewards: np.ndarray
    dones: np.ndarray
    states: np.ndarray | None = None
    next_obs: dict[str, np.ndarray] = field(default_factory=dict)
    attrs: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.actions.shape[0])


def _demo_index(name: str) -> int:
    m = re.fullmatch(r"demo_(\d+)", name)
    return int(m.group(1)) if m else -1


def _sort_demos(names) -> list[str]:
    """Numeric order (demo_2 before demo_10); names without a number go last, alphabetically."""
    return sorted(names, key=lambda n: (_demo_index(n) < 0, _demo_index(n), n))


@contextmanager
def _opened(path_or_h5, mode: str = "r"):
    """Yield (h5py.File, display name) for a path or an already open file."""
    if isinstance(path_or_h5, h5py.File | h5py.Group):
        yield path_or_h5, Path(path_or_h5.file.filename).name
        return
    path = Path(path_or_h5)
    try:
        f = h5py.File(path, mode)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{path}: no such file") from e
    except OSError as e:
        raise DatasetFormatError(f"{path.name}: not a readable HDF5 file ({e})") from e
    try:
        yield f, path.name
    finally:
        f.close()


def _attr_str(value) -> str:
    return value.decode() if isinstance(value, bytes | np.bytes_) else str(value)


def read_env_args(path) -> dict:
    """``data.attrs["env_args"]`` parsed from JSON."""
    with _opened(path) as (f, fname):
        if "data" not in f:
            raise DatasetFormatError(f"{fname}: data: missing group 'data'")
        if "env_args" not in f["data"].attrs:
            raise DatasetFormatError(
                f"{fname}: data.attrs[env_args]: missing (robomimic stores the env description here)"
            )
        raw = _attr_str(f["data"].attrs["env_args"])
    try:
        env_args = json.loads(raw)
    except json.JSONDecodeError as e:
        raise DatasetFormatError(f"{fname}: data.attrs[env_args]: not valid JSON ({e})") from e
    if not isinstance(env_args, dict) or "env_name" not in env_args:
        raise DatasetFormatError(f"{fname}: data.attrs[env_args]: expected a JSON object with 'env_name'")
    return env_args


def list_demos(path, filter_key: str | None = None) -> list[str]:
    """Demo names sorted numerically; with ``filter_key`` ("train", "valid", ...) those in ``mask/<filter_key>``."""
    with _opened(path) as (f, fname):
        if "data" not in f:
            raise DatasetFormatError(f"{fname}: data: missing group 'data'")
        if filter_key is None:
            return _sort_demos(f["data"].keys())
        mask_key = f"mask/{filter_key}"
        if mask_key not in f:
            have = sorted(f["mask"].keys()) if "mask" in f else []
            raise DatasetFormatError(f"{fname}: {mask_key}: missing filter key (file has masks {have})")
        names = [_attr_str(n) for n in np.asarray(f[mask_key])]
        missing = [n for n in names if n not in f["data"]]
        if missing:
            raise DatasetFormatError(f"{fname}: {mask_key}: names demos not in data: {missing[:5]}")
        return _sort_demos(names)


def read_demo(path_or_h5, name: str, obs_keys: Sequence[str] | None = None, *, next_obs: bool = True) -> Demo:
    """Load one demo into memory.

    Args:
        path_or_h5: file path or an open h5py.File (to read many demos without reopening).
        name: "demo_N".
        obs_keys: observation keys to load (None -> all). Missing keys raise DatasetFormatError.
        next_obs: also load ``next_obs`` (training windows do not need it).
    """
    with _opened(path_or_h5) as (f, fname):
        key = f"data/{name}"
        if key not in f:
            raise DatasetFormatError(f"{fname}: {key}: no such demo")
        g = f[key]
        if "obs" not in g:
            raise DatasetFormatError(f"{fname}: {key}/obs: missing group")
        keys = list(obs_keys) if obs_keys is not None else sorted(g["obs"].keys())
        groups = ("obs", "next_obs") if next_obs else ("obs",)
        # Only the loaded arrays are checked here (validate_file checks all of them).
        actions = _check_demo(g, fname, key, keys, None, check_keys=keys, groups=groups)
        obs = {k: np.asarray(g["obs"][k]) for k in keys}
        nobs = {}
        if next_obs and "next_obs" in g:
            nobs = {k: np.asarray(g["next_obs"][k]) for k in keys if k in g["next_obs"]}
        T = actions.shape[0]
        rewards = np.asarray(g["rewards"], dtype=np.float32) if "rewards" in g else np.zeros(T, np.float32)
        dones = np.asarray(g["dones"]) if "dones" in g else np.zeros(T, np.int64)
        states = np.asarray(g["states"]) if "states" in g else None
        attrs = {k: (_attr_str(v) if isinstance(v, bytes | str) else v) for k, v in g.attrs.items()}
        return Demo(name, obs, actions.astype(np.float32), rewards, dones, states, nobs, attrs)


def _check_demo(
    g: h5py.Group,
    fname: str,
    key: str,
    obs_keys: Sequence[str],
    action_dim: int | None,
    check_keys: Sequence[str] | None = None,
    groups: Sequence[str] = ("obs", "next_obs"),
) -> np.ndarray:
    """Raise DatasetFormatError for the first problem in one demo group; returns its actions [T, Da].

    ``obs_keys`` must exist; ``check_keys`` (None: all) in ``groups`` get their length and image
    layout checked.
    """
    if "actions" not in g:
        raise DatasetFormatError(f"{fname}: {key}/actions: missing")
    actions = g["actions"]
    if actions.ndim != 2 or (action_dim is not None and actions.shape[1] != action_dim):
        want = f"[T, {action_dim}]" if action_dim is not None else "[T, Da]"
        raise DatasetFormatError(f"{fname}: {key}/actions: expected 2-D {want}, got shape {actions.shape}")
    T = actions.shape[0]
    if T == 0:
        raise DatasetFormatError(f"{fname}: {key}/actions: empty demo (0 steps)")
    a = np.asarray(actions)
    if not np.all(np.isfinite(a)):
        bad = np.argwhere(~np.isfinite(a))[0]
        raise DatasetFormatError(f"{fname}: {key}/actions: non-finite value {a[tuple(bad)]} at step {bad[0]}")
    if "obs" not in g:
        raise DatasetFormatError(f"{fname}: {key}/obs: missing group")
    for k in obs_keys:
        if k not in g["obs"]:
            raise DatasetFormatError(f"{fname}: {key}/obs/{k}: missing (demo has {sorted(g['obs'].keys())})")
    for group_name in groups:
        if group_name not in g:
            continue
        sub = g[group_name]
        for k in sub.keys() if check_keys is None else [k for k in check_keys if k in sub]:
            ds = sub[k]
            if ds.ndim < 1 or ds.shape[0] != T:
                raise DatasetFormatError(
                    f"{fname}: {key}/{group_name}/{k}: length {ds.shape[0] if ds.ndim else 'scalar'} "
                    f"differs from actions length {T}"
                )
            if k.endswith("_image") and (ds.ndim != 4 or ds.shape[-1] != 3 or ds.dtype != np.uint8):
                raise DatasetFormatError(
                    f"{fname}: {key}/{group_name}/{k}: expected uint8 [T, H, W, 3], got {ds.dtype} {ds.shape}"
                )
    for k in ("rewards", "dones"):
        if k in g and g[k].shape != (T,):
            raise DatasetFormatError(f"{fname}: {key}/{k}: expected shape ({T},), got {g[k].shape}")
    if "states" in g and (g["states"].ndim != 2 or g["states"].shape[0] != T):
        raise DatasetFormatError(f"{fname}: {key}/states: expected [{T}, S], got shape {g['states'].shape}")
    if "num_samples" in g.attrs and int(g.attrs["num_samples"]) != T:
        raise DatasetFormatError(f"{fname}: {key}.attrs[num_samples]: {int(g.attrs['num_samples'])} != {T} actions")
    return a


def validate_file(path, obs_keys: Sequence[str] = (), action_dim: int | None = None) -> None:
    """Check a whole file; raise DatasetFormatError naming file, key and problem for the first fault.

    Checks: ``data`` group and ``env_args`` present, at least one demo, every demo has 2-D finite
    ``actions`` (of ``action_dim`` columns when given), every ``obs_keys`` key, and obs/next_obs
    arrays as long as its actions; masks name existing demos.
    """
    read_env_args(path)
    with _opened(path) as (f, fname):
        demos = _sort_demos(f["data"].keys())
        if not demos:
            raise DatasetFormatError(f"{fname}: data: no demos")
        for name in demos:
            if not isinstance(f["data"][name], h5py.Group):
                raise DatasetFormatError(f"{fname}: data/{name}: expected a demo group")
            _check_demo(f["data"][name], fname, f"data/{name}", obs_keys, action_dim)
        if "mask" in f:
            for mk, ds in f["mask"].items():
                missing = [n for n in (_attr_str(x) for x in np.asarray(ds)) if n not in f["data"]]
                if missing:
                    raise DatasetFormatError(f"{fname}: mask/{mk}: names demos not in data: {missing[:5]}")


def _open_for_write(path: Path, mode: str, timeout_s: float = 60.0) -> h5py.File:
    """h5py.File(path, mode), retrying while another process holds HDF5's file lock (a reader
    opened the file between two episodes); gives up after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    delay = 0.05
    while True:
        try:
            return h5py.File(path, mode)
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 1.0)


@contextmanager
def _signals_deferred():
    """Hold SIGINT/SIGTERM/SIGHUP while a demo is being written, so Ctrl-C lands between demos.

    (SIGKILL cannot be held; the write window is kept short by preparing arrays before opening.)
    """
    sigs = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
    try:
        old = signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
    except (AttributeError, ValueError, OSError):  # not the main thread / not POSIX
        yield
        return
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


class RobomimicWriter:
    """Writes demos one episode at a time, durably.

    Each ``add_demo`` opens the file, writes one demo, updates ``data.attrs["total"]``, flushes and
    closes it again, so a process killed between episodes (a crashed demo recorder, Ctrl-C) leaves
    a readable file holding every finished episode.
    """

    def __init__(self, path, env_args: Mapping, append: bool = False):
        self.path = Path(path)
        self.env_args = dict(env_args)
        self._closed = False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if append and self.path.exists():
            with _open_for_write(self.path, "a") as f:
                data = f.require_group("data")
                if "env_args" not in data.attrs:
                    data.attrs["env_args"] = json.dumps(self.env_args)
                self._next_index = 1 + max((_demo_index(n) for n in data.keys()), default=-1)
                data.attrs["total"] = int(sum(int(data[n].attrs.get("num_samples", 0)) for n in data.keys()))
        else:
            with _open_for_write(self.path, "w") as f:
                data = f.create_group("data")
                data.attrs["env_args"] = json.dumps(self.env_args)
                data.attrs["total"] = 0
            self._next_index = 0

    def add_demo(
        self,
        obs: Mapping[str, np.ndarray],
        actions,
        rewards=None,
        dones=None,
        states=None,
        next_obs: Mapping[str, np.ndarray] | None = None,
        model_file: str | None = None,
        attrs: Mapping | None = None,
    ) -> str:
        """Append one demo; returns its name ("demo_N").

        Args:
            obs: key -> [T, ...] per-step observations (images uint8 [T, H, W, 3] upright).
            actions: [T, Da] actions.
            rewards, dones: [T] (zeros / last step done when None).
            states: [T, S] flattened sim states, or None.
            next_obs: key -> [T, ...] observations after each action, or None.
            model_file: MJCF XML of the sim model the demo ran in.
            attrs: extra demo attributes (JSON-able scalars/strings).
        """
        if self._closed:
            raise RuntimeError(f"{self.path}: writer is closed")
        actions = np.asarray(actions, dtype=np.float32)
        name = f"demo_{self._next_index}"
        key = f"data/{name}"
        if actions.ndim != 2:
            raise DatasetFormatError(
                f"{self.path.name}: {key}/actions: expected 2-D [T, Da], got shape {actions.shape}"
            )
        T = actions.shape[0]
        if T == 0:
            raise DatasetFormatError(f"{self.path.name}: {key}/actions: empty demo (0 steps)")
        if not np.all(np.isfinite(actions)):
            raise DatasetFormatError(f"{self.path.name}: {key}/actions: non-finite values")
        rewards = np.zeros(T, np.float64) if rewards is None else np.asarray(rewards, dtype=np.float64).reshape(-1)
        if dones is None:
            dones = np.zeros(T, np.int64)
            dones[-1] = 1
        dones = np.asarray(dones, dtype=np.int64).reshape(-1)
        groups = {"obs": self._stack_obs(obs, T, key + "/obs")}
        if next_obs is not None:
            groups["next_obs"] = self._stack_obs(next_obs, T, key + "/next_obs")
        for k, v in (("rewards", rewards), ("dones", dones)):
            if v.shape != (T,):
                raise DatasetFormatError(f"{self.path.name}: {key}/{k}: expected shape ({T},), got {v.shape}")
        if states is not None:
            states = np.asarray(states, dtype=np.float64)
            if states.ndim != 2 or states.shape[0] != T:
                raise DatasetFormatError(f"{self.path.name}: {key}/states: expected [{T}, S], got {states.shape}")

        with _signals_deferred(), _open_for_write(self.path, "a") as f:
            g = f["data"].create_group(name)
            for gname, arrays in groups.items():
                sub = g.create_group(gname)
                for k, v in arrays.items():
                    opts = IMAGE_COMPRESSION if k.endswith("_image") else {}
                    sub.create_dataset(k, data=v, **opts)
            g.create_dataset("actions", data=actions)
            g.create_dataset("rewards", data=rewards)
            g.create_dataset("dones", data=dones)
            if states is not None:
                g.create_dataset("states", data=states)
            g.attrs["num_samples"] = T
            if model_file is not None:
                g.attrs["model_file"] = model_file
            for k, v in (attrs or {}).items():
                g.attrs[k] = v
            f["data"].attrs["total"] = int(f["data"].attrs.get("total", 0)) + T
            f.flush()
        self._next_index += 1
        return name

    def _stack_obs(self, obs: Mapping[str, np.ndarray], T: int, where: str) -> dict[str, np.ndarray]:
        out = {}
        for k, v in obs.items():
            if k.endswith("_image"):
                arr = np.asarray(v)
                if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 3:
                    raise DatasetFormatError(
                        f"{self.path.name}: {where}/{k}: expected uint8 [T, H, W, 3], got {arr.dtype} {arr.shape}"
                    )
            else:
                arr = np.asarray(v, dtype=np.float64)
            if arr.ndim < 1 or arr.shape[0] != T:
                raise DatasetFormatError(
                    f"{self.path.name}: {where}/{k}: length {arr.shape[:1]} differs from actions length {T}"
                )
            out[k] = arr
        return out

    def write_masks(self, valid_fraction: float = 0.1, seed: int = 0) -> None:
        """Random train/valid split of all demos into ``mask/train`` and ``mask/valid`` (replacing old masks).

        At least one demo goes to valid when there are two or more demos.
        """
        with _signals_deferred(), _open_for_write(self.path, "a") as f:
            names = _sort_demos(f["data"].keys())
            n_valid = int(round(len(names) * valid_fraction))
            if len(names) >= 2 and valid_fraction > 0:
                n_valid = min(max(n_valid, 1), len(names) - 1)
            order = np.random.default_rng(seed).permutation(len(names))
            valid = set(names[i] for i in order[:n_valid])
            split = {"train": [n for n in names if n not in valid], "valid": [n for n in names if n in valid]}
            mask = f.require_group("mask")
            for k, lst in split.items():
                if k in mask:
                    del mask[k]
                mask.create_dataset(k, data=np.array(lst, dtype="S") if lst else np.zeros(0, dtype="S8"))
            f.flush()

    def close(self) -> None:
        self._closed = True

    def __enter__(self) -> RobomimicWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __len__(self) -> int:
        return self._next_index
