#!/usr/bin/env bash
# PPO fine-tuning on low-dim Lift, one command per arm of the comparison (same weak pre-training budget,
# same envs, seeds and fine-tuning budget):
#
#   scripts/finetune_lift_lowdim.sh d2ppo    [seed]   # diffusion policy pre-trained with dispersive λ = 0.5
#   scripts/finetune_lift_lowdim.sh dppo     [seed]   # the same with λ = 0 (plain diffusion policy = DPPO)
#   scripts/finetune_lift_lowdim.sh gaussian [seed]   # MLP Gaussian policy, BC on the same 10 demos, then PPO
#
# The pre-trained policy is deliberately weak (10 demos, 340 gradient steps: 0.58 success over 50 episodes for
# λ = 0.5, seed 0); the fine-tuned package lands in runs/rl/ft_<arm>_s<seed>_d10s340/package
# (policies/lift_lowdim_d2ppo_ft was made by the d2ppo arm, seed 0, with these flags: 0.58 -> 0.92 over 50
# episodes after 28 min of fine-tuning on the 2-core dev machine). Needs data/lift_lowdim.hdf5
# (python -m d2ppo.experts.generate --task lift --episodes 200 --noise 0.1 --seed 0 --out data/lift_lowdim.hdf5).
set -euo pipefail
cd "$(dirname "$0")/.."
ARM=${1:-d2ppo}
SEED=${2:-0}
PY=${PY:-.venv/bin/python}
case "$ARM" in
  d2ppo|gaussian) LAMBDA=0.5; ALGO=$ARM ;;
  dppo) LAMBDA=0; ALGO=d2ppo ;;
  *) echo "usage: $0 d2ppo|dppo|gaussian [seed]" >&2; exit 2 ;;
esac
STEPS=340
PRE=runs/rl/pre_lift_lowdim_d10_s${STEPS}_l${LAMBDA}_seed${SEED}
if [ ! -f "$PRE/policy/policy.json" ]; then
  $PY -m d2ppo.train --data data/lift_lowdim.hdf5 --cameras none \
    --lowdim-keys robot0_eef_pos robot0_eef_quat robot0_gripper_qpos object \
    --max-demos 10 --steps "$STEPS" --seed "$SEED" --dispersive-weight "$LAMBDA" --threads 1 --out "$PRE"
fi
if [ ! -f "$PRE/policy/eval/eval.json" ]; then
  $PY -m d2ppo.evaluate --policy "$PRE/policy" --episodes 50 --seed 1000 --workers 1 --videos 0
fi
RUN=runs/rl/ft_${ARM}_s${SEED}_d10s${STEPS}
$PY -m d2ppo.rl.finetune --policy "$PRE/policy" --out "$RUN/package" --run-dir "$RUN" --algo "$ALGO" \
  --iterations 200 --max-minutes 28 --envs 8 --workers 2 --steps-per-iter 100 --max-env-steps 160 \
  --eval-every 3 --eval-episodes 16 --noise-eta 0 --actor-lr 1e-5 --clip-base 0.005 --clip-last 0.05 \
  --target-kl 0.005 --update-epochs 10 --minibatch-size 200 --critic-warmup 1 --seed "$SEED" --threads 2
