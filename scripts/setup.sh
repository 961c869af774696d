#!/usr/bin/env bash
# Set up flatsam on a fresh machine: Fashion-MNIST from Debian (where apt exists), a virtual
# environment in .venv with the CPU build of torch 2.13.0, flatsam itself and its dev tools.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null 2>&1; then
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  if ! { $sudo apt-get update -qq && $sudo apt-get install -y -qq dataset-fashion-mnist; } >/dev/null; then
    echo "setup: could not install dataset-fashion-mnist; flatsam will look in FLATSAM_DATA or download it" >&2
  fi
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
# torch 2.13.0 first, pinned: on the project's machines that is a CPU wheel on disk, while flatsam's own
# range (torch>=2.11) would let pip pick a newer, multi-GB CUDA build. pip then keeps it for flatsam.
.venv/bin/python -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
# FLATSAM_EXTRAS=dev,integrations also installs the framework adapters' extras (a few minutes more; their
# tests are skipped without them).
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[${FLATSAM_EXTRAS:-dev}]"
.venv/bin/python -c "import flatsam, torch; print(f'flatsam {flatsam.__version__} with torch {torch.__version__} ready')"
