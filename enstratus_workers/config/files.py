"""Reading a config file's text safely, and refusing secret-holding files others can read.

The mode is taken from the descriptor the text was read through, so the permission check judges
the very file that was read (no window between ``stat`` and ``open``).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from enstratus_workers.errors import ConfigError


def decode(data: bytes) -> str:
    """UTF-8 as Java 9+ reads ``.properties`` files (BOM dropped), Latin-1 if it is not valid UTF-8."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def read_text(path: Path) -> tuple[str, int] | None:
    """The file's decoded text and permission bits, or ``None`` if there is no such file."""
    try:
        # O_NONBLOCK: a FIFO put where a config file belongs must not hang the daemon's start
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"cannot open: {exc.strerror}", file=path) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError("is not a regular file", file=path)
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", file=path) from None
    finally:
        os.close(fd)
    return decode(b"".join(chunks)), stat.S_IMODE(info.st_mode)


def exposure(path: Path, mode: int, key: str, line: int | None) -> ConfigError | None:
    """The refusal, as ssh refuses a private key, of a secret-holding file group or others can read."""
    if not mode & 0o044:
        return None
    who = " and ".join(w for w, bit in (("group", 0o040), ("others", 0o004)) if mode & bit)
    return ConfigError(f"holds a secret but is readable by {who} (mode {mode:04o}); "
                       f"restrict it with: chmod 600 {path}", file=path, key=key, line=line)
