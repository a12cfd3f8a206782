"""Several chunked robosuite envs stepped in parallel worker processes (pipes), with automatic reset.

    venv = VectorChunkedEnv(chunked_env_configs(package, n_envs=2, seed=0), workers=2)
    obs = venv.reset()                                   # {"state": [N, To, Ds], ("rgb": [N, To, Ncam, 3, H, W])}
    obs, reward, terminated, truncated, infos = venv.step(chunks)   # chunks [N, Ta, Da] env actions

Env i is seeded ``seed + i`` (``make_env(seed=...)``, soft resets), so a run is reproducible for a fixed
number of envs, whatever the number of workers. Envs are split over ``workers`` processes (each steps
its envs one after the other); ``workers=0`` runs them in this process (tests, debugging). Simulation is
single-threaded, so on the 2-core dev machine 2 workers are the useful maximum (see d2ppo.bench.envs).

When an episode ends, the env is reset at once: the returned obs is the first obs of the next episode and
``infos[i]["final_obs"]`` holds the last obs of the finished one (for bootstrapping a truncated episode).
"""

from __future__ import annotations

import multiprocessing as mp
import traceback
from collections.abc import Sequence

import numpy as np

from d2ppo.envs.chunked import ChunkedEnv, ChunkedEnvConfig, stack_obs


class _EnvGroup:
    """The envs of one worker: step all, auto-reset the finished ones."""

    def __init__(self, configs: Sequence[ChunkedEnvConfig]):
        self.envs = [ChunkedEnv(c) for c in configs]

    def reset(self, seeds: Sequence[int | None]) -> list[dict]:
        return [env.reset(seed) for env, seed in zip(self.envs, seeds)]

    def step(self, chunks: np.ndarray) -> list[tuple]:
        out = []
        for env, chunk in zip(self.envs, chunks):
            obs, reward, terminated, truncated, info = env.step(chunk)
            if terminated or truncated:
                info["final_obs"] = obs
                obs = env.reset()
            out.append((obs, reward, terminated, truncated, info))
        return out

    def env_steps(self) -> int:
        return sum(e.total_env_steps for e in self.envs)

    def close(self) -> None:
        for e in self.envs:
            e.close()


def _worker(conn, configs: Sequence[ChunkedEnvConfig]) -> None:
    group = None
    try:
        group = _EnvGroup(configs)
        conn.send(("ok", None))
        while True:
            cmd, arg = conn.recv()
            if cmd == "close":
                break
            result = getattr(group, cmd)(*arg)
            conn.send(("ok", result))
    except (EOFError, KeyboardInterrupt):
        pass
    except Exception:  # report to the parent instead of dying silently
        try:
            conn.send(("error", traceback.format_exc()))
        except (BrokenPipeError, OSError):
            pass
    finally:
        if group is not None:
            group.close()
        conn.close()


class VectorChunkedEnv:
    """N ChunkedEnvs; batched reset/step. Use as a context manager or call close()."""

    def __init__(self, configs: Sequence[ChunkedEnvConfig], workers: int = 1, start_method: str = "spawn"):
        if not configs:
            raise ValueError("VectorChunkedEnv needs at least one env config")
        self.num_envs = len(configs)
        self.workers = max(0, min(workers, self.num_envs))
        self._closed = False
        if self.workers == 0:
            self._local = _EnvGroup(configs)
            self._slices = [slice(0, self.num_envs)]
            return
        self._local = None
        # Contiguous blocks of envs per worker: env i always lives in the same worker.
        bounds = np.linspace(0, self.num_envs, self.workers + 1).round().astype(int)
        self._slices = [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]
        ctx = mp.get_context(start_method)  # spawn: no forked torch/OpenGL state in the workers
        self._conns, self._procs = [], []
        for sl in self._slices:
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker, args=(child, list(configs[sl])), daemon=True)
            proc.start()
            child.close()
            self._conns.append(parent)
            self._procs.append(proc)
        for i in range(self.workers):
            self._receive(i)

    # ------------------------------------------------------------------ plumbing
    def _receive(self, i: int):
        try:
            status, payload = self._conns[i].recv()
        except EOFError:
            self.close()
            raise RuntimeError(f"env worker {i} (pid {self._procs[i].pid}) died") from None
        if status == "error":
            self.close()
            raise RuntimeError(f"env worker {i} failed:\n{payload}")
        return payload

    def _call_all(self, cmd: str, args_per_worker: Sequence[tuple]) -> list:
        if self._closed:
            raise RuntimeError("VectorChunkedEnv is closed")
        if self._local is not None:
            return [getattr(self._local, cmd)(*args_per_worker[0])]
        for conn, args in zip(self._conns, args_per_worker):
            conn.send((cmd, args))
        return [self._receive(i) for i in range(self.workers)]

    # ------------------------------------------------------------------ API
    def reset(self, seeds: Sequence[int | None] | None = None) -> dict[str, np.ndarray]:
        """Reset every env; ``seeds[i]`` fixes env i's next placement (None: its own stream)."""
        seeds = list(seeds) if seeds is not None else [None] * self.num_envs
        if len(seeds) != self.num_envs:
            raise ValueError(f"expected {self.num_envs} seeds, got {len(seeds)}")
        parts = self._call_all("reset", [(seeds[sl],) for sl in self._slices])
        return stack_obs([o for part in parts for o in part])

    def step(self, chunks: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray, list[dict]]:
        """chunks [N, Ta, Da] env actions -> (obs, reward [N], terminated [N], truncated [N], infos)."""
        chunks = np.asarray(chunks, dtype=np.float32)
        if chunks.shape[0] != self.num_envs:
            raise ValueError(f"expected {self.num_envs} chunks, got array of shape {chunks.shape}")
        parts = self._call_all("step", [(chunks[sl],) for sl in self._slices])
        results = [r for part in parts for r in part]
        obs = stack_obs([r[0] for r in results])
        reward = np.array([r[1] for r in results], dtype=np.float32)
        terminated = np.array([r[2] for r in results], dtype=bool)
        truncated = np.array([r[3] for r in results], dtype=bool)
        return obs, reward, terminated, truncated, [r[4] for r in results]

    def env_steps(self) -> int:
        """Env (control) steps executed by all envs since construction."""
        return int(sum(self._call_all("env_steps", [()] * max(1, self.workers))))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._local is not None:
            self._local.close()
            return
        for conn in self._conns:
            try:
                conn.send(("close", None))
            except (BrokenPipeError, OSError):
                pass
        for proc in self._procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)
        for conn in self._conns:
            conn.close()

    def __enter__(self) -> VectorChunkedEnv:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
