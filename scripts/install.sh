#!/usr/bin/env bash
# Install csg and what it needs on a fresh Debian/Ubuntu machine (root or sudo).
#   bash scripts/install.sh          # the package + the Fashion-MNIST data
#   bash scripts/install.sh --test   # also the test tools (pytest, hypothesis, ART, Selenium, Chromium + its driver,
#                                    # Lightning, TensorBoard, Captum, nbclient/nbformat/ipykernel)
set -euo pipefail
cd "$(dirname "$0")/.."
want_tests=0
[ "${1:-}" = "--test" ] && want_tests=1

SUDO=""
[ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null && SUDO="sudo"
apt_packages="dataset-fashion-mnist"
[ "$want_tests" = 1 ] && apt_packages="$apt_packages chromium chromium-driver"
missing=""
for p in $apt_packages; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ] && command -v apt-get >/dev/null; then
  echo "installing Debian packages:$missing" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

PY=${PYTHON:-python3}
# torch first, as a CPU build: a bare `torch` requirement would pull several GB of CUDA packages.
if ! "$PY" -c "import torch" 2>/dev/null; then
  "$PY" -m pip install -q torch==2.13.0 || "$PY" -m pip install -q torch --index-url https://download.pytorch.org/whl/cpu
fi
if [ "$want_tests" = 1 ]; then
  "$PY" -m pip install -q -e ".[test]"
else
  "$PY" -m pip install -q -e .
fi
