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
echo "==> pytest"
exec .venv/bin/python -m pytest "$@"
