"""Write a new Alembic revision for changes to registry/models.py:
``.venv/bin/python scripts/new_migration.py "add robot tokens"``. It upgrades a scratch SQLite
database to head, compares it with the models and writes migrations/versions/<date>_<rev>_<slug>.py.
Review the result (and test it on PostgreSQL: the test suite runs every migration on both)."""

import sys
import tempfile

from alembic import command

from registry import db

if len(sys.argv) != 2:
    raise SystemExit(__doc__)
with tempfile.TemporaryDirectory() as scratch:
    url = f"sqlite:///{scratch}/scratch.db"
    db.upgrade(url)
    command.revision(db.alembic_config(url), message=sys.argv[1], autogenerate=True)
