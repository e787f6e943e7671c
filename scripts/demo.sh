#!/usr/bin/env bash
# Sets everything up (scripts/setup.sh) and runs the main job: a registry on the embedded
# default (SQLite + a local folder, under ./.demo), a model built from Gemma 3 270M with a
# Modelfile, pushed, removed, pulled back (verified), and answering a question via `hangar run`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/python scripts/demo.py "$@"
