#!/usr/bin/env bash
# Sets everything up (scripts/setup.sh) and runs the whole test suite: lint, types, then pytest
# (which includes tests/test_structure.py, the direction of imports).
# The tests start the servers they need themselves (PostgreSQL, registries) on 127.0.0.1.
# Extra arguments go to pytest, e.g. scripts/test.sh -k uploads -x
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
echo "==> ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "==> mypy (strict, pyproject.toml [tool.mypy])"
.venv/bin/mypy
# One pytest worker per CPU (pytest-xdist), each starting its own servers on free ports; a test
# file's tests stay on one worker, so its module-scoped servers start once. HANGAR_TEST_WORKERS=0
# (or `-n 0` among the arguments) runs everything in this one process, e.g. to debug with -x or --pdb.
workers=${HANGAR_TEST_WORKERS:-auto}
echo "==> pytest (-n $workers)"
exec .venv/bin/python -m pytest -n "$workers" --dist loadfile "$@"
