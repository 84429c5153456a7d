#!/usr/bin/env bash
# Start the CatVTON try-on service on http://0.0.0.0:8000.
# Creates .venv if there is none, installs requirements.txt when it changed, then runs
# `python -m app` with your arguments appended (a later flag wins over the defaults here):
#   ./start_server.sh                         # real weights (see README: python -m catvton download)
#   ./start_server.sh --demo                  # tiny random weights: integrate without a GPU
#   ./start_server.sh --weights-dir weights --port 9000
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -x .venv/bin/python ]; then
  echo "Creating the virtual environment in .venv"
  python3 -m venv .venv
fi
# A copy of the requirements last installed: reinstall only when requirements.txt changed.
installed=.venv/requirements.installed.txt
if ! cmp -s requirements.txt "$installed"; then
  echo "Installing requirements.txt into .venv"
  .venv/bin/python -m pip install --disable-pip-version-check -r requirements.txt
  cp requirements.txt "$installed"
fi
exec .venv/bin/python -m app --host 0.0.0.0 --port 8000 "$@"
