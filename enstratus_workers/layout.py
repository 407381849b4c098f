"""Where things live under the install root: config classes, pid files, logs and data files.

The install root is the checkout by default (so the README's commands work in place) and
``ENSTRATUS_HOME`` for a system install. Nothing here reads the environment at import time.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

from enstratus_workers.jobs.wakeup import BELLS_DIR

_CHECKOUT = Path(__file__).resolve().parent.parent


def default_home(environ=None) -> Path:
    """The install root: ``$ENSTRATUS_HOME`` if set, else the checkout this package sits in."""
    environ = os.environ if environ is None else environ
    home = environ.get("ENSTRATUS_HOME")
    return Path(home).resolve() if home else _CHECKOUT


def short_hostname() -> str:
    return socket.gethostname().split(".")[0] or "localhost"


class BadName(ValueError):
    """A daemon or file name that would not stay a plain name inside its directory."""


def check_daemon_name(name: str) -> str:
    """``name`` if it is a valid daemon instance name (``limits.DAEMON_NAME_PATTERN``), else
    ``BadName`` saying what a name may hold. The name is shown escaped: it may hold anything."""
    # imported here: the config package imports this module
    from enstratus_workers.config.limits import DAEMON_NAME_RULE, valid_daemon_name

    if not valid_daemon_name(name):
        shown = ascii(name if len(name) <= 80 else name[:77] + "...")
        raise BadName(f"invalid name {shown}: use {DAEMON_NAME_RULE}")
    return name


def inside(directory: Path, filename: str) -> Path:
    """``directory / filename``, refused (``BadName``) unless it is a plain entry of ``directory``.

    The last line of defence under the name pattern: no separator, no ``..``, no NUL.
    """
    path = directory / filename
    if (not filename or filename in (".", "..") or "\0" in filename
            or os.sep in filename or (os.altsep and os.altsep in filename) or path.parent != directory):
        raise BadName(f"{ascii(filename)} is not a file name inside {directory}")
    return path


@dataclass(frozen=True)
class Layout:
    """Paths of one install. Directories are created on demand by ``ensure_dirs``."""

    home: Path

    @classmethod
    def from_env(cls, environ=None) -> "Layout":
        return cls(default_home(environ))

    @property
    def worker_dir(self) -> Path:
        return self.home / "services" / "worker"

    @property
    def classes_dir(self) -> Path:
        return self.worker_dir / "classes"

    @property
    def bin_dir(self) -> Path:
        return self.worker_dir / "bin"

    @property
    def run_dir(self) -> Path:
        return self.worker_dir / "run"

    @property
    def log_dir(self) -> Path:
        return self.worker_dir / "log"

    @property
    def data_dir(self) -> Path:
        """Embedded databases and the embedded queue file."""
        return self.worker_dir / "data"

    @property
    def km_dir(self) -> Path:
        return self.home / "services" / "km"

    def pid_file(self, daemon: str, name: str) -> Path:
        return inside(self.run_dir, f"{daemon}@{check_daemon_name(name)}.pid")

    def log_file(self, daemon: str, name: str) -> Path:
        return inside(self.log_dir, f"{daemon}@{check_daemon_name(name)}.log")

    def resolve(self, path: str | os.PathLike) -> Path:
        """A path from a config file: relative paths are relative to the install root."""
        p = Path(path)
        return p if p.is_absolute() else self.home / p

    def ensure_dirs(self) -> None:
        for d in (self.run_dir, self.log_dir, self.data_dir):
            d.mkdir(parents=True, exist_ok=True)
        # pid files, sockets and embedded data are private to the service account
        for d in (self.run_dir, self.data_dir):
            os.chmod(d, 0o700)
        # made by the service account, so that a waiter run as it finds it writable (a first
        # waiter run as root would otherwise make it root's: jobs/wakeup.py)
        (self.run_dir / BELLS_DIR).mkdir(exist_ok=True)
