#!/usr/bin/env bash
# The project's one test command: lint, then the whole test suite on the CPU.
# Creates .venv (if absent) and installs requirements-dev.txt and requirements-cluster.txt (Ray
# Serve + the Redis client, for tests/app/cluster) into it, so it works on a fresh clone.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt \
  -r requirements-cluster.txt
.venv/bin/python -m ruff check catvton app tests scripts
.venv/bin/python -m ruff format --check catvton app tests scripts
.venv/bin/python -m pytest "$@"
