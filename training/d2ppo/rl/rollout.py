"""Env-level MDP of PPO fine-tuning: rollouts over chunk steps, running reward scaling, GAE.

Shared by the diffusion (two-layer MDP) and the Gaussian agents. An *agent* has
``act(obs) -> (env actions [N, Ta, Da], record {name: [N, ...]})`` (the record includes ``value`` [N])
and ``value(obs) -> [N]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def compute_gae(
    rewards: np.ndarray, values: np.ndarray, dones: np.ndarray, next_value: np.ndarray, gamma: float, lam: float
) -> tuple[np.ndarray, np.ndarray]:
    """Generalised advantage estimation over env (chunk) steps.

    rewards, values, dones: [T, N]; dones[t] = the episode ended with step t (no bootstrap from t+1);
    next_value: [N] = V(s_T) of the obs after the last step. Returns (advantages, returns) [T, N]:
        δ_t = r_t + γ V(s_{t+1}) (1 - d_t) - V(s_t),   Â_t = δ_t + γ λ (1 - d_t) Â_{t+1},   R_t = Â_t + V(s_t)
    """
    T = rewards.shape[0]
    adv = np.zeros_like(rewards, dtype=np.float64)
    last = np.zeros(rewards.shape[1:], dtype=np.float64)
    for t in reversed(range(T)):
        v_next = next_value if t == T - 1 else values[t + 1]
        nonterminal = 1.0 - dones[t].astype(np.float64)
        delta = rewards[t] + gamma * v_next * nonterminal - values[t]
        last = delta + gamma * lam * nonterminal * last
        adv[t] = last
    adv = adv.astype(np.float32)
    return adv, (adv + values).astype(np.float32)


class RunningRewardScaler:
    """Divides rewards by the running std of the discounted return (as DPPO / OpenAI baselines).

    Keeps sparse 0/1 rewards at a scale the critic's learning rate suits, whatever the success rate.
    """

    def __init__(self, num_envs: int, gamma: float, clip: float = 10.0, eps: float = 1e-8):
        self.gamma, self.clip, self.eps = gamma, clip, eps
        self.ret = np.zeros(num_envs)
        self.count, self.mean, self.var = 1e-4, 0.0, 1.0

    def reset(self, envs: np.ndarray | None = None) -> None:
        """Forget the running return of envs that start a new episode outside a rollout (a forced reset, e.g.
        after an evaluation left them mid-episode): boolean mask or indices [N]; None = all envs. Episodes that
        end inside a rollout are handled by ``__call__``'s dones."""
        if envs is None:
            self.ret[:] = 0.0
        else:
            self.ret[np.asarray(envs)] = 0.0

    def _update(self, x: np.ndarray) -> None:  # parallel-variance merge (Chan et al.)
        b_mean, b_var, b_n = float(x.mean()), float(x.var()), x.size
        delta, tot = b_mean - self.mean, self.count + b_n
        m2 = self.var * self.count + b_var * b_n + delta**2 * self.count * b_n / tot
        self.mean, self.var, self.count = self.mean + delta * b_n / tot, m2 / tot, tot

    def __call__(self, rewards: np.ndarray, dones: np.ndarray) -> np.ndarray:
        """rewards, dones [T, N] of one rollout (in time order) -> scaled rewards [T, N]."""
        rets = np.empty_like(rewards, dtype=np.float64)
        for t in range(rewards.shape[0]):
            self.ret = self.ret * self.gamma + rewards[t]
            rets[t] = self.ret
            self.ret = np.where(dones[t], 0.0, self.ret)
        self._update(rets)
        return np.clip(rewards / np.sqrt(self.var + self.eps), -self.clip, self.clip).astype(np.float32)

    def state_dict(self) -> dict:
        return {"count": self.count, "mean": self.mean, "var": self.var}


@dataclass
class Rollout:
    """One iteration's data, time-major [T, N, ...]."""

    obs: dict[str, np.ndarray]
    records: dict[str, np.ndarray]
    rewards: np.ndarray  # raw env rewards (0/1 per chunk)
    dones: np.ndarray  # terminated or truncated
    truncated: np.ndarray
    bootstrap: np.ndarray  # V(final obs) of truncated steps (0 elsewhere), raw value units
    next_obs: dict[str, np.ndarray]
    env_steps: int  # env (control) steps executed
    episodes: list[dict] = field(default_factory=list)  # {"success", "env_steps"} of finished episodes

    def flat(self) -> dict[str, np.ndarray]:
        """Obs and records flattened to [T·N, ...] (the update's batch, before advantages are added)."""
        out = {k: v.reshape(-1, *v.shape[2:]) for k, v in self.obs.items()}
        out.update({k: v.reshape(-1, *v.shape[2:]) for k, v in self.records.items()})
        return out


def collect(agent, venv, obs: dict[str, np.ndarray], n_steps: int) -> Rollout:
    """Run ``n_steps`` chunk steps in every env of ``venv`` from ``obs`` (auto-reset envs)."""
    obs_buf: dict[str, list] = {k: [] for k in obs}
    rec_buf: dict[str, list] = {}
    rewards, dones, truncs, boots, episodes = [], [], [], [], []
    env_steps = 0
    for _ in range(n_steps):
        actions, record = agent.act(obs)
        next_obs, reward, terminated, truncated, infos = venv.step(actions)
        boot = np.zeros(venv.num_envs, np.float32)
        if truncated.any():
            # A time limit is not a terminal state: bootstrap with V(final obs) (Pardo et al. 2018).
            idx = np.flatnonzero(truncated)
            final = {k: np.stack([infos[i]["final_obs"][k] for i in idx]) for k in next_obs}
            boot[idx] = agent.value(final)
        for k in obs_buf:
            obs_buf[k].append(obs[k])
        for k, v in record.items():
            rec_buf.setdefault(k, []).append(v)
        rewards.append(reward)
        dones.append(terminated | truncated)
        truncs.append(truncated)
        boots.append(boot)
        for i, info in enumerate(infos):
            env_steps += info["env_steps"]
            if terminated[i] or truncated[i]:
                episodes.append({"success": bool(info["success"]), "env_steps": int(info["episode_env_steps"])})
        obs = next_obs
    return Rollout(
        obs={k: np.stack(v) for k, v in obs_buf.items()},
        records={k: np.stack(v) for k, v in rec_buf.items()},
        rewards=np.stack(rewards),
        dones=np.stack(dones),
        truncated=np.stack(truncs),
        bootstrap=np.stack(boots),
        next_obs=obs,
        env_steps=env_steps,
        episodes=episodes,
    )


def advantages(
    rollout: Rollout, next_value: np.ndarray, gamma: float, lam: float, scaler: RunningRewardScaler | None
) -> tuple[np.ndarray, np.ndarray]:
    """GAE of a rollout with optional reward scaling; a truncated step's reward gets + γ V(final obs)."""
    rewards = scaler(rollout.rewards, rollout.dones) if scaler is not None else rollout.rewards.astype(np.float32)
    rewards = rewards + gamma * rollout.bootstrap * rollout.truncated
    return compute_gae(rewards, rollout.records["value"], rollout.dones, next_value, gamma, lam)


def evaluate_agent(agent, venv, seeds: list[int]) -> dict:
    """Deterministic episodes with fixed placement seeds, ``venv.num_envs`` at a time.

    Returns {"success_rate", "successes", "episodes", "ci95", "mean_env_steps"}. Leaves the envs mid-episode:
    reset them before training continues.
    """
    from d2ppo.package import wilson_interval

    n = venv.num_envs
    results: list[dict] = []
    for start in range(0, len(seeds), n):
        batch = list(seeds[start : start + n])
        active = len(batch)
        obs = venv.reset(batch + [None] * (n - active))
        running = np.zeros(n, bool)
        running[:active] = True
        while running.any():
            actions, _ = agent.act(obs, deterministic=True)
            obs, _, terminated, truncated, infos = venv.step(actions)
            for i in np.flatnonzero(running & (terminated | truncated)):
                results.append({"success": bool(terminated[i]), "env_steps": infos[i]["episode_env_steps"]})
                running[i] = False
    k = sum(r["success"] for r in results)
    lo, hi = wilson_interval(k, len(results))
    return {
        "success_rate": k / len(results),
        "successes": k,
        "episodes": len(results),
        "ci95": [round(lo, 4), round(hi, 4)],
        "mean_env_steps": float(np.mean([r["env_steps"] for r in results])),
    }
