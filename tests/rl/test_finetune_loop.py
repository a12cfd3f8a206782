"""The fine-tuning loop around the agent, with a stand-in vector env (no simulator): what it does between
iterations."""

from __future__ import annotations

import numpy as np
import pytest


class ScriptedVectorEnv:
    """Stand-in for VectorChunkedEnv: reward 1 every chunk, episodes truncated after ``limit`` chunks."""

    def __init__(self, configs, workers=0, limit=5):
        self.num_envs, self.limit = len(configs), limit
        self.dim = configs[0].builder.spec.state_dim
        self.t = np.zeros(self.num_envs, int)

    def _obs(self):
        return {"state": np.zeros((self.num_envs, 1, self.dim), np.float32)}

    def reset(self, seeds=None):
        self.t[:] = 0
        return self._obs()

    def step(self, chunks):
        self.t += 1
        truncated = self.t >= self.limit
        infos = [{"success": False, "env_steps": 4, "episode_env_steps": 4 * int(t)} for t in self.t]
        obs = self._obs()
        for i in np.flatnonzero(truncated):
            infos[i]["final_obs"] = {k: v[i] for k, v in obs.items()}
            self.t[i] = 0
        return obs, np.ones(self.num_envs, np.float32), np.zeros(self.num_envs, bool), truncated, infos

    def close(self):
        pass


@pytest.mark.timeout(120)
def test_forced_reset_after_an_evaluation_starts_the_running_return_from_zero(lowdim_package, tmp_path, monkeypatch):
    """Iteration 1 leaves the episodes mid-way (3 of 5 chunks); the evaluation after it resets the envs, so the
    reward scaler must not carry the interrupted episodes' return into iteration 2."""
    import d2ppo.envs.vector as vector
    import d2ppo.rl.rollout as rollout
    from d2ppo.rl.finetune import main

    carried = []

    class RecordingScaler(rollout.RunningRewardScaler):
        def __call__(self, rewards, dones):
            carried.append(self.ret.copy())
            return super().__call__(rewards, dones)

    monkeypatch.setattr(vector, "VectorChunkedEnv", ScriptedVectorEnv)
    monkeypatch.setattr(rollout, "RunningRewardScaler", RecordingScaler)
    main(["--policy", str(lowdim_package), "--out", str(tmp_path / "ft"), "--run-dir", str(tmp_path / "run"),
          "--iterations", "2", "--envs", "2", "--workers", "0", "--steps-per-iter", "3", "--critic-warmup", "0",
          "--eval-every", "1", "--eval-episodes", "2", "--final-eval-episodes", "0", "--update-epochs", "1"])
    assert len(carried) == 2
    np.testing.assert_array_equal(carried[0], 0.0)
    np.testing.assert_array_equal(carried[1], 0.0)


@pytest.mark.parametrize(
    "flags,match",
    [(["--min-logprob-std", "0"], "min-logprob-std"), (["--min-logprob-std", "nan"], "min-logprob-std"),
     (["--noise-eta", "inf"], "noise-eta"), (["--logprob-clamp", "2", "-5"], "logprob-clamp")],
)
def test_cli_refuses_settings_that_make_log_probs_non_finite_before_running(lowdim_package, tmp_path, monkeypatch,
                                                                              flags, match):
    import d2ppo.rl.finetune as ft

    monkeypatch.setattr(ft, "finetune", lambda *a, **k: pytest.fail("fine-tuning started with an invalid setting"))
    with pytest.raises(SystemExit) as e:
        ft.main(["--policy", str(lowdim_package), "--out", str(tmp_path / "ft"), *flags])
    msg = str(e.value)
    assert msg.startswith("error: ") and match in msg and "\n" not in msg


def test_new_dppo_options_are_flags_with_dppo_defaults():
    from d2ppo.rl.finetune import build_parser, config_from_args

    base = ["--policy", "p", "--out", "o"]
    cfg = config_from_args(build_parser().parse_args(base)).ppo
    assert (cfg.logprob_clamp, cfg.bc_coef, cfg.actor_lr_warmup_iters, cfg.train_encoder, cfg.augment) == \
        ((-5.0, 2.0), 0.0, 0, None, True)
    cfg = config_from_args(build_parser().parse_args(
        [*base, "--logprob-clamp", "-4", "1.5", "--bc-coef", "0.1", "--actor-lr-warmup-iters", "10",
         "--actor-lr-warmup-start", "0.5", "--no-train-encoder", "--no-augment"])).ppo
    assert (cfg.logprob_clamp, cfg.bc_coef, cfg.actor_lr_warmup_iters, cfg.actor_lr_warmup_start, cfg.train_encoder,
            cfg.augment) == ((-4.0, 1.5), 0.1, 10, 0.5, False, False)
    assert config_from_args(build_parser().parse_args([*base, "--no-logprob-clamp"])).ppo.logprob_clamp is None
    assert config_from_args(build_parser().parse_args([*base, "--train-encoder"])).ppo.train_encoder is True
