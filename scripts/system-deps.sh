#!/usr/bin/env bash
# Debian packages the tests need and PyPI cannot provide: Chromium for the browser tests,
# PostgreSQL for the shared store and HAProxy for the many-servers tests (docs/SCALE-OUT.md).
# Installed only when missing and only where apt-get exists (we are root on CI machines).
set -uo pipefail
need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || need+=(haproxy)
if [ ${#need[@]} -eq 0 ]; then exit 0; fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "system-deps: ${need[*]} missing and no apt-get; the tests that need them will be skipped (and fail under CI=true)" >&2
    exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "system-deps: installing ${need[*]}" >&2
$SUDO apt-get update -qq >/dev/null && \
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null || \
    echo "system-deps: could not install ${need[*]}; the tests that need them will be skipped (and fail under CI=true)" >&2
exit 0
