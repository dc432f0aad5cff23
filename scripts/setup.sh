#!/usr/bin/env bash
# Creates .venv and installs the project with everything it needs, offline-capable models included.
# Only Python 3.11+ is assumed. Debian packages are installed only for the browser tests (test.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
# torch is pinned to the CPU wheel; an unpinned torch pulls a several-GB CUDA build.
.venv/bin/python -m pip install --quiet -e ".[dev,summary]"
# The browser validator's Silero VAD and ONNX Runtime Web files (npm), when npm exists;
# without them the validator runs its non-ML checks and says so.
bash scripts/web-assets.sh || echo "web assets not installed; the upload validator's VAD is off" >&2
echo "set-up done: .venv/bin/audiosocket"
