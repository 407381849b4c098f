"""The configuration layer: five files under ``services/worker/classes/`` into one ``Settings``.

``load_settings(layout)`` reads and validates them (``ConfigError`` naming file, key and line
otherwise); ``ensure_provisioning_file(layout)`` creates the key file on first start.
"""

from enstratus_workers.config.describe import describe
from enstratus_workers.config.keys import ensure_provisioning_file, generate_key, write_new_key
from enstratus_workers.config.loader import check_config, load_settings
from enstratus_workers.config.problems import ConfigErrors
from enstratus_workers.config.settings import Secret, Settings
from enstratus_workers.errors import ConfigError

__all__ = [
    "ConfigError",
    "ConfigErrors",
    "Secret",
    "Settings",
    "check_config",
    "describe",
    "ensure_provisioning_file",
    "generate_key",
    "load_settings",
    "write_new_key",
]
