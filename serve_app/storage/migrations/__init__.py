"""Alembic migrations of the job database (run by ``serve_app.storage.db.migrate``)."""
