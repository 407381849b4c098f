"""Revisions of the analytics chain (version table enstratus_migration_analytics)."""
