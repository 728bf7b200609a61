#!/usr/bin/env bash
# Regenerate the locks from pyproject.toml: requirements/cpu.txt (faiss-cpu) and
# requirements/cuda.txt (faiss-gpu). Each pins every runtime dependency and every extra
# (api, workers, cluster, test) for CPython 3.11 on x86-64 Linux, the tested platform.
# Versions already pinned are kept unless pyproject.toml needs another; pass --upgrade
# (or --upgrade-package NAME) to move them. tests/test_lock.py fails when a lock and
# pyproject.toml disagree.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v uv >/dev/null 2>&1 || python3 -m pip install -q 'uv>=0.9'
for variant in cpu:cpu cuda:gpu; do
    out="requirements/${variant%%:*}.txt"
    uv pip compile pyproject.toml \
        --extra "${variant##*:}" --extra api --extra workers --extra cluster --extra test \
        --constraint requirements/constraints.txt \
        --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
        --index-url https://pypi.org/simple --no-emit-index-url \
        --custom-compile-command 'bash scripts/lock.sh' \
        --quiet --output-file "$out" "$@"
done
