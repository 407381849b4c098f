"""``make install`` into a scratch DESTDIR, run from there as an operator would run the real one.

SLOW, marked ``install``: the module builds one virtualenv with pip (``-c constraints.txt``,
from PyPI or pip's cache), about 1-2 minutes; every test here shares that one install. The
commands run with neither ENSTRATUS_HOME nor PYTHONPATH, from ``/``: what runs is the install's
own copy of the package, found by the installed init script by itself. The last test
reinstalls and uninstalls, so it stays last.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import signal
import stat
import subprocess
from pathlib import Path

import pytest

from tests.servicehome import set_keys, wait_until

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.install, pytest.mark.timeout(900)]

WORKER_BIN = ("publisher", "subscriber", "pinger", "worker", "admin", "enstratus-workers")
CONFIGS = ("admin.cfg", "dasein-persistence.properties", "enstratus-km-client.cfg", "mq.cfg", "worker.properties")
LEFT_PLACEHOLDER = re.compile(rb"@[A-Z][A-Z0-9_]*@")


def clean_env() -> dict:
    return {k: v for k, v in os.environ.items() if k not in ("ENSTRATUS_HOME", "PYTHONPATH")}


def make(target: str, root: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    # the service user is whoever runs the test: DESTDIR never creates one
    user = pwd.getpwuid(os.getuid()).pw_name
    return subprocess.run(["make", "-s", "-C", str(REPO), target, f"DESTDIR={root}", f"ENSTRATUS_USER={user}"],
                          check=False, env=clean_env(), capture_output=True, text=True, timeout=timeout)


def run(*cmd, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], check=False, env=clean_env(), cwd="/", capture_output=True,
                          text=True, timeout=timeout)


def processes_of(root: Path) -> dict[int, list[str]]:
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
            except OSError:
                continue
            if any(str(root) in a for a in argv) and "enstratus_workers" in " ".join(argv):
                found[int(entry.name)] = argv
    return found


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """One ``make install DESTDIR=<scratch>``; afterwards no process of that root survives."""
    root = tmp_path_factory.mktemp("destdir")
    r = make("install", root)
    assert r.returncode == 0, r.stdout + r.stderr
    yield root, r.stdout
    for pid in processes_of(root):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def manifest(root: Path) -> list[tuple[str, str, Path]]:
    lines = (root / "services/worker/.installed-files").read_text().splitlines()
    return [(k, s, Path(p)) for k, s, p in (ln.split("\t") for ln in lines if not ln.startswith("#"))]


def test_the_install_lays_out_the_enstratus_paths(installed):
    root, out = installed
    for script in ("enstratus-workers", "enstratus-km"):
        assert os.access(root / "etc/init.d" / script, os.X_OK)
    for launcher in WORKER_BIN:
        assert os.access(root / "services/worker/bin" / launcher, os.X_OK), launcher
    assert os.access(root / "services/km/bin/km", os.X_OK)
    for name in (*CONFIGS, "enstratus-provisioning.cfg"):
        assert stat.S_IMODE((root / "services/worker/classes" / name).stat().st_mode) == 0o600, name
    assert (root / "services/km/classes/km.cfg").exists()
    assert "generated" in out and "ENCRYPTION_KEY" in out
    defaults = (root / "etc/default/enstratus-workers").read_text()
    assert f'ENSTRATUS_HOME="{root}"' in defaults
    # the package is the venv's own copy (not an editable link to the checkout)
    r = run(root / "services/worker/venv/bin/python", "-c", "import enstratus_workers; print(enstratus_workers.__file__)")
    assert r.returncode == 0 and r.stdout.startswith(str(root / "services/worker/venv/lib")), r.stdout + r.stderr
    # the manifest names every file installed, and none of them kept a placeholder
    entries = manifest(root)
    files = {p for kind, _, p in entries if kind in ("file", "config")}
    assert root / "etc/init.d/enstratus-workers" in files and root / "etc/default/enstratus-workers" in files
    assert {root / "services/worker/bin" / b for b in WORKER_BIN} <= files
    assert {root / "services/worker/classes" / c for c in CONFIGS} <= files
    assert ("venv", "-", root / "services/worker/venv") in entries
    for f in files:
        assert not LEFT_PLACEHOLDER.search(f.read_bytes()), f


def test_reinstall_keeps_an_edit_the_installed_service_runs_a_job_and_uninstall_keeps_the_data(installed):
    root, _ = installed
    classes = root / "services/worker/classes"
    init = root / "etc/init.d/enstratus-workers"
    # Given an edited config: the admin daemon on any free port (scratch installs run side by side)
    set_keys(classes / "admin.cfg", {"port": 0})
    edited = (classes / "admin.cfg").read_text()

    # When it is installed again, the edit stays and the shipped file goes beside it
    r = make("install", root)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"kept {classes / 'admin.cfg'}" in r.stdout and "admin.cfg.dist" in r.stdout
    assert (classes / "admin.cfg").read_text() == edited
    assert (classes / "admin.cfg.dist").read_bytes() == (REPO / "services/worker/classes/admin.cfg").read_bytes()
    assert not (classes / "mq.cfg.dist").exists()   # unedited: nothing beside it

    # When the installed init script starts the service, with no ENSTRATUS_HOME, from /
    try:
        r = run(init, "start")
        assert r.returncode == 0, r.stdout + r.stderr
        assert run(init, "status").returncode == 0
        # Then a job submitted through the installed launcher succeeds
        r = run(root / "services/worker/bin/enstratus-workers", "submit", "echo", "--args", '{"n": 7}',
                "--wait", "--timeout", "60", "--json")
        assert r.returncode == 0, r.stdout + r.stderr
        job = json.loads(r.stdout)
        assert job["status"] == "succeeded" and job["result"] == {"n": 7}
        # And every process is the install's own Python on the install's root
        procs = processes_of(root)
        assert procs
        for argv in procs.values():
            assert argv[0] == str(root / "services/worker/venv/bin/python"), argv
            assert argv[argv.index("--home") + 1] == str(root), argv
    finally:
        r = run(init, "stop")
    assert r.returncode == 0, r.stdout + r.stderr
    assert run(init, "status").returncode == 3
    assert wait_until(lambda: not processes_of(root), 10)

    # When it is uninstalled
    r = make("uninstall", root)
    assert r.returncode == 0, r.stdout + r.stderr
    # Then what it installed is gone
    for gone in ("etc/init.d/enstratus-workers", "etc/init.d/enstratus-km", "etc/default/enstratus-workers",
                 "services/worker/bin", "services/worker/venv", "services/worker/.installed-files",
                 "services/worker/classes/mq.cfg", "services/worker/classes/admin.cfg.dist", "services/km/bin"):
        assert not (root / gone).exists(), gone
    # And the edited config, the key and the data stay, and it says so
    assert (classes / "admin.cfg").read_text() == edited
    assert (classes / "enstratus-provisioning.cfg").exists()
    assert (root / "services/worker/data/provisioning.db").exists()
    assert f"kept {classes / 'admin.cfg'}: edited" in r.stdout
    assert f"kept {root / 'services/worker/data'}: not empty" in r.stdout
