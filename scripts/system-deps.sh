#!/usr/bin/env bash
# Debian packages the tests need and PyPI cannot provide: Chromium for the browser tests.
# Installed only when missing and only where apt-get exists (we are root on CI machines).
set -uo pipefail
need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
if [ ${#need[@]} -eq 0 ]; then exit 0; fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "system-deps: ${need[*]} missing and no apt-get; browser tests will be skipped" >&2
    exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "system-deps: installing ${need[*]}" >&2
$SUDO apt-get update -qq >/dev/null && \
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null || \
    echo "system-deps: could not install ${need[*]}; browser tests will be skipped" >&2
exit 0
