#!/usr/bin/env bash
# Install everything the tests need, then run the whole suite.
# The README's test command; .ci/run calls it. Extra arguments go to pytest.
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

python3 -m pip install -q -e '.[test]'
python3 -m pytest "$@"
