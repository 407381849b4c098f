"""``enstratus-km-client.cfg``: where the key-management service listens and how patiently to ask."""

from __future__ import annotations

from pathlib import Path

from enstratus_workers.config.cfgfile import CfgKey, read_cfg
from enstratus_workers.config.settings import KMClientSettings

FILENAME = "enstratus-km-client.cfg"

KEYS = (
    CfgKey("host", "string(min=1)"),
    CfgKey("port", "integer(1, 65535)"),
    CfgKey("timeout", "float(above=0, max=3600)"),
    CfgKey("retries", "integer(0, 20)"),
    CfgKey("ssl", "boolean()"),
)


def read_km_client(path: Path) -> KMClientSettings:
    """The settings in ``path``, the defaults if there is no such file; ConfigError(s) if it is bad."""
    entries = read_cfg(path, KEYS)
    if entries is None:
        return KMClientSettings()
    return KMClientSettings(**{name: entry.value for name, entry in entries.items()}, source=path)
