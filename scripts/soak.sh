#!/usr/bin/env bash
# The kill -9 soak (tests/reliability/soak.py): a registry and its clients killed at random points
# of pushes, pulls and GC runs, restarted, the operation run again; every model checked whole and
# `hangar registry fsck --full` / `hangar fsck` clean after each iteration.
#
#   scripts/soak.sh                          3 iterations of each fault, a new seed (printed)
#   scripts/soak.sh --iterations 50 --seed 7 --report soak.json
#   scripts/soak.sh --database-url postgresql+psycopg://…   on PostgreSQL instead of SQLite
#
# CI runs a short version through pytest (tests/reliability/test_soak.py). Exit status 1 if any
# iteration lost anything; the table of docs/reliability.md comes from this output.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    echo "no .venv: run scripts/setup.sh first" >&2
    exit 2
fi
exec .venv/bin/python -m tests.reliability.soak "$@"
