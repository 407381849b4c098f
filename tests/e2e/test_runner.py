"""The daemon runner and the init script end to end: real forks, real signals, real pid files.

The daemon is ``tests/e2e/dummy_daemon.py`` in a scratch install root. For the init script, stand-in
modules ``ewfake.daemons.<daemon>`` (written into tmp) run the same dummy under the real daemons'
names, behind wrappers in a scratch bin directory. Every process whose command line names the
scratch root is killed at the end, whatever the test did.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from enstratus_workers.errors import ConfigError
from enstratus_workers.layout import Layout, short_hostname
from enstratus_workers.runtime import procs, runner

pytestmark = [pytest.mark.slow, pytest.mark.timeout(40)]

REPO = Path(__file__).resolve().parents[2]
INIT = REPO / "etc" / "init.d" / "enstratus-workers"
HOST = short_hostname()


def wait_for(predicate, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


def processes_naming(root: Path) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            argv = procs.cmdline(int(entry.name)) or []
            if any(str(root) in a for a in argv) and procs.is_alive(int(entry.name)):
                pids.append(int(entry.name))
    return pids


@pytest.fixture
def root(tmp_path):
    """A scratch directory; afterwards no process that names it survives."""
    yield tmp_path
    for pid in processes_naming(tmp_path):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert wait_for(lambda: not processes_naming(tmp_path), 5)


@pytest.fixture
def home(root):
    home = root / "home"
    home.mkdir()
    return home


def env(**extra) -> dict:
    e = {k: v for k, v in os.environ.items() if k != "ENSTRATUS_HOME"}
    e["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), extra.pop("PYTHONPATH", "")]))
    e.update(extra)
    return e


def dummy(home: Path, command: str, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tests.e2e.dummy_daemon", command, "--home", str(home), *args],
                          env=env(), cwd=REPO, capture_output=True, text=True, timeout=timeout)


def pid_file(home: Path, daemon: str = "dummy_daemon", name: str = HOST) -> Path:
    return Layout(home).pid_file(daemon, name)


def log_file(home: Path, daemon: str = "dummy_daemon", name: str = HOST) -> Path:
    return Layout(home).log_file(daemon, name)


def started_pid(result: subprocess.CompletedProcess) -> int:
    assert result.returncode == 0, result.stdout + result.stderr
    assert "started (pid " in result.stdout, result.stdout
    return int(result.stdout.split("started (pid ")[1].split(")")[0])


# --- the runner ----------------------------------------------------------------------------------

def test_start_status_start_again_stop(home):
    # Given a daemon started
    pid = started_pid(dummy(home, "start", "--marker", str(home / "marker")))
    assert pid_file(home).read_text() == f"{pid}\n"
    assert f"dummy_daemon@{HOST} ready (pid {pid})" in log_file(home).read_text()
    # Then status says it runs, in words and in JSON
    st = dummy(home, "status")
    assert st.returncode == 0 and f"is running (pid {pid}, up " in st.stdout
    st = dummy(home, "status", "--json")
    assert st.returncode == 0
    doc = json.loads(st.stdout)
    assert doc["daemon"] == "dummy_daemon" and doc["name"] == HOST and doc["pid"] == pid
    assert doc["state"] == "running" and doc["uptime_s"] >= 0

    # When it is started again, nothing new starts
    again = dummy(home, "start")
    assert again.returncode == 0 and f"already running (pid {pid})" in again.stdout
    assert pid_file(home).read_text() == f"{pid}\n"

    # When it is stopped, it stops warm; the pid file and the process are gone
    stop = dummy(home, "stop")
    assert stop.returncode == 0 and f"stopped (pid {pid})" in stop.stdout
    assert not pid_file(home).exists()
    assert not procs.is_alive(pid)
    assert (home / "marker").read_text() == "warm"
    assert dummy(home, "status").returncode == 3
    # And stopping a stopped daemon is a success (LSB)
    again = dummy(home, "stop")
    assert again.returncode == 0 and "is not running" in again.stdout


def test_sighup_reopens_the_log_file(home):
    # Given a running daemon whose log file was moved away, as logrotate does
    pid = started_pid(dummy(home, "start"))
    rotated = log_file(home).with_suffix(".log.1")
    log_file(home).rename(rotated)
    # When it gets SIGHUP
    os.kill(pid, signal.SIGHUP)
    # Then it writes to a new file at the old path, and the daemon is still up
    assert wait_for(lambda: log_file(home).exists() and "reopened the log file" in log_file(home).read_text())
    assert procs.is_alive(pid)
    assert "reopened" not in rotated.read_text()
    assert dummy(home, "stop").returncode == 0
    assert "stopped" in log_file(home).read_text()


def test_a_killed_daemon_is_dead_and_start_replaces_its_pid_file(home):
    # Given a daemon killed with SIGKILL (so it could not remove its pid file)
    old = started_pid(dummy(home, "start"))
    os.kill(old, signal.SIGKILL)
    assert wait_for(lambda: not procs.is_alive(old))
    # Then status says dead with a pid file (LSB 1)
    st = dummy(home, "status")
    assert st.returncode == 1 and "dead" in st.stdout
    # When it is started again, the stale pid file is reported and replaced
    start = dummy(home, "start")
    new = started_pid(start)
    assert "stale pid file" in start.stdout and new != old
    assert pid_file(home).read_text() == f"{new}\n"
    assert dummy(home, "stop").returncode == 0


def test_a_pid_reused_by_a_foreign_process_is_neither_trusted_nor_killed(home, root):
    # Given a pid file whose pid belongs to a live process that is not the daemon
    foreign = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", str(root)])
    try:
        Layout(home).ensure_dirs()
        pid_file(home).write_text(f"{foreign.pid}\n")
        # Then status says dead, stop leaves the foreign process alone, start takes over the file
        assert dummy(home, "status").returncode == 1
        pid_file(home).write_text(f"{foreign.pid}\n")
        assert dummy(home, "stop").returncode == 0
        assert foreign.poll() is None
        pid_file(home).write_text(f"{foreign.pid}\n")
        pid = started_pid(dummy(home, "start"))
        assert pid_file(home).read_text() == f"{pid}\n"
        assert dummy(home, "stop").returncode == 0
        assert foreign.poll() is None
    finally:
        foreign.kill()
        foreign.wait()


def test_a_bad_config_starts_nothing_and_exits_6(home, capsys):
    # Given a settings loader that finds a bad file
    built = []

    def loader(layout):
        raise ConfigError("not a number", file=layout.home / "worker.properties", key="action.time_limit", line=7)

    def build(*args):  # pragma: no cover - must not be reached
        built.append(args)
        raise AssertionError("built despite a bad config")

    # When the daemon is started
    rc = runner.main("dummy", build, ["start", "--home", str(home)], settings_loader=loader)
    # Then it exits 6 with the file, line and key, before building or forking anything
    err = capsys.readouterr().err
    assert rc == 6
    assert "worker.properties:7, key 'action.time_limit': not a number" in err
    assert built == []
    assert not (home / "services").exists()


def test_a_bad_config_file_stops_the_start_in_the_calling_process(home, root):
    (home / "broken-config").write_text("something is wrong")
    r = dummy(home, "start")
    assert r.returncode == 6
    assert "broken-config:1, key 'dummy': something is wrong" in r.stderr
    assert processes_naming(root) == []
    assert not pid_file(home).exists()


def test_a_failing_build_is_reported_by_start_with_the_log_file(home, root):
    r = dummy(home, "start", "--fail-build")
    assert r.returncode == 1
    assert "failed to start: RuntimeError: dummy build failed" in r.stderr
    assert str(log_file(home)) in r.stderr
    assert "Traceback" in log_file(home).read_text()
    assert not pid_file(home).exists()
    assert wait_for(lambda: not processes_naming(root))


def test_a_crash_after_ready_is_logged_and_removes_the_pid_file(home):
    pid = started_pid(dummy(home, "start", "--crash-after-ready"))
    assert wait_for(lambda: not procs.is_alive(pid))
    assert not pid_file(home).exists()
    text = log_file(home).read_text()
    assert "RuntimeError: dummy crashed after ready" in text and "Traceback" in text
    assert dummy(home, "status").returncode == 3


def test_stop_goes_cold_when_the_warm_stop_is_ignored(home):
    # Given a daemon that ignores the first SIGTERM
    pid = started_pid(dummy(home, "start", "--ignore-warm", "--marker", str(home / "marker")))
    # When it is stopped with a 1 s grace period
    t0 = time.monotonic()
    r = dummy(home, "stop", "--grace", "1")
    # Then the second SIGTERM made it stop cold, without a SIGKILL
    assert r.returncode == 0, r.stdout + r.stderr
    assert "second SIGTERM (cold stop)" in r.stdout and "SIGKILL" not in r.stdout
    assert (home / "marker").read_text() == "cold"
    assert 1.0 <= time.monotonic() - t0 < 5
    assert not procs.is_alive(pid) and not pid_file(home).exists()


def test_stop_kills_a_daemon_that_ignores_sigterm_and_its_children(home):
    # Given a daemon with a child process that ignores every SIGTERM
    pid = started_pid(dummy(home, "start", "--ignore-stop", "--spawn-child", str(home / "child")))
    child = int((home / "child").read_text())
    assert procs.is_alive(child)
    # When it is stopped
    r = dummy(home, "stop", "--grace", "0.5")
    # Then it is killed, with its child; its pid file is removed for it
    assert r.returncode == 0, r.stdout + r.stderr
    assert "killed with SIGKILL" in r.stdout
    assert wait_for(lambda: not procs.is_alive(pid) and not procs.is_alive(child), 5)
    assert not pid_file(home).exists()


def test_run_stays_in_the_foreground_and_reports_ready_on_a_pipe(home):
    # Given a daemon run in the foreground, as the subscriber runs workers, with a readiness pipe
    r, w = os.pipe()
    proc = subprocess.Popen([sys.executable, "-m", "tests.e2e.dummy_daemon", "run", "--home", str(home),
                             "--name", "default.1", "--ready-fd", str(w), "--ignore-warm",
                             "--marker", str(home / "marker")],
                            env=env(), cwd=REPO, pass_fds=(w,), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    os.close(w)
    try:
        with os.fdopen(r, "rb") as ready:
            assert ready.readline() == f"ok {proc.pid}\n".encode()
        # Then it wrote its pid file and runs as itself (no fork)
        assert pid_file(home, name="default.1").read_text() == f"{proc.pid}\n"
        assert dummy(home, "status", "--name", "default.1").returncode == 0
        # When it gets SIGTERM twice, the second is a cold stop; it exits 0 and removes the file
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert (home / "marker").read_text() == "cold"
        assert not pid_file(home, name="default.1").exists()
    finally:
        proc.kill()
        proc.wait()


def test_a_second_run_of_the_same_instance_is_refused(home):
    pid = started_pid(dummy(home, "start", "--name", "solo"))
    r = dummy(home, "run", "--name", "solo")
    assert r.returncode == 1 and f"already running (pid {pid})" in r.stdout
    assert dummy(home, "stop", "--name", "solo").returncode == 0


def test_restart_replaces_the_process(home):
    old = started_pid(dummy(home, "start"))
    r = dummy(home, "restart")
    assert r.returncode == 0, r.stdout + r.stderr
    new = started_pid(r)
    assert new != old and not procs.is_alive(old)
    assert dummy(home, "stop").returncode == 0


# --- the init script, over stand-in daemons ------------------------------------------------------

class FakeInstall:
    """Stand-ins for publisher, subscriber, pinger and worker: the dummy under their names."""

    PREFIX = "ewfake.daemons."

    def __init__(self, root: Path, home: Path):
        self.root, self.home = root, home
        self.bin = root / "bin"
        self.bin.mkdir()
        pkg = root / "fakes" / "ewfake" / "daemons"
        pkg.mkdir(parents=True)
        (pkg.parent / "__init__.py").write_text("")
        (pkg / "__init__.py").write_text("")
        self.env = env(PYTHONPATH=str(root / "fakes"), ENSTRATUS_HOME=str(home))
        for daemon in ("publisher", "subscriber", "pinger", "worker"):
            (pkg / f"{daemon}.py").write_text(
                "from tests.e2e.dummy_daemon import main\n"
                f"raise SystemExit(main(daemon={daemon!r}))\n")
            self.wrapper(daemon)

    def wrapper(self, daemon: str, *extra: str) -> None:
        path = self.bin / daemon
        path.write_text("#!/usr/bin/env bash\n"
                        f'exec "{sys.executable}" -m {self.PREFIX}{daemon} "$1" --home "$ENSTRATUS_HOME" '
                        f'"${{@:2}}" {" ".join(extra)}\n')
        path.chmod(0o755)

    def init(self, verb: str, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(INIT), verb, "--bin-dir", str(self.bin), "--module-prefix", self.PREFIX,
                               "--grace", "1", *args],
                              env=self.env, cwd=self.root, capture_output=True, text=True, timeout=60)

    def run(self, daemon: str, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.bin / daemon), *args], env=self.env, capture_output=True, text=True,
                              timeout=30)

    def pid(self, daemon: str, name: str = HOST) -> int:
        return int(pid_file(self.home, daemon, name).read_text())


@pytest.fixture
def fake(root, home):
    return FakeInstall(root, home)


def test_init_script_start_status_stop(fake, root):
    # Given the service started by the init script
    r = fake.init("start", "--without-http")
    assert r.returncode == 0, r.stdout + r.stderr
    pids = {d: fake.pid(d) for d in ("publisher", "subscriber", "pinger")}
    # When it is started again, nothing is started twice
    r = fake.init("start")
    assert r.returncode == 0 and r.stdout.count("already running") == 3
    assert {d: fake.pid(d) for d in pids} == pids
    # And worker processes run beside it (the subscriber would have started them)
    assert fake.run("worker", "start", "--name", "default.1").returncode == 0
    assert fake.run("worker", "start", "--name", "default.2", "--ignore-stop").returncode == 0
    st = fake.init("status")
    assert st.returncode == 0, st.stdout
    for line in (f"publisher@{HOST} is running", f"subscriber@{HOST} is running",
                 f"pinger@{HOST} is running", "worker@default.1 is running", "worker@default.2 is running"):
        assert line in st.stdout

    # When it is stopped: pinger, publisher, subscriber, then the workers left behind
    r = fake.init("stop")
    assert r.returncode == 0, r.stdout + r.stderr
    order = [r.stdout.index(f"{d}@{HOST} stopped") for d in ("pinger", "publisher", "subscriber")]
    assert order == sorted(order)
    assert "worker@default.2" in r.stdout and "killed" in r.stdout
    # Then no process and no pid file is left, and status says stopped
    assert processes_naming(root) == []
    assert list(Layout(fake.home).run_dir.glob("*.pid")) == []
    assert fake.init("status").returncode == 3


def test_init_script_status_codes_and_clean(fake, root):
    assert fake.init("start").returncode == 0
    # Given the pinger killed (its pid file left behind) and a stray publisher with no pid file
    pinger = fake.pid("pinger")
    os.kill(pinger, signal.SIGKILL)
    assert wait_for(lambda: not procs.is_alive(pinger))
    stray = started_pid(fake.run("publisher", "start", "--name", "stray"))
    pid_file(fake.home, "publisher", "stray").unlink()
    # Then status is 1 (dead with a pid file) and names the stray
    st = fake.init("status")
    assert st.returncode == 1, st.stdout
    assert f"pinger@{HOST} is dead" in st.stdout and f"stray publisher@stray (pid {stray})" in st.stdout

    # When clean runs: the stray is stopped, the stale pid file removed, the rest untouched
    r = fake.init("clean")
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"stray publisher@stray (pid {stray}, no pid file): stopped" in r.stdout
    assert "removed stale pid file" in r.stdout and "pinger@" in r.stdout
    assert not procs.is_alive(stray) and procs.is_alive(fake.pid("publisher"))
    # Then with the pinger simply stopped while the others run, status is 3 and says which
    st = fake.init("status")
    assert st.returncode == 3 and "not running: pinger" in st.stdout
    assert fake.init("clean").stdout.strip() == "nothing to clean"
    assert fake.init("stop").returncode == 0
    assert processes_naming(root) == []


def test_init_script_restart_replaces_every_daemon(fake, root):
    assert fake.init("start").returncode == 0
    before = {d: fake.pid(d) for d in ("publisher", "subscriber", "pinger")}
    r = fake.init("force-reload")
    assert r.returncode == 0, r.stdout + r.stderr
    after = {d: fake.pid(d) for d in before}
    assert all(after[d] != before[d] and not procs.is_alive(before[d]) for d in before)
    assert fake.init("status").returncode == 0
    assert fake.init("stop").returncode == 0
    assert processes_naming(root) == []


def test_init_script_start_reports_a_daemon_that_failed(fake):
    fake.wrapper("subscriber", "--fail-build")
    r = fake.init("start")
    assert r.returncode == 1
    assert "failed to start: subscriber" in r.stderr
    assert fake.init("status").returncode == 3
    assert fake.init("stop").returncode == 0


def test_init_script_start_stops_at_a_config_error(fake, root):
    (fake.home / "broken-config").write_text("bad value")
    r = fake.init("start")
    assert r.returncode == 6
    assert "bad value" in r.stderr and "fix the configuration" in r.stderr
    assert processes_naming(root) == []


def test_init_script_rejects_unknown_verbs_and_reload(fake):
    r = fake.init("frobnicate")
    assert r.returncode == 2 and "usage" in r.stderr
    assert fake.init("reload").returncode == 3
    r = subprocess.run([str(INIT)], env=fake.env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "usage" in r.stderr


# --- the real wrappers and init script against an empty install root -----------------------------

def test_real_wrapper_and_init_script_find_the_install_root_from_enstratus_home(home):
    e = {**env(), "ENSTRATUS_HOME": str(home)}
    r = subprocess.run([str(REPO / "services" / "worker" / "bin" / "publisher"), "status", "--json"],
                       env=e, capture_output=True, text=True, timeout=30)
    assert r.returncode == 3, r.stdout + r.stderr
    assert json.loads(r.stdout) == {"daemon": "publisher", "name": HOST, "pid": None,
                                    "state": "stopped", "uptime_s": None}
    r = subprocess.run([str(REPO / "services" / "worker" / "bin" / "worker")], env=e,
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "usage" in r.stderr
    r = subprocess.run([str(INIT), "status"], env=e, capture_output=True, text=True, timeout=30)
    assert r.returncode == 3 and "publisher is stopped" in r.stdout, r.stdout + r.stderr


# --- names that would leave run/ and log/ -------------------------------------------------------------

def tree_with_modes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.lstat().st_mode for p in [root, *root.rglob("*")]}


@pytest.mark.parametrize("name", ["../../x", "../x", "a/b", "..", ".hidden", "a..b", "x\n2030 INFO forged", ""])
def test_a_start_name_that_is_not_a_plain_name_is_refused_before_anything_is_written(root, home, name):
    # Given an install root (and a directory beside it that a climbing name would reach)
    (root / "x").mkdir()
    before = tree_with_modes(root)
    # When a daemon is started through its real wrapper under that name
    r = subprocess.run([str(REPO / "services" / "worker" / "bin" / "publisher"), "start", "--name", name],
                       env={**env(), "ENSTRATUS_HOME": str(home)}, capture_output=True, text=True, timeout=30)
    # Then it is refused as a usage error, saying what a name may hold
    assert r.returncode == 2, r.stdout + r.stderr
    assert "--name: invalid name" in r.stderr and "parts joined by single dots" in r.stderr
    assert "\x1b" not in r.stderr and r.stderr.count("\n") == 1
    # And nothing was written or chmod-ed anywhere: not in run/, not outside it
    assert tree_with_modes(root) == before


def test_status_of_a_bad_name_is_unknown_and_a_dotted_name_is_fine(home):
    # Given names as the subscriber gives its workers, When their status is asked, Then they are
    # plain stopped instances; a name that climbs out of run/ is an unknown status (LSB 4)
    assert dummy(home, "status", "--name", "default.1").returncode == 3
    r = dummy(home, "status", "--name", "../default")
    assert r.returncode == 4 and "invalid name" in r.stderr
