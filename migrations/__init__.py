"""Alembic migrations for the registry database (applied by ``hangar registry migrate`` and at
every ``hangar registry serve``)."""
