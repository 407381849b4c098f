"""Alembic's script directory for every chain (``db/migrate.py`` says which is which)."""
