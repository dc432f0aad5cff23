#!/usr/bin/env bash
# The whole test suite: lint, types, then pytest (unit, integration with real models, FFmpeg,
# sockets, and browser tests in headless Chromium). Run through `make test`.
set -euo pipefail
cd "$(dirname "$0")/.."
# `make test` has already run scripts/setup.sh (through its stamp file).
[ -x .venv/bin/python ] || bash scripts/setup.sh
bash scripts/system-deps.sh
# The browser Whisper model for the upload validator's ASR check (about 1 min, once).
bash scripts/web-model.sh
.venv/bin/ruff check .
.venv/bin/mypy audiosocket sessions helpers web models
# Two workers (pytest-xdist): the suite is mostly real-time calls, and every test is built
# to pass on a busy machine. PYTEST_WORKERS=0 runs it in one process.
.venv/bin/python -m pytest -q -p no:cacheprovider -n "${PYTEST_WORKERS:-2}" "$@"
