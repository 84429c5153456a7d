#!/usr/bin/env bash
# The project's one test command: lint, type check, then the whole test suite on the CPU.
# Creates .venv (if absent) and installs requirements-dev.txt and requirements-cluster.txt into it,
# so it works on a fresh clone. requirements-cluster.txt brings ray[serve] (its `ray` command starts
# the Ray head that tests/app/cluster runs on, through scripts/cluster_demo.sh, and stops it after)
# and the redis client; the redis-server program itself is a system package (.ci/run installs it).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt \
  -r requirements-cluster.txt
.venv/bin/ray --version >/dev/null  # the cluster tests start `ray start --head` from this venv
.venv/bin/python -m ruff check catvton app tests scripts
.venv/bin/python -m ruff format --check catvton app tests scripts
.venv/bin/python -m mypy  # app/ and catvton/, as pyproject.toml's [tool.mypy] says
.venv/bin/python -m pytest "$@"
