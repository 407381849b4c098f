"""``services/worker/classes/admin.cfg``: where the admin daemon listens and which token it wants.

Read like every ``.cfg`` of the service (``config.cfgfile``) into one immutable ``AdminSettings``;
a missing file means the defaults (127.0.0.1:8777, a token generated into
``services/worker/run/admin.token``). The token is a secret: set in ``admin.cfg`` it makes that
file subject to the permission rule (refused unless only its owner can read it), and the token
file itself is refused when group or others can read it, as ssh refuses a key.
"""

from __future__ import annotations

import logging
import os
import secrets
from dataclasses import dataclass, replace
from pathlib import Path

from enstratus_workers.config.cfgfile import CfgKey, read_cfg
from enstratus_workers.config.files import exposure, read_text
from enstratus_workers.config.settings import Secret
from enstratus_workers.errors import ConfigError
from enstratus_workers.layout import Layout

log = logging.getLogger(__name__)

FILENAME = "admin.cfg"
MIN_TOKEN_CHARS = 16  # a token shorter than this is guessable, whoever chose it

KEYS = (
    CfgKey("host", "string(min=1)"),
    CfgKey("port", "integer(0, 65535)"),
    CfgKey("token_file", "string(min=1)"),
    CfgKey("token", "string()"),
    CfgKey("refresh", "float(min=0.5, max=300)"),
    CfgKey("max_body", "integer(1024, 67108864)"),
    CfgKey("session_idle", "integer(60, 604800)"),
    CfgKey("session_max", "integer(60, 2592000)"),
    CfgKey("header_timeout", "float(min=1, max=300)"),
    CfgKey("server_names", "string()"),
)


@dataclass(frozen=True)
class AdminSettings:
    """The admin daemon's settings; ``token_file`` is resolved against the install root."""

    host: str = "127.0.0.1"
    port: int = 8777                      # 0: any free port (the daemon writes its URL to run/)
    token_file: Path = Path("services/worker/run/admin.token")
    token: Secret = Secret("")            # set in admin.cfg instead of the file (then chmod 600)
    refresh: float = 3.0                  # seconds between the pages' refreshes
    max_body: int = 1 << 20               # bytes a request body may have
    session_idle: int = 30 * 60           # seconds a page session lasts without a request
    session_max: int = 12 * 3600          # seconds a page session lasts at most (then log in again)
    header_timeout: float = 10.0          # seconds a client has to send a request's headers
    server_names: tuple[str, ...] = ()    # more Host values that name this daemon (space-separated)
    source: Path | None = None


def admin_cfg_path(layout: Layout) -> Path:
    return layout.classes_dir / FILENAME


def load_admin_settings(layout: Layout, path: Path | None = None) -> AdminSettings:
    """Read and validate ``admin.cfg``; ``ConfigError`` naming file, key and line if it is bad."""
    path = admin_cfg_path(layout) if path is None else Path(path)
    entries = read_cfg(path, KEYS, secret="token")
    if entries is None:
        return replace(AdminSettings(), token_file=layout.resolve(AdminSettings.token_file))
    values = {name: entry.value for name, entry in entries.items()}
    token = values.pop("token", "").strip()
    if token and len(token) < MIN_TOKEN_CHARS:
        raise ConfigError(f"must be at least {MIN_TOKEN_CHARS} characters", file=path, key="token",
                          line=entries["token"].line)
    if token:
        values["token"] = Secret(token)
    if "server_names" in values:
        values["server_names"] = tuple(values["server_names"].lower().split())
    if "token_file" in values:
        values["token_file"] = Path(values["token_file"])
    s = AdminSettings(**values, source=path)
    return replace(s, token_file=layout.resolve(s.token_file))


def load_token(settings: AdminSettings) -> Secret:
    """The token every request must bear: ``admin.cfg``'s, else the token file's, created on first
    start (mode 0600 from its creation on, linked into place so two starts agree on one token)."""
    if settings.token:
        return settings.token
    path = settings.token_file
    found = read_text(path)
    if found is None:
        _create_token_file(path)
        found = read_text(path)
        if found is None:
            raise ConfigError("was created but cannot be read back", file=path)
    text, mode = found
    refusal = exposure(path, mode, "token", 1)
    if refusal is not None:
        raise refusal
    token = text.strip()
    if len(token) < MIN_TOKEN_CHARS or any(c.isspace() for c in token):
        raise ConfigError(f"must hold one token of at least {MIN_TOKEN_CHARS} characters "
                          "(delete the file to have a new one generated)", file=path)
    return Secret(token)


def _create_token_file(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, (secrets.token_urlsafe(32) + "\n").encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)
        log.info("generated the admin token in %s", path)
    except FileExistsError:
        pass  # another start won the race: its token is the one
    finally:
        tmp.unlink()
