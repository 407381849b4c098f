"""``services/km/classes/km.cfg``: how the KM daemon listens, where it keeps credentials, its keys.

Read like every ``.cfg`` of the service (``config.cfgfile``: configobj against a validate spec,
messages that never repeat a value, every problem reported at once) into one immutable
``KMSettings``. Defaults are the dataclass's field defaults; a missing ``km.cfg`` means all of
them, so the embedded set-up needs no editing. A ``km.cfg`` holding a secret
(``old_encryption_key``, or a password in ``credentials_url``) that group or others can read is
refused, as ssh refuses a key.

The traffic key is not in ``km.cfg``: it is ``ENCRYPTION_KEY`` of the provisioning file the
workers use too (``provisioning_cfg``), so both sides are configured from one place.

``ssl = true`` puts TLS 1.3 under the sealed frames (``tls.py``): ``ca_file``, ``cert_file`` and
``key_file`` (0600) are then required and checked here, and ``access_file`` (``access.py``) says
which client certificate may use which accounts; it must exist (an empty one grants nothing).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from enstratus_workers.config import converters
from enstratus_workers.config.cfgfile import CfgKey, parse_cfg
from enstratus_workers.config.files import exposure, read_text
from enstratus_workers.config.problems import flatten, raise_all
from enstratus_workers.config.provisioning_file import read_provisioning
from enstratus_workers.config.settings import Secret
from enstratus_workers.errors import ConfigError
from enstratus_workers.km.access import load_access
from enstratus_workers.km.tls import TLSFiles, tls_file_problems
from enstratus_workers.layout import Layout

FILENAME = "km.cfg"

KEYS = (
    CfgKey("host", "string(min=1)"),
    CfgKey("port", "integer(0, 65535)"),
    CfgKey("credentials_url", "string(min=1)"),
    CfgKey("master_key_file", "string(min=1)"),
    CfgKey("replay_window", "float(min=1, max=3600)"),
    CfgKey("replay_cache_size", "integer(1000, 10000000)"),
    CfgKey("old_encryption_key", "string()"),
    CfgKey("provisioning_cfg", "string(min=1)"),
    CfgKey("max_frame", "integer(4096, 16777216)"),
    CfgKey("max_connections", "integer(1, 10000)"),
    CfgKey("idle_timeout", "float(min=0.1, max=86400)"),
    CfgKey("frame_timeout", "float(min=0.1, max=600)"),
    CfgKey("first_frame_timeout", "float(min=0.1, max=600)"),
    CfgKey("max_pending_per_address", "integer(1, 10000)"),
    CfgKey("ssl", "boolean()"),
    CfgKey("ca_file", "string(min=1)"),
    CfgKey("cert_file", "string(min=1)"),
    CfgKey("key_file", "string(min=1)"),
    CfgKey("access_file", "string(min=1)"),
)
_PATHS = ("master_key_file", "provisioning_cfg", "ca_file", "cert_file", "key_file", "access_file")
_TLS_FILES = ("ca_file", "cert_file", "key_file")


@dataclass(frozen=True)
class KMSettings:
    """The KM daemon's settings; paths (and a relative SQLite URL) are resolved against the home."""

    host: str = "127.0.0.1"
    port: int = 2013
    credentials_url: Secret = Secret("sqlite:///services/km/data/credentials.db")
    master_key_file: Path = Path("services/km/classes/km-master.key")
    replay_window: float = 120.0          # seconds a request may be early or late; ids kept as long
    replay_cache_size: int = 100_000      # request ids remembered at most
    old_encryption_key: Secret = Secret(b"")  # the previous ENCRYPTION_KEY during a rotation
    provisioning_cfg: Path = Path("services/worker/classes/enstratus-provisioning.cfg")
    max_frame: int = 1 << 20              # bytes; larger frames are refused before being read
    max_connections: int = 64             # open at once; half is kept for authenticated clients
    idle_timeout: float = 60.0            # seconds an authenticated connection may wait between requests
    frame_timeout: float = 10.0           # seconds a later frame may take to arrive once begun
    first_frame_timeout: float = 3.0      # seconds from accept until the first frame must be whole
    max_pending_per_address: int = 16     # not yet authenticated connections from one address
    ssl: bool = False                     # TLS 1.3 with client certificates under the sealed frames
    ca_file: Path | None = None           # the CA client certificates must come from (ssl = true)
    cert_file: Path | None = None         # the KM's certificate (ssl = true)
    key_file: Path | None = None          # its private key, mode 0600 (ssl = true)
    access_file: Path = Path("services/km/classes/km-access.cfg")  # who may use which accounts
    source: Path | None = None

    @property
    def tls_files(self) -> TLSFiles:
        return TLSFiles(self.ca_file, self.cert_file, self.key_file)


def km_cfg_path(layout: Layout) -> Path:
    return layout.km_dir / "classes" / FILENAME


def load_km_settings(layout: Layout, path: Path | None = None) -> KMSettings:
    """Read and validate ``km.cfg`` (default: ``services/km/classes/km.cfg`` of the install)."""
    path = km_cfg_path(layout) if path is None else Path(path)
    found = read_text(path)
    if found is None:
        return _resolved(KMSettings(), layout)
    text, mode = found
    entries = parse_cfg(text, KEYS, path)
    values = {name: entry.value for name, entry in entries.items()}
    errors: list[ConfigError] = []

    def line(key):
        return entries[key].line if key in entries else None

    if values.get("old_encryption_key", "").strip():
        try:
            values["old_encryption_key"] = Secret(converters.encryption_key(values["old_encryption_key"]))
        except ValueError as exc:
            errors.append(ConfigError(str(exc), file=path, key="old_encryption_key", line=line("old_encryption_key")))
        refusal = exposure(path, mode, "old_encryption_key", line("old_encryption_key"))
        errors.extend([refusal] if refusal else [])
    else:
        values.pop("old_encryption_key", None)
    if "credentials_url" in values:
        try:
            values["credentials_url"] = Secret(converters.db_url(values["credentials_url"]))
        except ValueError as exc:
            errors.append(ConfigError(str(exc), file=path, key="credentials_url", line=line("credentials_url")))
        else:
            if converters.url_has_password(values["credentials_url"].reveal()):
                refusal = exposure(path, mode, "credentials_url", line("credentials_url"))
                errors.extend([refusal] if refusal else [])
    raise_all(errors)
    for key in _PATHS:
        if key in values:
            values[key] = Path(values[key])
    settings = _resolved(KMSettings(**values, source=path), layout)
    if settings.ssl:
        raise_all(tls_problems(settings, line))
    return settings


def tls_problems(s: KMSettings, line=lambda key: None) -> list[ConfigError]:
    """Why ``s`` (with ``ssl = true``) cannot serve TLS: its files, then its access list."""
    errors = tls_file_problems({key: getattr(s, key) for key in _TLS_FILES}, s.source, line)
    if not s.access_file.exists():
        errors.append(ConfigError(f"{s.access_file} does not exist; with ssl = true the KM needs "
                                  f"its access list (an empty file grants nothing)",
                                  file=s.source, key="access_file", line=line("access_file")))
        return errors
    try:
        load_access(s.access_file)
    except ConfigError as exc:
        errors.extend(flatten(exc))
    return errors


def _resolved(s: KMSettings, layout: Layout) -> KMSettings:
    url = s.credentials_url.reveal()
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        url = "sqlite:///" + str(layout.resolve(url[len("sqlite:///"):]))
    files = {key: layout.resolve(getattr(s, key)) for key in _TLS_FILES if getattr(s, key) is not None}
    return replace(s, credentials_url=Secret(url), master_key_file=layout.resolve(s.master_key_file),
                   provisioning_cfg=layout.resolve(s.provisioning_cfg),
                   access_file=layout.resolve(s.access_file), **files)


def read_encryption_key(path: Path) -> Secret:
    """``ENCRYPTION_KEY`` of an ``enstratus-provisioning.cfg``, read as the workers read it."""
    return read_provisioning(Path(path)).encryption_key
