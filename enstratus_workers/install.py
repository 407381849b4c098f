"""``make install`` and ``make uninstall``: the service installed where the enStratus docs put it.

``/etc/init.d/enstratus-workers`` (or, where systemd runs, the units of ``etc/systemd/``), the
daemons' launchers in ``/services/worker/bin``, the config files in ``/services/worker/classes``,
the package in its own virtualenv ``/services/worker/venv``, the KM beside it in
``/services/km``, ``/etc/default/enstratus-workers`` and ``/etc/logrotate.d/enstratus-workers``.
Every file written is listed in ``/services/worker/.installed-files`` (the manifest), which is
how ``uninstall`` knows what to remove and a reinstall knows which config files were edited.

PREFIX is the services directory (``/services``); the code's install root (``ENSTRATUS_HOME``,
under which it reads ``services/worker/...``) is its parent, so PREFIX must end in ``/services``.

DESTDIR is a scratch root that runs where it is: the paths written into the installed files
(init scripts, the defaults file, units, logrotate) carry DESTDIR, so
``$DESTDIR/etc/init.d/enstratus-workers start`` runs the install under DESTDIR and nothing of
the host's. With DESTDIR no user is created and nothing is registered with update-rc.d or
systemd. It is not a packaging stage: the virtualenv is built in place.

The system Python runs this module from the checkout before the virtualenv exists, so it uses
the standard library only.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from enstratus_workers.jobs.wakeup import BELLS_DIR

CHECKOUT = Path(__file__).resolve().parent.parent
MANIFEST = ".installed-files"
INIT_SCRIPTS = ("enstratus-km", "enstratus-workers")   # registered in this order: the KM first
DEFAULTS = "enstratus-workers"
LOGROTATE = "enstratus-workers"
#: made by the service itself (keys, the provisioning file with ENCRYPTION_KEY): never shipped
GENERATED = frozenset({"enstratus-provisioning.cfg", "km-master.key"})
#: daemons write here: owned by the service user, kept by uninstall when not empty
STATE_DIRS = ("run", "log", "data")
PLACEHOLDER = re.compile(r"@([A-Z][A-Z0-9_]*)@(/?)")
USER_NAME = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
#: paths go into shell strings and unit files unquoted-safe only without these
UNSAFE_IN_PATH = re.compile(r"[\s\"'$`\\%;]")

EXIT_FAILED = 1
EXIT_USAGE = 2


class InstallError(Exception):
    """The install cannot go on; the message says why and what to do."""


class UsageError(InstallError):
    """A bad PREFIX, DESTDIR or ENSTRATUS_USER (exit 2, before anything is written)."""


# --- where things go ------------------------------------------------------------------------

@dataclass(frozen=True)
class Paths:
    """The install's paths on this machine: under ``root`` (``/``, or DESTDIR)."""

    root: Path
    prefix: Path

    @classmethod
    def of(cls, destdir: str, prefix: str) -> Paths:
        if not prefix.startswith("/"):
            raise UsageError(f"PREFIX={prefix!r} must be an absolute path")
        p = Path(os.path.normpath(prefix))
        if p.name != "services":
            raise UsageError(
                f"PREFIX={prefix!r} must end in /services: the service reads services/worker/... "
                f"under its install root, here {p.parent}; use PREFIX={p / 'services'}")
        root = Path(os.path.abspath(destdir)) if destdir else Path("/")
        paths = cls(root, p)
        if UNSAFE_IN_PATH.search(str(paths.services)):
            raise UsageError(f"{paths.services} holds a space, quote or shell character: "
                               "init scripts and units could not name it safely")
        return paths

    @property
    def staged(self) -> bool:
        return self.root != Path("/")

    def _under_root(self, path: Path) -> Path:
        return self.root / path.relative_to("/")

    @property
    def services(self) -> Path:
        return self._under_root(self.prefix)

    @property
    def home(self) -> Path:
        """ENSTRATUS_HOME: the directory holding ``services/``."""
        return self.services.parent

    @property
    def worker(self) -> Path:
        return self.services / "worker"

    @property
    def km(self) -> Path:
        return self.services / "km"

    @property
    def venv(self) -> Path:
        return self.worker / "venv"

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    @property
    def manifest(self) -> Path:
        return self.worker / MANIFEST

    @property
    def etc(self) -> Path:
        return self.root / "etc"

    @property
    def defaults_file(self) -> Path:
        return self.etc / "default" / DEFAULTS


# --- the manifest ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Entry:
    """One thing the install made. ``sha256`` of a config is what was installed (``-``: not
    known, never removed); ``dir`` entries are directories it created; ``venv`` the virtualenv."""

    kind: str    # file | config | dir | venv
    path: Path
    sha256: str = "-"

    def line(self) -> str:
        return f"{self.kind}\t{self.sha256}\t{self.path}"


def read_manifest(path: Path) -> list[Entry]:
    if not path.exists():
        return []
    entries = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line or line.startswith("#"):
            continue
        parts = line.split("\t")
        if len(parts) != 3 or parts[0] not in ("file", "config", "dir", "venv"):
            raise InstallError(f"{path}:{n}: not a manifest line: {line!r}")
        entries.append(Entry(parts[0], Path(parts[2]), parts[1]))
    return entries


def write_manifest(path: Path, entries: list[Entry]) -> None:
    text = ("# written by make install: what make uninstall removes (kind, sha256 of what was\n"
            "# installed, path). Config files whose sha256 no longer matches were edited: kept.\n"
            + "".join(e.line() + "\n" for e in entries))
    write_file(path, text.encode(), 0o644)


# --- files -----------------------------------------------------------------------------------

def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha(path: Path) -> str | None:
    try:
        return sha256(path.read_bytes())
    except FileNotFoundError:
        return None


def write_file(path: Path, data: bytes, mode: int, owner: tuple[int, int] | None = None) -> None:
    """``path`` holds ``data`` with ``mode`` (and ``owner``), never half-written: a reader sees
    the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, mode)
        if owner is not None:
            os.chown(tmp, *owner)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def fill_placeholders(text: str, values: dict[str, str], source: Path) -> str:
    """``@NAME@`` replaced by ``values[NAME]``; an unknown name is an error (a unit or script
    must never be installed with a placeholder left in it). A value ending in ``/`` (the root
    ``/``) absorbs the ``/`` after the placeholder, so ``@ENSTRATUS_HOME@/services`` is
    ``/services``, not ``//services``."""
    unknown = sorted({m.group(1) for m in PLACEHOLDER.finditer(text)} - set(values))
    if unknown:
        raise InstallError(f"{source} has placeholders make install does not know: "
                           f"{', '.join('@' + u + '@' for u in unknown)} "
                           f"(known: {', '.join('@' + k + '@' for k in sorted(values))})")

    def fill(m: re.Match) -> str:
        value = values[m.group(1)]
        return value if value.endswith("/") else value + m.group(2)

    return PLACEHOLDER.sub(fill, text)


@dataclass(frozen=True)
class ConfigResult:
    """What ``install_config`` did: ``action`` is installed, updated, unchanged or kept (the
    edited file stays, the shipped one is written beside it as ``dist``)."""

    action: str
    recorded_sha: str
    dist: Path | None = None


def install_config(data: bytes, dest: Path, installed_sha: str | None, mode: int,
                   owner: tuple[int, int] | None) -> ConfigResult:
    """Install a config file without ever overwriting an edited one.

    ``installed_sha`` is what the previous install wrote there (from its manifest). A file that
    still holds that is not edited and is replaced; one that holds something else was edited
    (or was there before any install) and is kept, with the shipped file as ``<name>.dist``.
    """
    new_sha = sha256(data)
    current = file_sha(dest)
    dist = dest.with_name(dest.name + ".dist")
    if current is None:
        write_file(dest, data, mode, owner)
        return ConfigResult("installed", new_sha)
    if current == new_sha:
        return ConfigResult("unchanged", new_sha)
    if current == installed_sha:
        write_file(dest, data, mode, owner)
        return ConfigResult("updated", new_sha)
    write_file(dist, data, mode, owner)
    return ConfigResult("kept", installed_sha or "-", dist)


# --- install ---------------------------------------------------------------------------------

@dataclass
class Installer:
    checkout: Path
    paths: Paths
    user: str
    init_system: str            # sysv | systemd
    base_python: str
    out: Callable[[str], None] = print
    entries: list[Entry] = field(default_factory=list)

    def __post_init__(self):
        self.previous = read_manifest(self.paths.manifest)
        self._previous_sha = {e.path: e.sha256 for e in self.previous if e.kind == "config"}

    # -- small steps --

    @property
    def owner(self) -> tuple[int, int] | None:
        """The service user's uid and gid, when it exists and we may chown to it."""
        if os.geteuid() != 0:
            return None
        try:
            pw = pwd.getpwnam(self.user)
        except KeyError:
            return None
        return pw.pw_uid, pw.pw_gid

    def placeholders(self) -> dict[str, str]:
        p = self.paths
        return {"ENSTRATUS_HOME": str(p.home), "ENSTRATUS_USER": self.user,
                "ENSTRATUS_DEFAULTS": str(p.defaults_file), "ENSTRATUS_WORKER_HOME": str(p.worker),
                "ENSTRATUS_KM_HOME": str(p.km), "ENSTRATUS_PYTHON": str(p.python)}

    def ensure_dir(self, path: Path) -> None:
        """``path`` exists; the directories this made are recorded (uninstall removes them when
        empty), the ones that were there (``/etc/init.d``) are not."""
        missing = [d for d in (path, *path.parents) if not d.exists()]
        path.mkdir(parents=True, exist_ok=True)
        self.entries.extend(Entry("dir", d) for d in reversed(missing))

    def mkdir(self, path: Path, mode: int = 0o755, owner: tuple[int, int] | None = None) -> None:
        self.ensure_dir(path)
        os.chmod(path, mode)
        if owner is not None:
            os.chown(path, *owner)

    def shipped(self, src: Path, dest: Path, fill: bool) -> bytes:
        """The bytes to install from ``src`` (placeholders filled if ``fill``); makes ``dest``'s
        directory."""
        data = src.read_bytes()
        if fill:
            data = fill_placeholders(data.decode(), self.placeholders(), src).encode()
        self.ensure_dir(dest.parent)
        return data

    def put(self, src: Path, dest: Path, mode: int, *, fill: bool = False) -> None:
        data = self.shipped(src, dest, fill)
        write_file(dest, data, mode)
        self.entries.append(Entry("file", dest, sha256(data)))

    def put_config(self, src: Path, dest: Path, mode: int, *, fill: bool = False) -> None:
        data = self.shipped(src, dest, fill)
        r = install_config(data, dest, self._previous_sha.get(dest), mode, self.owner)
        self.entries.append(Entry("config", dest, r.recorded_sha))
        if r.dist is not None:
            self.entries.append(Entry("file", r.dist, sha256(data)))
            self.out(f"kept {dest}: it differs from the shipped file (edited), "
                     f"which is installed beside it as {r.dist}")
        elif r.action != "unchanged":
            self.out(f"{r.action} {dest}")

    def run_cmd(self, *cmd: str) -> None:
        r = subprocess.run(cmd, check=False, capture_output=True, text=True)
        if r.returncode != 0:
            raise InstallError(f"{' '.join(cmd)} failed (exit {r.returncode}): "
                               f"{(r.stderr or r.stdout).strip()[-2000:]}")

    # -- the steps --

    def ensure_user(self) -> None:
        try:
            pwd.getpwnam(self.user)
            return
        except KeyError:
            pass
        if self.paths.staged:
            self.out(f"DESTDIR set: no user created; {self.user} does not exist on this host, "
                     "so the install's files stay owned by whoever installed them")
            return
        self.run_cmd("useradd", "--system", "--user-group", "--home-dir", str(self.paths.worker),
                     "--no-create-home", "--shell", "/usr/sbin/nologin", self.user)
        self.out(f"created system user {self.user}")

    def make_dirs(self) -> None:
        owner = self.owner
        for svc in (self.paths.worker, self.paths.km):
            self.mkdir(svc / "bin")
            self.mkdir(svc / "classes", 0o700, owner)   # secrets, and the KM writes its key here
            for d in STATE_DIRS:
                # pid files, sockets and data are private; logs are for the operator too
                self.mkdir(svc / d, 0o750 if d == "log" else 0o700, owner)

    def make_venv(self) -> None:
        p = self.paths
        if not p.python.exists():
            self.out(f"creating the virtualenv {p.venv}")
            self.run_cmd(self.base_python, "-m", "venv", str(p.venv))
        self.entries.append(Entry("venv", p.venv))
        self.out(f"installing {self.checkout} into {p.venv} (pip, -c constraints.txt)")
        # non-editable: the install runs its own copy, not the checkout's files
        self.run_cmd(str(p.python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                     "--upgrade", "-c", str(self.checkout / "constraints.txt"), str(self.checkout))

    def install_service(self, svc: str) -> None:
        src, dest = self.checkout / "services" / svc, self.paths.services / svc
        for f in sorted((src / "bin").iterdir()):
            if f.is_file():
                self.put(f, dest / "bin" / f.name, 0o755)
        for f in sorted((src / "classes").iterdir()):
            if f.is_file() and f.name not in GENERATED and not f.name.endswith(".dist"):
                if f.name.endswith(".in"):   # a template the service reads, not a config
                    self.put(f, dest / "classes" / f.name, 0o644)
                else:
                    self.put_config(f, dest / "classes" / f.name, 0o600)

    def ensure_key(self) -> None:
        """The provisioning file with ENCRYPTION_KEY, generated once, owned by the service user.
        Not in the manifest: a key is data, and uninstall keeps it."""
        path = self.paths.worker / "classes" / "enstratus-provisioning.cfg"
        if path.exists():
            return
        self.run_cmd(str(self.paths.python), "-m", "enstratus_workers.cli", "--home", str(self.paths.home),
                     "keygen")
        if self.owner is not None:
            os.chown(path, *self.owner)
        self.out(f"generated {path} with a new ENCRYPTION_KEY")

    def install_etc(self) -> None:
        etc_src, etc = self.checkout / "etc", self.paths.etc
        if self.init_system == "systemd":
            for unit in sorted((etc_src / "systemd").iterdir()):
                self.put(unit, etc / "systemd" / "system" / unit.name, 0o644, fill=True)
        else:
            for name in INIT_SCRIPTS:
                self.put(etc_src / "init.d" / name, etc / "init.d" / name, 0o755, fill=True)
        self.put_config(etc_src / "default" / DEFAULTS, self.paths.defaults_file, 0o644, fill=True)
        logrotate = etc_src / "logrotate.d" / LOGROTATE
        if logrotate.exists():
            self.put(logrotate, etc / "logrotate.d" / LOGROTATE, 0o644, fill=True)

    def register(self) -> None:
        if self.paths.staged:
            return
        if self.init_system == "systemd":
            if shutil.which("systemctl"):
                self.run_cmd("systemctl", "daemon-reload")
            self.out("start it with: systemctl enable --now enstratus-km.service enstratus-workers.target")
        elif shutil.which("update-rc.d"):
            for name in INIT_SCRIPTS:
                self.run_cmd("update-rc.d", name, "defaults")
            self.out("registered the init scripts with update-rc.d")

    def run(self) -> None:
        self.ensure_user()
        self.make_dirs()
        self.make_venv()
        for svc in ("worker", "km"):
            self.install_service(svc)
        self.ensure_key()
        self.install_etc()
        # what the previous install had and this one does not ship any more
        now = {e.path for e in self.entries}
        stale = [e for e in self.previous if e.path not in now and e.kind in ("file", "config")]
        kept = remove_entries(stale, self.out)
        self.entries.extend(e for e in self.previous if e.kind == "dir" and e.path not in now)
        self.entries.extend(kept)
        write_manifest(self.paths.manifest, _unique(self.entries))
        self.register()
        init = ("systemctl start enstratus-workers.target" if self.init_system == "systemd"
                else f"{self.paths.etc / 'init.d' / 'enstratus-workers'} start")
        self.out(f"installed into {self.paths.worker} (ENSTRATUS_HOME={self.paths.home}); "
                 f"start it with: {init}")


def _unique(entries: list[Entry]) -> list[Entry]:
    seen, out = set(), []
    for e in entries:
        if (e.kind, e.path) not in seen:
            seen.add((e.kind, e.path))
            out.append(e)
    return out


# --- uninstall -------------------------------------------------------------------------------

def remove_entries(entries: list[Entry], out) -> list[Entry]:
    """Remove installed files and unedited config files; return the edited configs kept."""
    kept = []
    for e in entries:
        if e.kind == "file":
            e.path.unlink(missing_ok=True)
        elif e.kind == "config":
            current = file_sha(e.path)
            if current is None:
                continue
            if current == e.sha256:
                e.path.unlink()
            else:
                out(f"kept {e.path}: edited since it was installed")
                kept.append(e)
    return kept


def live_pid_files(paths: Paths) -> list[Path]:
    live = []
    for run in (paths.worker / "run", paths.km / "run"):
        for f in sorted(run.glob("*.pid")) if run.is_dir() else ():
            pid = f.read_text().strip()
            if pid.isdigit() and Path(f"/proc/{pid}").exists():
                live.append(f)
    return live


def uninstall(paths: Paths, out=print) -> None:
    entries = read_manifest(paths.manifest)
    if not entries:
        raise InstallError(f"nothing to uninstall: no {paths.manifest}")
    running = live_pid_files(paths)
    if running:
        raise InstallError("the service is running (" + ", ".join(str(f) for f in running) + "): "
                           "stop it first (/etc/init.d/enstratus-workers stop, enstratus-km stop)")
    installed = {e.path for e in entries}
    if not paths.staged:
        init_d = paths.etc / "init.d"
        units = [e.path.name for e in entries if e.path.parent == paths.etc / "systemd" / "system"]
        if units and shutil.which("systemctl"):
            subprocess.run(["systemctl", "disable", *units], check=False, capture_output=True)
        if shutil.which("update-rc.d"):
            for name in INIT_SCRIPTS:
                if init_d / name in installed:
                    subprocess.run(["update-rc.d", "-f", name, "remove"], check=False, capture_output=True)
    remove_entries(entries, out)
    for e in entries:
        if e.kind == "venv":
            shutil.rmtree(e.path, ignore_errors=True)
    paths.manifest.unlink(missing_ok=True)
    kept_dirs = []
    for e in sorted((e for e in entries if e.kind == "dir"), key=lambda e: len(e.path.parts), reverse=True):
        if e.path.name == "run":   # the daemons' own subdirectory of waiters' bells (jobs/wakeup.py)
            try:
                (e.path / BELLS_DIR).rmdir()
            except OSError:
                pass
        try:
            e.path.rmdir()
        except FileNotFoundError:
            pass
        except OSError:   # not empty: data, logs, keys or an edited config
            kept_dirs.append(e.path)
    for d in sorted(kept_dirs):
        if not any(k.is_relative_to(d) and k != d for k in kept_dirs):
            out(f"kept {d}: not empty ({', '.join(sorted(c.name for c in d.iterdir())[:8])})")
    out(f"uninstalled from {paths.worker}; kept: the data and edited files above, and the "
        "service user")


# --- command line ----------------------------------------------------------------------------

def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m enstratus_workers.install",
                                description="Install the service as the enStratus docs lay it out, or remove it.")
    p.add_argument("action", choices=("install", "uninstall"))
    p.add_argument("--destdir", default="", help="scratch root that runs in place (default: none)")
    p.add_argument("--prefix", default="/services", help="the services directory (default /services)")
    p.add_argument("--user", default="enstratus", help="the service account (default enstratus)")
    p.add_argument("--init", choices=("auto", "sysv", "systemd"), default="auto",
                   help="init scripts or systemd units (default: systemd where /run/systemd/system exists)")
    p.add_argument("--python", default=sys.executable, help="the Python the virtualenv is made from")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        paths = Paths.of(args.destdir, args.prefix)
        if args.action == "uninstall":
            uninstall(paths)
            return 0
        if not USER_NAME.fullmatch(args.user):
            raise UsageError(f"ENSTRATUS_USER={args.user!r} is not a user name "
                               "(lower-case letters, digits, _ and -, at most 32)")
        init = args.init
        if init == "auto":
            init = "systemd" if Path("/run/systemd/system").is_dir() else "sysv"
        Installer(CHECKOUT, paths, args.user, init, args.python).run()
        return 0
    except InstallError as exc:
        print(f"make {args.action}: {exc}", file=sys.stderr)
        return EXIT_USAGE if isinstance(exc, UsageError) else EXIT_FAILED


if __name__ == "__main__":
    raise SystemExit(main())
