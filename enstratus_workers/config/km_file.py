"""``enstratus-km-client.cfg``: where the key-management service listens and how patiently to ask."""

from __future__ import annotations

from pathlib import Path

from enstratus_workers.config.cfgfile import CfgKey, read_cfg
from enstratus_workers.config.settings import KMClientSettings
from enstratus_workers.errors import ConfigError

FILENAME = "enstratus-km-client.cfg"
#: why ``ssl = true`` is refused; the KM client says the same if handed such settings
SSL_UNSUPPORTED = ("ssl = true is not supported: KM traffic is sealed with AES-256-GCM under "
                   "ENCRYPTION_KEY whatever this says; set ssl = false or leave the key out")

KEYS = (
    CfgKey("host", "string(min=1)"),
    CfgKey("port", "integer(1, 65535)"),
    CfgKey("timeout", "float(above=0, max=3600)"),
    CfgKey("retries", "integer(0, 20)"),
    CfgKey("ssl", "boolean()"),
)


def read_km_client(path: Path) -> KMClientSettings:
    """The settings in ``path``, the defaults if there is no such file; ConfigError(s) if it is bad.

    ``ssl = true`` is refused here, at start and by ``config check``, rather than at the first
    connect of a running worker.
    """
    entries = read_cfg(path, KEYS)
    if entries is None:
        return KMClientSettings()
    ssl = entries.get("ssl")
    if ssl is not None and ssl.value:
        raise ConfigError(SSL_UNSUPPORTED, file=path, key="ssl", line=ssl.line)
    return KMClientSettings(**{name: entry.value for name, entry in entries.items()}, source=path)
