#!/usr/bin/env bash
# Install exactly what the tests need (from the lock) and run the whole suite.
# The README's test command; .ci/run calls it. Extra arguments go to pytest, e.g.
# `bash scripts/test.sh -m "not slow"` for the fast tier.
#
# Python packages go into a virtualenv: the active one ($VIRTUAL_ENV), else .venv here,
# created when missing. Installing from requirements/cpu.txt makes the venv match the lock
# exactly (pip-sync semantics are not needed: a fresh venv has nothing else).
set -euo pipefail
cd "$(dirname "$0")/.."

# The worker tests start a real Redis; Debian packages it (PyPI has no server wheel).
if ! command -v redis-server >/dev/null 2>&1; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server >/dev/null
    # The package starts a system-wide server; the tests start their own on a free port.
    ($SUDO service redis-server stop || true) >/dev/null 2>&1
fi

# The console's browser tests drive Debian's Chromium headless through Playwright
# (`playwright install` downloads browsers from a CDN, which is not reachable here).
if ! command -v chromium >/dev/null 2>&1; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi

if [ -z "${VIRTUAL_ENV:-}" ]; then
    [ -x .venv/bin/python ] || python3 -m venv .venv
    PY=.venv/bin/python
else
    PY="$VIRTUAL_ENV/bin/python"
fi
"$PY" -m pip install -q --disable-pip-version-check -r "requirements/${IDENTITY_LOCK:-cpu}.txt"
"$PY" -m pip install -q --disable-pip-version-check --no-deps -e .
"$PY" -m pip check
exec "$PY" -m pytest "$@"
