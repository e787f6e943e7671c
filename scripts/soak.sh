#!/usr/bin/env bash
# The kill -9 soak (tests/reliability/soak.py): the registry, its gc and migrate commands and the
# client killed at random points of pushes, pulls, manifest writes, GC runs, migrations, creates,
# removals and prunes; restarted, the operation run again; every model checked whole, every tag its
# old or its new manifest, `hangar registry fsck --full` / `hangar fsck` clean after each iteration.
#
#   scripts/soak.sh                          3 iterations of each fault, a new seed (printed)
#   scripts/soak.sh --iterations 50 --seed 7 --report soak.json
#   scripts/soak.sh --kinds gc,migration     only these kinds (the list: --help)
#   scripts/soak.sh --iterations 50 --max-minutes 25   starts no iteration after 25 minutes
#   scripts/soak.sh --small --iterations 1   the test suite's scale: small models and counts
#   scripts/soak.sh --workers 2              the registry with two worker processes (killed together)
#   scripts/soak.sh --database-url postgresql+psycopg://…   on PostgreSQL instead of SQLite (the
#                                            migration kind makes its old-schema databases on that
#                                            server: its user must be allowed to create databases)
#
# CI runs one iteration of each kind through pytest (tests/reliability/test_soak.py). Exit status 1
# if any iteration lost anything; the table of docs/reliability.md comes from this output.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    echo "no .venv: run scripts/setup.sh first" >&2
    exit 2
fi
exec .venv/bin/python -m tests.reliability.soak "$@"
