"""End to end: the init script, run as root with ENSTRATUS_USER, starts every daemon and worker as
that account; a job runs; what they write is the account's; stop leaves nothing. The service
runs with W^X memory refused (prctl PR_SET_MDWE, inherited by every process it starts), which is
what the units' MemoryDenyWriteExecute=yes asks of it.

The account must be able to run the interpreter: this machine's venv Python lives under /root
(0700), so the scratch install gets a venv of its own on the system Python of the same version,
seeing the project's site-packages; and since the init script prefers its own checkout's venv,
the scratch install is also the code root (a copy of the init script and the bin wrappers; the
code itself comes from PYTHONPATH, the checkout under test).
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests import servicehome as sh
from tests.conftest import unavailable
from tests.sysaccount import scratch_account

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1
DAEMONS = {"publisher", "subscriber", "pinger", "admin"}


def _system_python() -> str:
    """A Python of this version that anyone may run (every directory on its way searchable)."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for candidate in (f"/usr/bin/{version}", f"/usr/local/bin/{version}"):
        path = Path(candidate)
        chain = [path, *path.resolve().parents, path.resolve()]
        if path.exists() and all(p.stat().st_mode & stat.S_IXOTH for p in chain):
            return candidate
    unavailable(f"no {version} that an unprivileged account can run")


def _site_packages() -> str:
    return next(p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir())


@pytest.fixture
def account():
    with scratch_account() as acct:
        yield acct


@pytest.fixture
def install(account):
    """A scratch install root the account can reach (pytest's tmp_path is root's, 0700)."""
    python = _system_python()
    scratch = Path(tempfile.mkdtemp(prefix="ew-account-", dir="/tmp"))
    scratch.chmod(0o755)
    home = sh.make_home(scratch)
    # the key file is generated at the first start, for the account (classes/ stays root's)
    (home / "services" / "worker" / "classes" / "enstratus-provisioning.cfg").unlink()
    (home / "etc" / "init.d").mkdir(parents=True)
    shutil.copy2(sh.INIT, home / "etc" / "init.d")
    shutil.copytree(sh.REPO / "services" / "worker" / "bin", home / "services" / "worker" / "bin")
    shutil.copy2(sh.KM_INIT, home / "etc" / "init.d")
    shutil.copytree(sh.REPO / "services" / "km" / "bin", home / "services" / "km" / "bin")
    sh.add_km(home)
    subprocess.run([python, "-m", "venv", "--without-pip", str(home / ".venv")], check=True)
    venv_site = next((home / ".venv" / "lib").glob("python*/site-packages"))
    # addsitedir, not a bare path: the project's .pth files (editable installs, plug-ins) count too
    (venv_site / "project.pth").write_text(f"import site; site.addsitedir({_site_packages()!r})\n")
    yield home
    _init(home, "stop")
    _init(home, "stop", script="enstratus-km")
    sh.kill_strays(home)
    shutil.rmtree(scratch, ignore_errors=True)


def _refuse_wx_memory() -> None:
    """In the init script's process, before exec: from here on no process may map memory both
    writable and executable, or make writable memory executable."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
        os._exit(97)


def _init(home: Path, verb: str, user: str | None = None, mdwe: bool = False,
          script: str = "enstratus-workers"):
    env = {**sh.env_for(home), "PYTHONPATH": str(sh.REPO)}
    env.pop("ENSTRATUS_USER", None)
    if user is not None:
        env["ENSTRATUS_USER"] = user
    return subprocess.run([str(home / "etc" / "init.d" / script), verb], env=env,
                          check=False, capture_output=True, text=True, timeout=120,
                          preexec_fn=_refuse_wx_memory if mdwe else None)


def _ids(pid: int) -> dict[str, list[int]]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("Uid", "Gid", "Groups"):
            fields[key] = [int(v) for v in value.split()]
    return fields


def test_a_root_start_runs_every_daemon_as_the_account(install, account):
    home = install
    # Given root (the suite's user here), ENSTRATUS_USER naming a fresh system account
    assert os.geteuid() == 0
    # When the init script starts the service under W^X
    r = _init(home, "start", account.name, mdwe=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "warning: running as root" not in r.stderr

    # Then every daemon and worker process runs as the account: uid, primary gid, no root group
    run_dir = home / "services" / "worker" / "run"
    pids = {p.name.removesuffix(".pid"): int(p.read_text()) for p in run_dir.glob("*.pid")}
    assert {n.split("@")[0] for n in pids} == DAEMONS | {"worker"}, sorted(pids)
    ours = sh.our_processes(home)
    assert set(pids.values()) <= set(ours)
    for pid in ours:
        ids = _ids(pid)
        assert ids["Uid"] == [account.uid] * 4, (pid, ids)
        assert ids["Gid"] == [account.gid] * 4, (pid, ids)
        assert ids["Groups"] == [account.gid], (pid, ids)

    # When a job is submitted, then it runs (through the publisher, subscriber and a worker)
    job = sh.cli(home, "submit", "echo", "--args", '{"as": "account"}', "--wait", "--json")
    assert job.returncode == 0, job.stdout + job.stderr
    outcome = json.loads(job.stdout)
    assert outcome["status"] == "succeeded" and outcome["result"] == {"as": "account"}

    # And what the daemons wrote is the account's: pid files, logs, sockets, data, the new key
    written = [p for d in ("run", "log", "data") for p in (home / "services" / "worker" / d).rglob("*")]
    assert written and {p.lstat().st_uid for p in written} == {account.uid}, written
    key = home / "services" / "worker" / "classes" / "enstratus-provisioning.cfg"
    assert (key.stat().st_uid, stat.S_IMODE(key.stat().st_mode)) == (account.uid, 0o600)
    assert (home / "services" / "worker" / "classes").stat().st_uid == 0

    # When the service is stopped (by root), no process and no pid file is left
    r = _init(home, "stop")
    assert r.returncode == 0, r.stdout + r.stderr
    assert sh.wait_until(lambda: not sh.our_processes(home), 10)
    assert list(run_dir.glob("*.pid")) == []
    assert not any("Traceback" in p.read_text() for p in (home / "services" / "worker" / "log").glob("*.log"))


def test_the_km_started_as_root_runs_as_the_account_and_owns_its_first_master_key(install, account):
    home = install
    r = _init(home, "start", account.name, script="enstratus-km")
    assert r.returncode == 0, r.stdout + r.stderr
    (pid_file,) = (home / "services" / "km" / "run").glob("km@*.pid")
    ids = _ids(int(pid_file.read_text()))
    assert ids["Uid"] == [account.uid] * 4 and ids["Gid"] == [account.gid] * 4, ids
    assert ids["Groups"] == [account.gid], ids
    for written in (pid_file, home / "services" / "km" / "classes" / "km-master.key",
                    *(home / "services" / "km" / "data").iterdir()):
        assert written.stat().st_uid == account.uid, written
    r = _init(home, "stop", script="enstratus-km")
    assert r.returncode == 0, r.stdout + r.stderr
    assert not pid_file.exists()


def test_an_unknown_account_starts_nothing_and_exits_6(install):
    home = install
    r = _init(home, "start", "ew_no_such_account")
    assert r.returncode == 6, r.stdout + r.stderr
    assert "key 'ENSTRATUS_USER': no such user 'ew_no_such_account'" in r.stderr
    assert sh.our_processes(home) == []
    assert not (home / "services" / "worker" / "run").exists()


def test_the_processes_refuse_wx_memory():
    """The check the first test relies on: a process started under _refuse_wx_memory, and its
    children, cannot map writable executable memory."""
    probe = ("import mmap, subprocess, sys\n"
             "try:\n"
             "    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)\n"
             "    print('allowed')\n"
             "except PermissionError:\n"
             "    print('refused')\n")
    parent = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {probe!r}])"
    r = subprocess.run([sys.executable, "-c", parent],
                       check=False, capture_output=True, text=True, timeout=30, preexec_fn=_refuse_wx_memory)
    if r.returncode == 97:
        unavailable("prctl(PR_SET_MDWE) is not supported by this kernel (Linux 6.3+)")
    assert r.stdout.strip() == "refused", r.stdout + r.stderr
