"""One folder of revisions per chain; each folder is one chain's ``version_locations``."""
