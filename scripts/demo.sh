#!/usr/bin/env bash
# Sets everything up (scripts/setup.sh) and runs the main job: a registry on the embedded
# default (SQLite + a local folder, under ./.demo), a model (Gemma 3 270M) pushed to it from one
# store, pulled into another, verified, and answering a question through `hangar run`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/python scripts/demo.py "$@"
