"""Least privilege: a daemon started as root becomes the service account before it opens anything.

The account is ``ENSTRATUS_USER``, from the environment or else from
``/etc/default/enstratus-workers`` (the KM also reads ``/etc/default/enstratus-km`` first), the
files the init scripts source. Started as root, a daemon

1. creates the directories it writes (``run/``, ``log/``, ``data/`` of the install; the KM's too)
   and gives them, with whatever root left in them, to the account;
2. creates the key files generated on first use if they are missing (the provisioning file's
   ENCRYPTION_KEY; the KM's master key), owned by the account: it could not write them into
   the root-owned ``classes/``;
3. takes the account's uid, primary gid and supplementary groups (``initgroups``: the account's
   own, root's are dropped), and checks that root cannot be regained.

Only then does the runner load the settings, write its pid file and open its log, sockets and
databases, so everything the daemon creates is the account's, and a config file the account
cannot read fails now rather than at the watchdog's first restart.

What an operator gets:

- not root: nothing changes (systemd's ``User=``, or an operator starting it by hand);
- root, ``ENSTRATUS_USER`` unset or empty: the daemon stays root and warns on stderr, so existing
  installs keep starting; ``ENSTRATUS_USER=root`` keeps root without the warning;
- root, an account that does not exist: refused, exit 6 (not configured) naming the account and
  where it was set.
"""

from __future__ import annotations

import grp
import os
import pwd
import shlex
import stat
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from enstratus_workers import errors
from enstratus_workers.errors import ConfigError
from enstratus_workers.layout import Layout

KEY = "ENSTRATUS_USER"
WORKERS_DEFAULTS = Path("/etc/default/enstratus-workers")
KM_DEFAULTS = Path("/etc/default/enstratus-km")


@dataclass(frozen=True)
class Account:
    """The service account, as the password database has it."""

    name: str
    uid: int
    gid: int
    home: str

    @property
    def group(self) -> str:
        try:
            return grp.getgrgid(self.gid).gr_name
        except KeyError:
            return str(self.gid)


def defaults_files(daemon: str) -> tuple[Path, ...]:
    """The files a daemon's init script sources, most specific first."""
    return (KM_DEFAULTS, WORKERS_DEFAULTS) if daemon == "km" else (WORKERS_DEFAULTS,)


def read_default(path: Path, key: str) -> tuple[str, int] | None:
    """The value (and line) a shell sourcing ``path`` would give ``key``: the last
    ``[export ]KEY=value`` line, quotes removed. None if the file or the key is absent."""
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", file=path) from None
    found = None
    for number, line in enumerate(lines, 1):
        words = line.strip().removeprefix("export ").lstrip()
        if not words.startswith(f"{key}="):
            continue
        try:
            value = shlex.split(words[len(key) + 1:], comments=True)
        except ValueError as exc:
            raise ConfigError(f"cannot parse the value: {exc}", file=path, key=key, line=number) from None
        found = (" ".join(value), number)
    return found


@dataclass(frozen=True)
class Setting:
    """Where the account's name came from, for messages that send the operator to the fix."""

    value: str
    file: Path | None = None
    line: int | None = None

    @property
    def origin(self) -> str:
        """Said after the value when no file is named: the environment set it."""
        return "" if self.file is not None else " (set in the environment)"

    def error(self, reason: str) -> ConfigError:
        return ConfigError(reason, file=self.file, key=KEY, line=self.line)


def configured_user(environ: Mapping[str, str], files: Iterable[Path]) -> Setting | None:
    """``ENSTRATUS_USER`` from the environment, else from the first of ``files`` that sets it;
    None when unset or empty (an empty value is how a defaults file says "not configured")."""
    if KEY in environ:
        return Setting(environ[KEY]) if environ[KEY] else None
    for path in files:
        found = read_default(path, KEY)
        if found is not None:
            return Setting(found[0], path, found[1]) if found[0] else None
    return None


def lookup(setting: Setting) -> Account:
    """The account ``setting`` names; ``ConfigError`` if there is none."""
    try:
        pw = pwd.getpwnam(setting.value)
    except (KeyError, ValueError):  # ValueError: a NUL in the name
        raise setting.error(f"no such user {setting.value!r}{setting.origin}: create it (useradd --system "
                            f"--no-create-home --shell /usr/sbin/nologin {shlex.quote(setting.value)}) "
                            f"or name an existing one") from None
    return Account(pw.pw_name, pw.pw_uid, pw.pw_gid, pw.pw_dir)


def writable_dirs(layout: Layout, daemon: str) -> list[tuple[Path, int]]:
    """(directory, mode) of every directory the daemon writes: pid files, sockets and embedded
    data are private to the account (0700, as ``Layout.ensure_dirs`` makes them), logs 0750."""
    dirs = [(layout.run_dir, 0o700), (layout.log_dir, 0o750), (layout.data_dir, 0o700)]
    if daemon == "km":
        dirs += [(layout.km_dir / "run", 0o700), (layout.km_dir / "log", 0o750),
                 (layout.km_dir / "data", 0o700)]
    return dirs


def give_tree(top: Path, account: Account) -> int:
    """Make ``top`` and everything under it the account's; returns how many entries changed.

    Walks with ``os.fwalk`` and changes each entry relative to its directory's descriptor, never
    following a symlink: the account owns these directories, and a link it planted must not make
    root give away a file elsewhere.
    """
    changed = 0
    for _dirpath, dirnames, filenames, dirfd in os.fwalk(top, follow_symlinks=False):
        st = os.fstat(dirfd)
        if (st.st_uid, st.st_gid) != (account.uid, account.gid):
            os.fchown(dirfd, account.uid, account.gid)
            changed += 1
        for entry in filenames + [d for d in dirnames if _is_link(d, dirfd)]:
            st = os.stat(entry, dir_fd=dirfd, follow_symlinks=False)
            if (st.st_uid, st.st_gid) != (account.uid, account.gid):
                os.chown(entry, account.uid, account.gid, dir_fd=dirfd, follow_symlinks=False)
                changed += 1
    return changed


def _is_link(name: str, dirfd: int) -> bool:
    """fwalk lists a symlink to a directory among the directories without descending into it."""
    return stat.S_ISLNK(os.stat(name, dir_fd=dirfd, follow_symlinks=False).st_mode)


def prepare(layout: Layout, daemon: str, account: Account) -> None:
    """As root: the daemon's directories and first-use key files, created and given to ``account``."""
    for directory, mode in writable_dirs(layout, daemon):
        directory.mkdir(parents=True, exist_ok=True)
        if not directory.is_symlink():
            os.chmod(directory, mode)
        give_tree(directory, account)
    for path, create in first_use_keys(layout, daemon):
        if not os.path.lexists(path):
            create()
            os.chown(path, account.uid, account.gid, follow_symlinks=False)


def first_use_keys(layout: Layout, daemon: str) -> list[tuple[Path, Callable[[], object]]]:
    """(file, how to create it) of the keys a daemon generates on its first start, in
    directories (``classes/``) the account cannot write: the ENCRYPTION_KEY file every daemon
    reads, and the KM's master key."""
    from enstratus_workers.config import ensure_provisioning_file

    keys: list[tuple[Path, Callable[[], object]]] = [
        (layout.classes_dir / "enstratus-provisioning.cfg", lambda: ensure_provisioning_file(layout))]
    if daemon == "km":
        from enstratus_workers.km.config import load_km_settings
        from enstratus_workers.km.store import load_or_create_master_key

        master = load_km_settings(layout).master_key_file
        keys.append((master, lambda: load_or_create_master_key(master)))
    return keys


def become(account: Account, environ: dict | None = None) -> None:
    """Take the account's identity for good (real, effective and saved ids), its supplementary
    groups instead of root's, and its HOME/USER/LOGNAME. Raises ``PermissionError`` if root could
    be regained afterwards: then the drop did not happen, whatever the calls returned."""
    environ = os.environ if environ is None else environ
    os.initgroups(account.name, account.gid)
    os.setresgid(account.gid, account.gid, account.gid)
    os.setresuid(account.uid, account.uid, account.uid)
    try:
        os.setuid(0)
    except PermissionError:
        pass
    else:
        raise PermissionError(f"still able to become root after switching to {account.name}")
    environ.update(HOME=account.home, USER=account.name, LOGNAME=account.name)


def account_to_become(label: str, daemon: str, environ: Mapping[str, str]) -> Account | None:
    """The account a daemon started as root must become; None to stay root (warned on stderr
    when no account is configured)."""
    setting = configured_user(environ, defaults_files(daemon))
    if setting is None:
        print(f"{label}: warning: running as root; set {KEY} (in the environment or "
              f"{WORKERS_DEFAULTS}) to the service account, or to root to keep root "
              f"without this warning", file=sys.stderr)
        return None
    account = lookup(setting)
    return None if account.uid == 0 else account


def drop_if_root(label: str, daemon: str, layout: Layout, environ: dict | None = None) -> int | None:
    """The runner's first step of ``start``/``run``: None to go on (as the account, or as root
    when none is configured), else the exit code of a refusal already printed on stderr."""
    environ = os.environ if environ is None else environ
    if os.geteuid() != 0:
        return None
    account = None
    try:
        account = account_to_become(label, daemon, environ)
        if account is not None:
            prepare(layout, daemon, account)
            become(account, environ)
    except ConfigError as exc:
        print(f"{label}: configuration error: {exc}", file=sys.stderr)
        return errors.EXIT_NOT_CONFIGURED
    except OSError as exc:  # account is set: lookups raise ConfigError only
        print(f"{label}: cannot run as {account.name if account else KEY}: {exc}", file=sys.stderr)
        return errors.EXIT_GENERIC
    return None
