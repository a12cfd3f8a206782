#!/usr/bin/env bash
# Create or refresh the project virtualenv at .venv with everything the project needs.
# Idempotent: a second run only installs what changed. Usage: scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PKGS=(libosmesa6 libegl1 libegl-mesa0 libgl1-mesa-dri libglfw3 libusb-1.0-0 ffmpeg)
missing=()
for p in "${APT_PKGS[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "[setup] apt-get install ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
[ -x .venv/bin/python ] || { echo "[setup] creating .venv"; "$PY" -m venv .venv; }
stamp=.venv/.setup-stamp
want=$(cat requirements.txt training/pyproject.toml | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[setup] pip install (first run takes ~2-3 min)"
  # pip's "Location ... is ignored" notes come from this machine's local index config: harmless.
  .venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v "Location '" || true
  .venv/bin/python -m pip install -q -r requirements.txt 2> >(grep -v "Location '" >&2)
  .venv/bin/python -m pip install -q --no-deps -e training
  for pkg in ros2_ws/src/*/; do
    [ -f "$pkg/setup.py" ] || [ -f "$pkg/pyproject.toml" ] || continue
    .venv/bin/python -m pip install -q --no-deps --no-build-isolation -e "$pkg"
  done
  echo "$want" > "$stamp"
fi
echo "[setup] .venv ready: $(.venv/bin/python -c 'import torch, robosuite, rclpy; print("torch", torch.__version__, "robosuite", robosuite.__version__)')"
