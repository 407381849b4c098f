"""Tell systemd how a daemon is doing (``sd_notify``), for units with ``Type=notify``.

The protocol is one datagram of ``KEY=value`` lines to the unix socket named by
``$NOTIFY_SOCKET`` (a path, or an abstract name when it starts with ``@``). Written by hand
rather than through libsystemd: a dozen lines are not worth a dependency, and a host without
systemd simply has no ``$NOTIFY_SOCKET``.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import MutableMapping

log = logging.getLogger(__name__)

ENV = "NOTIFY_SOCKET"


def socket_address(name: str) -> str | bytes:
    """The ``sendto`` address of ``$NOTIFY_SOCKET``: ``@name`` is the abstract ``\\0name``."""
    if name.startswith("@"):
        return b"\0" + name[1:].encode()
    if name.startswith("/"):
        return name
    raise ValueError(f"{ENV}={name!r} is neither a socket path nor an abstract name (@...)")


def send(name: str, *assignments: str) -> None:
    """Send ``assignments`` (``"READY=1"``, ...) as one datagram to the socket ``name``; raises
    ``OSError`` or ``ValueError``."""
    address = socket_address(name)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.sendto("\n".join(assignments).encode(), address)


class SystemdNotifier:
    """This process's notification socket, taken out of the environment once."""

    def __init__(self, name: str | None):
        self.name = name

    @classmethod
    def from_environment(cls, environ: MutableMapping[str, str] | None = None) -> SystemdNotifier:
        """Take ``$NOTIFY_SOCKET`` and remove it, so that the worker processes and daemons this
        one starts do not report to systemd as the unit's main process (systemd would log each
        such message as refused)."""
        environ = os.environ if environ is None else environ
        return cls(environ.pop(ENV, None) or None)

    def notify(self, *assignments: str) -> bool:
        """Send; True if systemd was told. A lost notification never stops the daemon: systemd
        then times the start out, which says more than a crash would."""
        if self.name is None:
            return False
        try:
            send(self.name, *assignments)
        except (OSError, ValueError) as exc:
            log.warning("could not notify systemd (%s): %s", ", ".join(assignments), exc)
            return False
        return True
