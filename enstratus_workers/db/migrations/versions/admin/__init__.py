"""Revisions of the admin chain (version table enstratus_migration_admin)."""
