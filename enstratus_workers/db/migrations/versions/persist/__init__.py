"""Revisions of the persist chain (version table enstratus_migration_persist)."""
