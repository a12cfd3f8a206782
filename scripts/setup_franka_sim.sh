#!/usr/bin/env bash
# Create .venv-franka-sim: franka-sim 1.1.7, the enforcing libfranka-protocol simulator that raises
# real reflexes (joint/velocity limits, discontinuities, communication constraints). It pins
# numpy 1.26.4 and mujoco < 3.3, so it cannot share a venv with robosuite's mujoco 3.3.7.
# Offline: its FR3 model normally downloads through robot_descriptions at start; the tests point FR3_MJCF
# at a copy of franky-sim's bundled assets/fr3.xml (from .venv-franky-sim, scripts/setup_franky_sim.sh)
# next to an `assets -> meshes` link, and bind the server to a loopback address
# (tests/franka/franka_harness.py: start_franka_sim).
# Idempotent. Usage: scripts/setup_franka_sim.sh
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv-franka-sim
REQ="franka-sim==1.1.7 mujoco==3.2.7 trimesh==5.2.0 robot_descriptions==3.3.0"  # measured set
stamp=$VENV/.setup-stamp
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
[ -x $VENV/bin/python ] || { echo "[setup_franka_sim] creating $VENV"; "$PY" -m venv $VENV; }
if [ "$(cat "$stamp" 2>/dev/null)" != "$REQ" ]; then
  # shellcheck disable=SC2086 # REQ is a list of requirements
  $VENV/bin/python -m pip install -q $REQ
  echo "$REQ" > "$stamp"
fi
$VENV/bin/python -c 'import franka_sim, mujoco, numpy; print("[setup_franka_sim] ready: mujoco", mujoco.__version__, "numpy", numpy.__version__)'
