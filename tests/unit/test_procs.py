"""Process discovery through psutil: start times that pin one process, uptime, pid reuse told by
start time (pid files, the embedded queue's consumers, processes being stopped) and the process
tree. Real processes; every process started here is killed."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from enstratus_workers.layout import Layout
from enstratus_workers.mq import embedded
from enstratus_workers.mq.base import OutgoingMessage
from enstratus_workers.runtime import procs
from enstratus_workers.runtime.pidfile import DEAD, RUNNING
from tests.servicehome import wait_until

pytestmark = pytest.mark.timeout(30)

PREFIX = "ewtest.daemons."
SLEEP = "import time; time.sleep(30)"


@pytest.fixture
def spawn():
    """Start a Python process running ``code`` with extra argv (the command line is what is tested)."""
    with contextlib.ExitStack() as cleanup:
        def _spawn(*argv: str, code: str = SLEEP) -> subprocess.Popen:
            child = cleanup.enter_context(subprocess.Popen([sys.executable, "-c", code, *argv]))
            cleanup.callback(child.kill)  # before Popen's exit waits for it
            return child

        yield _spawn


@pytest.fixture
def layout(tmp_path) -> Layout:
    install = Layout(tmp_path / "home")
    install.ensure_dirs()
    return install


def kernel_start_ticks(pid: int) -> int:
    """The oracle: field 22 of /proc/<pid>/stat, read the way the kernel documents it."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    return int(raw[raw.rindex(")") + 2:].split()[19])


def test_start_ticks_are_the_kernels_and_stay_put(spawn):
    # Given a running child
    child = spawn()
    # When its start time is read twice through psutil
    first = procs.start_ticks(child.pid)
    # Then it is the kernel's own count of ticks since boot, unchanged on a second read
    assert first == kernel_start_ticks(child.pid)
    assert procs.start_ticks(child.pid) == first
    assert procs.start_ticks(os.getpid()) == kernel_start_ticks(os.getpid())


def test_uptime_counts_from_the_process_start(spawn):
    # Given a child started just now, in a test process that is older
    child = spawn()
    # Then its uptime is short, and no longer than this process's
    up = procs.uptime(child.pid)
    assert up is not None and 0 <= up < 5
    assert procs.uptime(os.getpid()) >= up
    # and a pid that is gone has none
    child.kill()
    child.wait()
    assert procs.uptime(child.pid) is None


def test_a_zombie_is_not_alive_and_has_no_start_time(spawn):
    # Given a child that exited and was not reaped yet
    child = spawn(code="pass")
    assert wait_until(lambda: getattr(procs.stat(child.pid), "state", None) == "zombie")
    # Then os.kill(pid, 0) still succeeds, but it counts as dead
    os.kill(child.pid, 0)
    assert not procs.is_alive(child.pid)
    assert procs.start_ticks(child.pid) is None
    assert not procs.is_same_process(child.pid, None)


def test_a_reused_pid_is_not_the_same_process(spawn):
    # Given a live child and the start time it had
    child = spawn()
    ticks = procs.start_ticks(child.pid)
    # Then (pid, start) names it, as text too (the embedded queue stores it so)
    assert procs.is_same_process(child.pid, ticks)
    assert procs.is_same_process(child.pid, str(ticks))
    # and the same pid with another start time is another process: one that reused the pid
    assert not procs.is_same_process(child.pid, ticks - 1)
    # and once it is gone no start time matches
    child.kill()
    child.wait()
    assert not procs.is_same_process(child.pid, ticks)
    assert not procs.is_alive(-1) and not procs.is_same_process(0, None)


def test_a_look_alike_created_after_the_pid_file_was_written_is_stale(layout, spawn):
    # Given a pid file written an hour ago, whose pid now belongs to a ``status`` client of the
    # same daemon, home and name (it got the pid by reuse: it started long after the file)
    client = spawn(PREFIX + "pinger", "status", "--home", str(layout.home), "--name", "a")
    pf = procs.pid_file_for(layout, "pinger", "a", PREFIX)
    pf.path.write_text(f"{client.pid}\n")
    an_hour_ago = time.time() - 3600
    os.utime(pf.path, (an_hour_ago, an_hour_ago))
    # Then the command line alone would call it ours; its start time says it did not write the file
    assert procs.Identity(PREFIX + "pinger", layout.home, "a").is_running(client.pid)
    assert pf.state() == (DEAD, client.pid)
    # and a start replaces the file
    assert pf.acquire() == client.pid
    assert pf.read() == os.getpid()


def test_a_look_alike_that_existed_when_the_file_was_written_is_ours(layout, spawn):
    # Given a process of this daemon's command line, and its pid file written after it started
    proc = spawn(PREFIX + "pinger", "stop", "--home", str(layout.home), "--name", "a")
    pf = procs.pid_file_for(layout, "pinger", "a", PREFIX)
    pf.path.write_text(f"{proc.pid}\n")
    # Then it counts as running
    assert pf.state() == (RUNNING, proc.pid)


def test_a_daemon_older_than_its_pid_file_by_the_clock_is_still_running(layout, spawn):
    # Given a daemon under a daemon command whose pid file's mtime is before its start (as a wall
    # clock stepped forward after the start makes it look)
    daemon = spawn(PREFIX + "pinger", "run", "--home", str(layout.home), "--name", "a")
    pf = procs.pid_file_for(layout, "pinger", "a", PREFIX)
    pf.path.write_text(f"{daemon.pid}\n")
    os.utime(pf.path, (time.time() - 3600, time.time() - 3600))
    # Then it is running: two daemons after a clock step would be worse than a stale file
    assert pf.state() == (RUNNING, daemon.pid)
    assert [s.state for s in procs.daemon_states(layout, PREFIX)] == ["running"]


def test_the_embedded_queue_gives_back_what_a_consumer_with_a_reused_pid_held(tmp_path):
    # Given a consumer in this process holding one delivery
    path = tmp_path / "queue.sqlite"
    with embedded.EmbeddedTransport(path) as t:
        t.declare(["work"])
        t.publish([OutgoingMessage("work", b"{}", message_id="job-1")])
        consumer = t.consumer(["work"], prefetch=1)
        assert [d.message_id for d in consumer.poll(1.0, 1)] == ["job-1"]
        conn = t._db()
        # When the reclaimer looks, the consumer's pid and start time are alive: nothing comes back
        assert embedded._reclaim(conn, time.time(), t.host) == 0
        # When its row says it started at another time (its pid now belongs to another process)
        conn.execute("UPDATE consumers SET started = ?", (str(procs.start_ticks(os.getpid()) - 1),))
        # Then the delivery is released for redelivery
        assert embedded._reclaim(conn, time.time(), t.host) == 1
        again = t.consumer(["work"], prefetch=1).poll(1.0, 1)
        assert [(d.message_id, d.redelivered) for d in again] == [("job-1", True)]


def test_descendants_are_found_and_a_warm_stop_ends_the_parent(spawn):
    # Given a child that started a grandchild and printed its pid
    code = ("import subprocess, sys, time; "
            f"g = subprocess.Popen([sys.executable, '-c', {SLEEP!r}]); "
            "print(g.pid, flush=True); time.sleep(30)")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    with child:
        grandchild = int(child.stdout.readline())
        try:
            # Then the tree holds the grandchild, and the child owns no process group of its own
            assert procs.descendants(child.pid) == [grandchild]
            assert procs.owned_group(child.pid) is None
            # When it is stopped, the first SIGTERM suffices
            assert procs.terminate([child.pid], grace=5.0) == {child.pid: "stopped"}
        finally:
            child.kill()
            os.kill(grandchild, signal.SIGKILL)


def test_terminate_does_not_signal_a_pid_whose_process_was_replaced(spawn):
    # Given a target pinned to a process that then exited
    child = spawn()
    target = procs._Target(child.pid)
    assert target.alive()
    child.kill()
    child.wait()
    # Then it is no longer alive, whatever process may hold the pid later, and is not signalled
    assert not target.alive()
    target.signal(signal.SIGTERM)
    # and terminating a pid that is gone reports it so
    assert procs.terminate([child.pid], grace=0.1) == {child.pid: "not running"}


def test_find_daemon_processes_reads_command_lines_through_psutil(layout, spawn):
    # Given a daemon of this install, one of another install and a client
    mine = spawn(PREFIX + "publisher", "start", "--home", str(layout.home), "--name", "vm")
    spawn(PREFIX + "publisher", "start", "--home", "/elsewhere", "--name", "vm")
    spawn(PREFIX + "publisher", "stop", "--home", str(layout.home), "--name", "vm")
    # Then only the daemon of this install is found, with its name
    assert procs.find_daemon_processes(layout.home, PREFIX) == [(mine.pid, "publisher", "vm")]
    assert procs.cmdline(mine.pid)[-4:] == ["--home", str(layout.home), "--name", "vm"]
