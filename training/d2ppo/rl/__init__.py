"""PPO fine-tuning: DPPO's two-layer MDP over the denoising chain (ppo_diffusion), a Gaussian-policy PPO
baseline (ppo_gaussian), rollouts with GAE (rollout) and the ``python -m d2ppo.rl.finetune`` CLI."""
