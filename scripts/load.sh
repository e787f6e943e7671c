#!/usr/bin/env bash
# The load suite at issue #16's sizes (tests/load/test_load.py; CI runs it small): 200 concurrent
# pulls, 50 concurrent pushes of one new blob, 20 concurrent tags, 60 s of manifest GETs, 32 chat
# streams on 2 slots. Figures (p50/p99, rates, memory) land in bench/out/load.json and are printed.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -f bench/out/load.json
HANGAR_LOAD_PULLS="${HANGAR_LOAD_PULLS:-200}" HANGAR_LOAD_PUSHES="${HANGAR_LOAD_PUSHES:-50}" \
HANGAR_LOAD_TAGS="${HANGAR_LOAD_TAGS:-20}" HANGAR_LOAD_SECONDS="${HANGAR_LOAD_SECONDS:-60}" \
HANGAR_LOAD_CHATS="${HANGAR_LOAD_CHATS:-32}" \
  .venv/bin/python -m pytest tests/load -q -p no:cacheprovider "$@"
cat bench/out/load.json
