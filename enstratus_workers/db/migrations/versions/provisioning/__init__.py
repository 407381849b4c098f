"""Revisions of the provisioning chain (version table enstratus_migration_provisioning)."""
