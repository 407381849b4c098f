"""Pid files and process identity: stale detection (dead pid, reused pid), atomic write, and
removal only by the owner. Real processes, real /proc; every process started here is killed."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from enstratus_workers.layout import Layout, short_hostname
from enstratus_workers.runtime import procs
from enstratus_workers.runtime.pidfile import (
    DEAD,
    RUNNING,
    STOPPED,
    AlreadyRunning,
    PidFile,
)

pytestmark = pytest.mark.timeout(30)

MODULE = "ewtest.daemons.thing"


@pytest.fixture
def spawn(tmp_path):
    """Start a sleeping process with the given extra argv (its command line is what is tested)."""
    started = []

    def _spawn(*argv: str) -> int:
        p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", *argv])
        started.append(p)
        return p.pid

    yield _spawn
    for p in started:
        p.kill()
        p.wait()


@pytest.fixture
def home(tmp_path):
    layout = Layout(tmp_path / "home")
    layout.ensure_dirs()
    return layout


def pidfile_for(layout: Layout, name: str = "n1") -> PidFile:
    return PidFile(layout.pid_file("thing", name), procs.Identity(MODULE, layout.home, name).is_running)


def exited_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_acquire_writes_the_pid_atomically_and_leaves_no_temp_file(home):
    # Given no pid file
    pf = pidfile_for(home)
    assert pf.state() == (STOPPED, None)
    # When this process takes it
    replaced = pf.acquire()
    # Then it holds our pid on its first line, nothing was replaced, and no temp file is left
    assert replaced is None
    assert pf.path.read_text() == f"{os.getpid()}\n"
    assert sorted(p.name for p in home.run_dir.iterdir() if p.is_file()) == [pf.path.name]


def test_a_live_daemon_of_ours_is_not_replaced(home, spawn):
    # Given a pid file naming a live process whose command line is this daemon's
    pid = spawn(MODULE, "start", "--home", str(home.home), "--name", "n1")
    pf = pidfile_for(home)
    pf.acquire(pid)
    # Then it counts as running, and another start is refused with its pid
    assert pf.state() == (RUNNING, pid)
    with pytest.raises(AlreadyRunning) as exc:
        pf.acquire()
    assert exc.value.pid == pid
    assert pf.read() == pid


def test_a_dead_pid_is_stale_and_replaced(home):
    # Given a pid file naming a process that has exited
    pf = pidfile_for(home)
    dead = exited_pid()
    pf.path.write_text(f"{dead}\n")
    # Then it is stale, and acquire replaces it and says whose it was
    assert pf.state() == (DEAD, dead)
    assert pf.acquire() == dead
    assert pf.read() == os.getpid()


def test_a_pid_reused_by_a_foreign_process_is_stale(home, spawn):
    # Given a pid file whose pid now belongs to a live process that is not this daemon
    foreign = spawn("something-else", str(home.home))
    pf = pidfile_for(home)
    pf.path.write_text(f"{foreign}\n")
    # Then os.kill(pid, 0) alone would call it running; the command line says it is not ours
    os.kill(foreign, 0)
    assert pf.state() == (DEAD, foreign)
    assert pf.acquire() == foreign
    assert pf.read() == os.getpid()


@pytest.mark.parametrize("argv", [
    (MODULE, "run", "--home", "/elsewhere", "--name", "n1"),       # another install
    (MODULE, "run", "--name", "n2"),                               # another instance
    ("ewtest.daemons.other", "run", "--name", "n1"),               # another daemon
])
def test_our_module_with_another_home_name_or_daemon_is_not_ours(home, spawn, argv):
    pid = spawn(*argv)
    pf = pidfile_for(home)
    pf.path.write_text(f"{pid}\n")
    assert pf.state() == (DEAD, pid)


def test_identity_reads_both_option_spellings_and_defaults_the_name_to_the_host():
    ident = procs.Identity(MODULE, Path("/srv/ew"), short_hostname())
    assert ident.matches(["python", "-m", MODULE, "start", "--home=/srv/ew"])
    assert ident.matches(["python", "-m", MODULE, "start", "--home", "/srv/ew", f"--name={short_hostname()}"])
    assert not ident.matches(["python", "-m", MODULE, "start", "--home", "/srv/ew", "--name", "other"])
    assert not ident.matches([])
    assert not ident.matches(None)


def test_a_file_without_a_pid_is_stale(home):
    pf = pidfile_for(home)
    pf.path.write_text("garbage\n")
    assert pf.state() == (DEAD, None)
    assert pf.acquire() == 0
    assert pf.read() == os.getpid()


def test_release_removes_only_a_file_that_holds_our_pid(home):
    # Given a pid file that a successor took over (it holds another pid)
    pf = pidfile_for(home)
    pf.path.write_text("999999\n")
    # When we release it, it stays: it is not ours
    assert pf.release() is False
    assert pf.path.exists()
    # When it holds our pid, release removes it (and a second release is harmless)
    pf.acquire()
    assert pf.release() is True
    assert not pf.path.exists()
    assert pf.release() is False


def test_concurrent_acquires_let_exactly_one_win(home):
    # Given many starters racing for one pid file, each pid counting as live
    live = set(range(4_000_001, 4_000_021))
    pf = PidFile(home.pid_file("thing", "n1"), lambda pid: pid in live)
    results, barrier = [], threading.Barrier(len(live))

    def start(pid):
        barrier.wait()
        try:
            pf.acquire(pid)
            results.append(("won", pid))
        except AlreadyRunning as exc:
            results.append(("lost", exc.pid))

    threads = [threading.Thread(target=start, args=(pid,)) for pid in live]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Then one took it, every other one was told the winner's pid, and the file names the winner
    winners = [pid for what, pid in results if what == "won"]
    assert len(winners) == 1
    assert {pid for what, pid in results if what == "lost"} == set(winners)
    assert pf.read() == winners[0]


def test_daemon_states_lists_every_pid_file_with_its_state(home, spawn):
    # Given one running daemon, one dead pid file and one without a pid
    prefix = "ewtest.daemons."
    live = spawn(prefix + "pinger", "run", "--home", str(home.home), "--name", "a")
    home.pid_file("pinger", "a").write_text(f"{live}\n")
    home.pid_file("publisher", "vm").write_text(f"{exited_pid()}\n")
    home.pid_file("worker", "default.1").write_text("\n")
    # When the states are read
    states = {(s.daemon, s.name): s for s in procs.daemon_states(home, prefix)}
    # Then each is reported, with the uptime of the live one
    assert set(states) == {("pinger", "a"), ("publisher", "vm"), ("worker", "default.1")}
    assert states["pinger", "a"].state == "running" and states["pinger", "a"].pid == live
    assert 0 <= states["pinger", "a"].uptime_s < 30
    assert states["publisher", "vm"].state == "dead" and states["publisher", "vm"].uptime_s is None
    assert states["worker", "default.1"].as_dict() == {
        "daemon": "worker", "name": "default.1", "pid": None, "state": "dead", "uptime_s": None}


def test_find_daemon_processes_sees_only_this_installs_daemons(home, spawn, tmp_path):
    prefix = "ewtest.daemons."
    mine = spawn(prefix + "subscriber", "start", "--home", str(home.home))
    worker = spawn(prefix + "worker", "run", f"--home={home.home}", "--name", "default.1")
    spawn(prefix + "subscriber", "start", "--home", str(tmp_path / "other-install"))
    spawn(prefix + "subscriber", "status", "--home", str(home.home))  # a client, not a daemon
    found = procs.find_daemon_processes(home.home, prefix)
    assert found == sorted([(mine, "subscriber", short_hostname()), (worker, "worker", "default.1")])


# --- file names stay inside run/ and log/ -------------------------------------------------------------

@pytest.mark.parametrize("name", ["../../x", "a/b", "..", ".", "x.", ".x", "a..b", "a\0b", "a\nb", "x" * 201])
def test_a_daemon_name_that_is_not_a_plain_name_gets_no_pid_or_log_path(tmp_path, name):
    # Given an install, When a pid or log path is asked for a name that is not a plain name,
    # Then it is refused (a ValueError naming the rule), for the KM's directories as well
    from enstratus_workers.layout import BadName
    from enstratus_workers.runtime.runner import daemon_files

    layout = Layout(tmp_path)
    for ask in (lambda: layout.pid_file("publisher", name), lambda: layout.log_file("publisher", name),
                lambda: daemon_files(layout, "km", name)):
        with pytest.raises(BadName, match="invalid name"):
            ask()


def test_names_as_the_service_makes_them_stay_in_their_directories(tmp_path):
    # Given the names the service itself uses (host names, "<type>.<n>" of worker processes)
    layout = Layout(tmp_path)
    for name in (short_hostname(), "default.1", "launch-2.10", "x" * 200):
        # When their files are asked for, Then they are plain entries of run/ and log/
        assert layout.pid_file("worker", name).parent == layout.run_dir
        assert layout.log_file("worker", name).parent == layout.log_dir


def test_the_last_line_of_defence_refuses_separators_even_in_a_valid_looking_name(tmp_path):
    from enstratus_workers.layout import BadName, inside

    for filename in ("a/b.pid", "..", "", "x\0.pid"):
        with pytest.raises(BadName):
            inside(tmp_path, filename)
    assert inside(tmp_path, "publisher@h.pid") == tmp_path / "publisher@h.pid"
