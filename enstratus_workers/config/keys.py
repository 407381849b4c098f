"""The ``ENCRYPTION_KEY`` of ``enstratus-provisioning.cfg``: making one and writing it unexposed.

The file is written to a temporary file created with ``O_EXCL`` and mode 0600, so the key is
never readable by others even for an instant, and then moved into place in one step, so no
process ever reads half a file. The generated file is not committed; its template
(``enstratus-provisioning.cfg.in``) is.
"""

from __future__ import annotations

import base64
import logging
import os
import re
import secrets
from pathlib import Path

from enstratus_workers.config.files import read_text
from enstratus_workers.config.provisioning_file import FILENAME, KEY, TEMPLATE
from enstratus_workers.layout import Layout

log = logging.getLogger(__name__)

# Used when an install has lost its template: the same keys, so the service can still start.
FALLBACK_TEMPLATE = f"""\
# AES-256 key for traffic with the KM service: base64 of 32 random bytes.
{KEY} =
# Comma-separated CIDRs from which the workers reach guest VMs (put into their firewall rules).
SOURCE_CIDR = 127.0.0.1/32
"""
_KEY_LINE = re.compile(rf"^([ \t]*{KEY}[ \t]*=).*$", re.MULTILINE)


def generate_key() -> str:
    """A fresh key: base64 of 32 bytes from the OS's cryptographic random source."""
    return base64.b64encode(secrets.token_bytes(32)).decode("ascii")


def with_key(text: str, key: str) -> str:
    """``text`` with the value of its ``ENCRYPTION_KEY`` line(s) replaced, or such a line appended."""
    if _KEY_LINE.search(text):
        return _KEY_LINE.sub(lambda m: f"{m.group(1)} {key}", text)
    return text + ("" if not text or text.endswith("\n") else "\n") + f"{KEY} = {key}\n"


def _template_text(path: Path) -> str:
    found = read_text(path.with_name(TEMPLATE))
    return FALLBACK_TEMPLATE if found is None else found[0]


def _private_temp(directory: Path, content: str) -> Path:
    """A new file in ``directory``, mode 0600 from its creation on, holding ``content``, synced."""
    while True:
        tmp = directory / f".{FILENAME}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            break
        except FileExistsError:
            continue
    try:
        os.write(fd, content.encode("utf-8"))
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink()
        raise
    os.close(fd)
    return tmp


def _sync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def ensure_provisioning_file(layout: Layout) -> bool:
    """Create ``enstratus-provisioning.cfg`` with a fresh key if it is missing; True if it did.

    Safe when several daemons start at once: the file is linked into place, which fails if
    another process got there first, and then that process's key is the one everybody uses.
    """
    path = layout.classes_dir / FILENAME
    if os.path.lexists(path):
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _private_temp(path.parent, with_key(_template_text(path), generate_key()))
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False
    finally:
        tmp.unlink()
    _sync_dir(path.parent)
    log.info("generated %s with a new %s", path, KEY)
    return True


def write_new_key(path: Path) -> None:
    """Put a fresh key into the file at ``path`` (``enstratus-workers keygen``), keeping its other lines.

    A missing file is created from the template next to it. The result is mode 0600 whatever the
    old file's mode was, and keeps the old file's owner where the caller is allowed to set it.
    """
    path = Path(path)
    found = read_text(path)
    text = _template_text(path) if found is None else found[0]
    tmp = _private_temp(path.parent, with_key(text, generate_key()))
    try:
        if found is not None:
            old = os.stat(path)
            try:
                os.chown(tmp, old.st_uid, old.st_gid)
            except PermissionError:
                pass  # not allowed to give files away: the new file stays the caller's
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _sync_dir(path.parent)
    log.info("wrote a new %s to %s", KEY, path)
