#!/usr/bin/env bash
# Create .venv and install revsnn with everything it runs on. Idempotent: a second run only checks a stamp.
# Nothing inside site-packages is edited; lava's Python 3.11 fixes happen at import time (targets/lava_compat.py).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
VENV=${VENV:-.venv}
STAMP="$VENV/.revsnn-setup"
TORCH_VERSION=2.13.0

want=$(cat scripts/setup.sh scripts/requirements.txt scripts/requirements-nodeps.txt pyproject.toml | sha256sum | cut -c1-16)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && "$VENV/bin/python" -c "import revsnn" 2>/dev/null; then
    echo "revsnn: environment $VENV is up to date."
    exit 0
fi

command -v "$PYTHON" >/dev/null || { echo "revsnn: $PYTHON not found; set PYTHON to a Python 3.11 interpreter." >&2; exit 1; }
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }

echo "revsnn: installing torch $TORCH_VERSION ..."
# A local CPU wheel (pip's find-links) first: `--no-index --no-deps` succeeds only if one is on disk, and the
# second call then fetches just torch's small pure-Python dependencies. Without a local wheel: the CUDA build
# where a GPU driver is present, PyTorch's CPU index where it is not, so a CPU machine never downloads
# gigabytes of CUDA packages.
if pip install --no-index --no-deps "torch==$TORCH_VERSION" 2>/dev/null; then
    pip install "torch==$TORCH_VERSION"
elif command -v nvidia-smi >/dev/null; then
    pip install "torch==$TORCH_VERSION"
else
    pip install "torch==$TORCH_VERSION" --index-url https://download.pytorch.org/whl/cpu \
        --extra-index-url https://pypi.org/simple
fi

echo "revsnn: installing the toolchain (NIR, norse, ONNX, Lava, ...) ..."
pip install -r scripts/requirements.txt
pip install --no-deps --ignore-requires-python -r scripts/requirements-nodeps.txt
pip install --no-deps -e .

echo "$want" > "$STAMP"
echo "revsnn: environment $VENV is ready."
