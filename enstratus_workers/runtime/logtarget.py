"""Where a daemon's log goes: its log file, or stderr only (the journal, under systemd).

``ENSTRATUS_LOG_TARGET`` decides, read by the runner when a daemon starts (never at import):

- ``file``: the daemon's log file under ``services/worker/log/`` (``services/km/log/``);
- ``journal``: no file; records go to stderr, which a systemd unit connects to the journal;
- ``auto`` (the default, also when unset or empty): ``journal`` when stderr *is* the journal
  stream, else ``file``.

systemd says which stream is the journal's in ``JOURNAL_STREAM`` (``<device>:<inode>`` of
stdout and stderr). The variable alone proves nothing: every child inherits it, also one whose
stderr a wrapper redirected to a file; so ``auto`` compares it with what fd 2 really is, as
systemd's documentation asks. Worker processes follow their subscriber: spawned with its stderr
under ``journal``, they find the same stream there and log to it too.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from enstratus_workers.errors import ConfigError

ENV = "ENSTRATUS_LOG_TARGET"
AUTO, FILE, JOURNAL = "auto", "file", "journal"
TARGETS = (AUTO, FILE, JOURNAL)


def stderr_is_journal(environ: Mapping[str, str], fd: int = 2) -> bool:
    """True if ``JOURNAL_STREAM`` names the file that ``fd`` is open on."""
    dev, sep, ino = environ.get("JOURNAL_STREAM", "").partition(":")
    if not sep or not dev.isdigit() or not ino.isdigit():
        return False
    try:
        st = os.fstat(fd)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == (int(dev), int(ino))


def resolve(environ: Mapping[str, str] | None = None, fd: int = 2) -> str:
    """``FILE`` or ``JOURNAL`` for this process; a bad value is a ``ConfigError`` naming the key."""
    environ = os.environ if environ is None else environ
    value = environ.get(ENV, "") or AUTO
    if value not in TARGETS:
        raise ConfigError(f"{value!r} is not one of {', '.join(TARGETS)}", file="environment", key=ENV)
    if value == AUTO:
        return JOURNAL if stderr_is_journal(environ, fd) else FILE
    return value


def to_journal(environ: Mapping[str, str] | None = None) -> bool:
    """True when this process logs to stderr only (see ``resolve``)."""
    return resolve(environ) == JOURNAL
