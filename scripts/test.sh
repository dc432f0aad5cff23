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
# Two workers (pytest-xdist) on an otherwise idle machine: the suite is mostly real-time
# calls, and a second worker nearly halves its time. On a machine already busy (other
# processes using more than half the CPU over one second), one process: two workers beside
# other load oversubscribe the cores past what real-time checks can hold (docs/DECISIONS.md,
# Tests). PYTEST_WORKERS=N forces N (0: one process).
busy_percent() {
    local a b
    read -r _ a1 a2 a3 a4 a5 a6 a7 _ < /proc/stat
    sleep 1
    read -r _ b1 b2 b3 b4 b5 b6 b7 _ < /proc/stat
    a=$((a1 + a2 + a3 + a6 + a7)); b=$((b1 + b2 + b3 + b6 + b7))
    local total=$(( (b + b4 + b5) - (a + a4 + a5) ))
    echo $(( total > 0 ? 100 * (b - a) / total : 0 ))
}
if [ -z "${PYTEST_WORKERS:-}" ]; then
    busy=$(busy_percent)
    if [ "$busy" -gt 50 ]; then PYTEST_WORKERS=0; else PYTEST_WORKERS=2; fi
    echo "CPU ${busy}% busy before the tests: ${PYTEST_WORKERS} pytest workers (0 = one process)"
fi
.venv/bin/python -m pytest -q -p no:cacheprovider -n "$PYTEST_WORKERS" "$@"
