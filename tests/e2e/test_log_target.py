"""ENSTRATUS_LOG_TARGET through the real runner (the dummy daemon in a scratch root): journal
logs to stderr only and writes no log file, auto finds the journal by JOURNAL_STREAM (also for a
daemonized start), and a bad value stops the start with exit 6 naming the key."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from enstratus_workers.runtime import procs
from tests.e2e import test_runner
from tests.e2e.test_runner import (
    REPO,
    dummy,
    env,
    log_file,
    pid_file,
    started_pid,
    wait_for,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(40)]

# the runner tests' scratch root (no process naming it survives the test) and home in it
root, home = test_runner.root, test_runner.home


def test_a_bad_log_target_stops_the_start_naming_the_key(home):
    r = subprocess.run([sys.executable, "-m", "tests.e2e.dummy_daemon", "start", "--home", str(home)],
                       env=env(ENSTRATUS_LOG_TARGET="syslog"), cwd=REPO, capture_output=True, text=True,
                       timeout=30, check=False)
    assert r.returncode == 6, r.stdout + r.stderr
    assert "ENSTRATUS_LOG_TARGET" in r.stderr and "auto, file, journal" in r.stderr
    assert not pid_file(home).exists() and not log_file(home).exists()


def test_journal_logs_to_stderr_only_and_sighup_changes_nothing(home, tmp_path):
    # Given a daemon run in the foreground with the journal as its target, stderr on a stream
    stream = tmp_path / "stream"
    with open(stream, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "tests.e2e.dummy_daemon", "run", "--home", str(home)],
                                # root on purpose (this suite runs as root): no warning line
                                env=env(ENSTRATUS_LOG_TARGET="journal", ENSTRATUS_USER="root"),
                                cwd=REPO, stdout=out, stderr=out)
    try:
        assert wait_for(lambda: "dummy ready" in stream.read_text()), stream.read_text()
        # When it gets SIGHUP
        os.kill(proc.pid, signal.SIGHUP)
        assert wait_for(lambda: "SIGHUP: logging to stderr only" in stream.read_text()), stream.read_text()
        # Then it runs on, and it never wrote a log file; its lines carry no timestamp of their own
        assert proc.poll() is None
        assert not log_file(home).exists()
        assert all(line.split(" ", 1)[0] in ("INFO", "WARNING", "ERROR", "DEBUG")
                   for line in stream.read_text().splitlines())
    finally:
        proc.terminate()
        proc.wait(10)
    assert "stopped" in stream.read_text()


def test_auto_under_the_journal_keeps_a_daemonized_start_on_the_journal_stream(home, tmp_path):
    # Given stderr on the stream that JOURNAL_STREAM names, as systemd sets it up, and no target set
    stream = tmp_path / "journal"
    stream.touch()
    st = os.stat(stream)
    with open(stream, "ab") as out:
        r = subprocess.run([sys.executable, "-m", "tests.e2e.dummy_daemon", "start", "--home", str(home)],
                           env=env(JOURNAL_STREAM=f"{st.st_dev}:{st.st_ino}"), cwd=REPO,
                           stdout=subprocess.PIPE, stderr=out, text=True, timeout=30, check=False)
    # When the daemon started (daemonized)
    pid = started_pid(r)
    try:
        # Then it logs to that stream, not to a log file, and its stdout and stderr are on it
        assert wait_for(lambda: "dummy ready" in stream.read_text()), stream.read_text()
        assert not log_file(home).exists()
        assert os.readlink(f"/proc/{pid}/fd/1") == os.readlink(f"/proc/{pid}/fd/2") == str(stream)
    finally:
        assert dummy(home, "stop").returncode == 0
    assert not procs.is_alive(pid)
