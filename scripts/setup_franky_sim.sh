#!/usr/bin/env bash
# Create .venv-franky-sim: the franky-sim MuJoCo server (libfranka protocol) used by tests/franka.
# Why a venv of its own: franky-sim 1.0.4 needs pinocchio >= 3 (`Frame.parentJoint`), and every
# pinocchio 3.x/4.x wheel depends on cmeel-boost >= 1.87, which requires numpy >= 2.2, while the
# project venv is pinned to numpy 1.26.4 (torch/robosuite/franka-sim). In the project venv the
# resolver falls back to pin 2.7.0 and `franky-sim` dies at start with
# "AttributeError: 'Frame' object has no attribute 'parentJoint'". The server runs as its own
# process anyway; the franky client (franky-control) stays in .venv.
# Idempotent. Usage: scripts/setup_franky_sim.sh
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv-franky-sim
REQ="franky-sim==1.0.4 pin==4.1.0 mujoco==4.0.0 numpy==2.4.6"  # versions the tests were measured with
stamp=$VENV/.setup-stamp
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
[ -x $VENV/bin/python ] || { echo "[setup_franky_sim] creating $VENV"; "$PY" -m venv $VENV; }
if [ "$(cat "$stamp" 2>/dev/null)" != "$REQ" ]; then
  # shellcheck disable=SC2086 # REQ is a list of requirements
  $VENV/bin/python -m pip install -q $REQ
  echo "$REQ" > "$stamp"
fi
$VENV/bin/python -c 'import pinocchio, franky_sim; print("[setup_franky_sim] ready: pinocchio", pinocchio.__version__)'
