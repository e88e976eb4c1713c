"""Keel's database layer: SQLAlchemy models, engines and sessions, Alembic migrations."""
