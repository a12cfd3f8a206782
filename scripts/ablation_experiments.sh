#!/usr/bin/env bash
# The pre-training ablation and the fine-tuning comparison of issue 12, one stage per command. Every stage is
# resumable: after an interruption, run the same command again (finished cells/runs are skipped).
#
#   scripts/ablation_experiments.sh data         # 200 scripted demos each of Can and Square, state only (~5 min each)
#   scripts/ablation_experiments.sh calibrate    # λ = 0, seed 0, 20 episodes at STEPS: is success off 0 and 1?
#   scripts/ablation_experiments.sh grid         # λ {0, 0.5} x layer {early, mid, late} x seeds {0, 1, 2} on Can and
#                                                # Square, then the λ sweep {0.1 ... 0.9} on Square at its best layer
#   scripts/ablation_experiments.sh auto         # automatic layer/λ choice on Can and Square, compared with the grid
#   scripts/ablation_experiments.sh bc TASK      # the Gaussian arm's BC budget: BC-only success for several BC_STEPS
#   scripts/ablation_experiments.sh comparison TASK LAYER BC_STEPS   # D²PPO vs DPPO vs Gaussian, 3 seeds, 200k env steps
#   scripts/ablation_experiments.sh plot         # redraw docs/results/ablation.png and finetune_comparison.png
#
# Environment: STEPS (pre-training steps per cell, default 10000), JOBS (cells at once, default 2 = the 2 cores;
# evaluation then runs 1 process per cell, so every cell sees the same episode seeds), PY (default .venv/bin/python).
# Measured on the 2-core machine under load: 31 training steps/s (768-wide denoiser, batch 64, 1 thread), a failed
# Square evaluation episode 3.8 s (400 steps), so one cell at 10000 steps is ~5.5 min of training plus <= 3.2 min
# of evaluation (50 episodes); the 36 cells of grid + sweep take ~4.8 h of one core each, ~2.5 h with JOBS=2 on 2 free cores.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
STEPS=${STEPS:-10000}
JOBS=${JOBS:-2}
export OMP_NUM_THREADS=1
STAGE=${1:-}
case "$STAGE" in
  data)
    for task in can square; do
      [ -f "data/${task}_lowdim.hdf5" ] || $PY -m d2ppo.experts.generate --task "$task" --episodes 200 --cameras none \
        --noise 0.1 --seed 0 --workers 2 --out "data/${task}_lowdim.hdf5"
    done ;;
  calibrate)
    $PY -m d2ppo.ablation --tasks can square --lambdas 0 --layers early --seeds 0 --steps "$STEPS" --episodes 20 \
      --sweep-layer none --jobs "$JOBS" --out "runs/ablation_calibration/steps_${STEPS}.json" ;;
  grid)
    $PY -m d2ppo.ablation --tasks can square --lambdas 0 0.5 --layers early mid late --seeds 0 1 2 --steps "$STEPS" \
      --episodes 50 --sweep-tasks square --sweep-lambdas 0.1 0.3 0.5 0.7 0.9 --sweep-layer best --workers 1 --jobs "$JOBS" ;;
  auto)
    $PY -m d2ppo.ablation --tasks can square --layers early mid late --seeds 0 1 2 --steps "$STEPS" --episodes 50 \
      --auto --probe-steps 2000 --probe-lambdas 0.1 0.5 0.9 --workers 1 --jobs "$JOBS" ;;
  bc)
    TASK=${2:?usage: $0 bc TASK}
    for n in 1000 3000 10000 30000; do
      $PY -m d2ppo.finetune_comparison --task "$TASK" --arms gaussian --seeds 0 1 2 --env-steps 0 --bc-steps "$n" \
        --pretrained-from "runs/ablation/${TASK}_state_s${STEPS}" --out "runs/finetune_comparison/bc_${TASK}_${n}.json"
    done ;;
  comparison)
    TASK=${2:?usage: $0 comparison TASK LAYER BC_STEPS}; LAYER=${3:?layer}; BC=${4:?bc steps}
    $PY -m d2ppo.finetune_comparison --task "$TASK" --arms d2ppo dppo gaussian --seeds 0 1 2 --env-steps 200000 \
      --layer "$LAYER" --bc-steps "$BC" --pretrained-from "runs/ablation/${TASK}_state_s${STEPS}" ;;
  plot)
    $PY -m d2ppo.ablation --plot-only
    $PY -m d2ppo.finetune_comparison --plot-only ;;
  *)
    awk 'NR > 1 && /^#/ {print; next} NR > 1 {exit}' "$0"; exit 2 ;;
esac
