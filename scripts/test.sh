#!/usr/bin/env bash
# Set up everything (apt packages, .venv, helper venvs) and run the whole test suite.
# Usage: scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The robot simulators run as separate server processes from venvs of their own (their pins conflict
# with the project venv's numpy; see the scripts): franky-sim for motion tests, franka-sim for reflexes.
for s in scripts/setup_franky_sim.sh scripts/setup_franka_sim.sh; do
  if [ -f "$s" ]; then bash "$s"; fi
done
export MUJOCO_GL=${MUJOCO_GL:-egl} PYTHONUNBUFFERED=1
# Tests start ROS 2 processes with their own ROS_DOMAIN_IDs; a stale RMW choice would break them.
unset RMW_IMPLEMENTATION
# DDS discovery stays on this host for every process the tests start (DESIGN.md): ROS 2's default range,
# SUBNET, would let a test's chunks or service calls reach a robot on the LAN in the same domain.
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
# The DDS discovery probes (tests/infra/test_dds_defaults.py) run in a pytest process of their own first: late in
# the long session their fresh participant processes stopped discovering each other (they pass alone and after
# every subset of the suite tried; the cause is not found yet — see the issue notes of stop 15).
DDS_PROBES=tests/infra/test_dds_defaults.py
if [[ " $* " != *" tests"* ]]; then
  .venv/bin/python -m pytest "$@" "$DDS_PROBES"
  exec .venv/bin/python -m pytest "$@" --ignore="$DDS_PROBES"
fi
exec .venv/bin/python -m pytest "$@"
