#!/usr/bin/env bash
# One-command set-up on a fresh Debian machine: system packages (CJK fonts for the
# glyph benchmark, Fashion-MNIST), a virtualenv in .venv with gallery[train,test],
# then the short real demo. `--no-demo` stops after installing (used by CI).
set -euo pipefail
cd "$(dirname "$0")"

DEBIAN_PACKAGES=(
  fonts-noto-cjk fonts-arphic-ukai fonts-arphic-uming fonts-wqy-zenhei
  fonts-wqy-microhei fonts-ipafont fonts-droid-fallback dataset-fashion-mnist
)

if command -v apt-get >/dev/null; then
  missing=()
  for pkg in "${DEBIAN_PACKAGES[@]}"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
  if ((${#missing[@]})); then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${missing[@]}"
  fi
fi

PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch is pinned to the CPU wheel in the [train] extra; see pyproject.toml.
.venv/bin/python -m pip install -q -e ".[train,test]"

if [ "${1:-}" != "--no-demo" ]; then
  bash examples/demo.sh
fi
