"""Alembic migrations of the wxpush database (run them with `wxpush db upgrade`)."""
