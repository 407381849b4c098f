"""``enstratus-km-client.cfg``: where the key-management service listens and how patiently to ask.

``ssl = true`` means TLS 1.3 with certificates (``km/tls.py``): ``ca_file``, ``cert_file`` and
``key_file`` are then required, and checked here (missing, unreadable, a key others can read, a
certificate that is not the key's), so a bad one stops the start and ``config check`` with exit 6
naming the key rather than failing the first job that needs a credential. Relative paths are
relative to the install root, as in ``km.cfg``.
"""

from __future__ import annotations

from pathlib import Path

from enstratus_workers.config.cfgfile import CfgKey, read_cfg
from enstratus_workers.config.problems import raise_all
from enstratus_workers.config.settings import KMClientSettings

FILENAME = "enstratus-km-client.cfg"

KEYS = (
    CfgKey("host", "string(min=1)"),
    CfgKey("port", "integer(1, 65535)"),
    CfgKey("timeout", "float(above=0, max=3600)"),
    CfgKey("retries", "integer(0, 20)"),
    CfgKey("ssl", "boolean()"),
    CfgKey("ca_file", "string(min=1)"),
    CfgKey("cert_file", "string(min=1)"),
    CfgKey("key_file", "string(min=1)"),
    CfgKey("server_name", "string(min=1)"),
)
TLS_FILES = ("ca_file", "cert_file", "key_file")


def read_km_client(path: Path) -> KMClientSettings:
    """The settings in ``path``, the defaults if there is no such file; ConfigError(s) if it is bad."""
    # imported here: the km package imports config
    from enstratus_workers.km.tls import tls_file_problems

    entries = read_cfg(path, KEYS)
    if entries is None:
        return KMClientSettings()
    values = {name: entry.value for name, entry in entries.items()}
    home = _install_root(Path(path))
    for key in TLS_FILES:
        if key in values:
            values[key] = home / Path(values[key])   # an absolute path stays as it is
    settings = KMClientSettings(**values, source=path)
    if settings.ssl:
        raise_all(tls_file_problems({key: getattr(settings, key) for key in TLS_FILES}, path,
                                    lambda key: entries[key].line if key in entries else None))
    return settings


def _install_root(path: Path) -> Path:
    """The install root of ``services/worker/classes/FILENAME`` (three levels above the file's
    directory); for a file kept anywhere else, its own directory."""
    parents = path.resolve().parents
    return parents[3] if len(parents) > 3 and parents[0].name == "classes" else parents[0]
