"""Revisions of the km chain (version table enstratus_migration_km)."""
