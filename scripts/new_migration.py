"""Write a new Alembic revision for changes to registry/models.py:
``.venv/bin/python scripts/new_migration.py "add robot tokens"``. It upgrades a scratch SQLite
database to head, compares it with the models and writes migrations/versions/<date>_<rev>_<slug>.py.
Review the result (and test it on PostgreSQL: the test suite runs every migration on both)."""

import re
import sys
import tempfile
from pathlib import Path

from alembic import command

from registry import db

if len(sys.argv) != 2:
    raise SystemExit(__doc__)
# Revisions are numbered 0001, 0002, … so the history reads in order.
numbers = [
    int(m.group(1)) for p in (db.MIGRATIONS_DIR / "versions").glob("*.py") if (m := re.search(r"_(\d{4})_", p.name))
]
rev_id = f"{max(numbers, default=0) + 1:04d}"
with tempfile.TemporaryDirectory() as scratch:
    url = f"sqlite:///{scratch}/scratch.db"
    db.upgrade(url)
    script = command.revision(db.alembic_config(url), message=sys.argv[1], autogenerate=True, rev_id=rev_id)
# Migrations must not import application types; autogenerate renders ours by their module path.
path = script.path if script and not isinstance(script, list) else None
if path:
    target = Path(path)
    text = target.read_text().replace("registry.db.UTCDateTime(timezone=True)", "sa.DateTime(timezone=True)")
    target.write_text("\n".join(line for line in text.splitlines() if "### " not in line) + "\n")
