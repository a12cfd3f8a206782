#!/usr/bin/env bash
# Create .venv-franka-sim: franka-sim 1.1.7, the enforcing libfranka-protocol simulator that raises
# real reflexes (joint/velocity limits, discontinuities, communication constraints). It pins
# numpy 1.26.4 and mujoco < 3.3, so it cannot share a venv with robosuite's mujoco 3.3.7.
# Offline: its FR3 model normally downloads through robot_descriptions at start; we point FR3_MJCF
# at franky-sim's bundled assets/fr3.xml instead (see tests/franka/sims.py), which needs franky-sim's
# package files (scripts/setup_franky_sim.sh) and an `assets/assets -> meshes` link made here.
# Idempotent. Usage: scripts/setup_franka_sim.sh
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv-franka-sim
REQ="franka-sim==1.1.7"
stamp=$VENV/.setup-stamp
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
[ -x $VENV/bin/python ] || { echo "[setup_franka_sim] creating $VENV"; "$PY" -m venv $VENV; }
if [ "$(cat "$stamp" 2>/dev/null)" != "$REQ" ]; then
  $VENV/bin/python -m pip install -q "$REQ"
  echo "$REQ" > "$stamp"
fi
$VENV/bin/python -c 'import franka_sim, mujoco, numpy; print("[setup_franka_sim] ready: mujoco", mujoco.__version__, "numpy", numpy.__version__)'
