#!/usr/bin/env bash
# Install everything the tests need, then run the whole suite.
# The same command the README gives; .ci/run calls it.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q -e '.[test]'
python3 -m pytest "$@"
