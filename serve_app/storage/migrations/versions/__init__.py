"""Alembic revisions of the job database, oldest first (0001 = the first release's schema)."""
