#!/usr/bin/env bash
# Set up everything (apt packages, .venv, helper venvs) and run the whole test suite.
# Usage: scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# franka-sim (reflex/recovery tests) pins numpy/mujoco versions of its own, so it lives in its own venv.
[ -f scripts/setup_franka_sim.sh ] && bash scripts/setup_franka_sim.sh
export MUJOCO_GL=${MUJOCO_GL:-egl} PYTHONUNBUFFERED=1
# Tests start ROS 2 processes with their own ROS_DOMAIN_IDs; a stale RMW choice would break them.
unset RMW_IMPLEMENTATION
exec .venv/bin/python -m pytest "$@"
