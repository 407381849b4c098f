"""Reopening a log after logrotate renamed it: the handler and the file descriptors that were on
the log move to the new file at the old path; a reopen that fails keeps the old file."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap

import pytest

from enstratus_workers.runtime import reopen
from enstratus_workers.runtime.logs import DaemonLog, ReopeningFileHandler


def same_file(fd: int, path) -> bool:
    a, b = os.fstat(fd), os.stat(path)
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


@pytest.fixture
def fds():
    opened: list[int] = []
    yield opened
    for fd in opened:
        try:
            os.close(fd)
        except OSError:
            pass


def test_fds_on_file_finds_the_fds_open_on_the_log_and_no_other(tmp_path, fds):
    # Given one fd on the log, one on another file, and one closed
    log, other = tmp_path / "a.log", tmp_path / "b.log"
    fds.append(os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640))
    fds.append(os.open(other, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640))
    closed = os.open(other, os.O_RDONLY)
    os.close(closed)
    # Then only the first is on the log, and a log that does not exist has none
    assert reopen.fds_on_file(log, fds + [closed]) == (fds[0],)
    assert reopen.fds_on_file(tmp_path / "missing.log", fds) == ()


def test_reopen_handler_moves_the_handler_and_the_followed_fds_to_the_new_file(tmp_path, fds):
    # Given a handler on a log and a descriptor that is on the same log (as stderr would be)
    path = tmp_path / "worker@default.1.log"
    handler = ReopeningFileHandler(path)
    fds.append(os.open(path, os.O_WRONLY | os.O_APPEND))
    handler.follow_fds = tuple(fds)
    logger = logging.getLogger("test_reopen.moves")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.error("before the rotation")
        # When logrotate renames the file and the daemon reopens
        path.rename(tmp_path / "worker@default.1.log.1")
        handler.reopen()
        logger.error("after the rotation")
        os.write(fds[0], b"a traceback on stderr\n")
        handler.flush()
    finally:
        logger.removeHandler(handler)
        handler.close()
    # Then both the handler and the descriptor write to the new file at the old path
    rotated = (tmp_path / "worker@default.1.log.1").read_text()
    new = path.read_text()
    assert "before the rotation" in rotated and "after" not in rotated and "traceback" not in rotated
    assert "after the rotation" in new and "a traceback on stderr" in new
    assert same_file(fds[0], path)


def test_a_reopen_that_fails_keeps_the_old_file_and_says_so(tmp_path, fds, caplog):
    # Given a stream and a followed fd on a renamed log
    path = tmp_path / "publisher@x.log"

    def cannot_open():
        raise PermissionError(13, "Permission denied", str(path))

    with open(path, "a", encoding="utf-8") as old:
        fds.append(os.open(path, os.O_WRONLY | os.O_APPEND))
        path.rename(tmp_path / "publisher@x.log.1")
        # When the new file cannot be opened
        kept = reopen.reopen_stream(old, cannot_open, fds)
        # Then the old stream stays in use and open, the fd is untouched, and the error is logged
        assert kept is old and not old.closed
        assert same_file(fds[0], tmp_path / "publisher@x.log.1")
        assert "cannot reopen the log file" in caplog.text


def test_fds_that_were_not_on_the_log_are_left_where_they_are(tmp_path):
    # Given a handler opened while no standard stream was on its file (a terminal, the journal)
    path = tmp_path / "pinger@x.log"
    handler = ReopeningFileHandler(path)
    try:
        # Then it follows no fd, and reopening touches none
        assert handler.follow_fds == ()
        handler.reopen()
        assert path.exists()
    finally:
        handler.close()


def test_stderr_of_a_process_follows_its_log_through_a_rename(tmp_path):
    # Given a process whose stdout and stderr are its log file (as a worker's are), with its log
    path = tmp_path / "worker@default.1.log"
    script = textwrap.dedent(f"""
        import os, sys
        from pathlib import Path
        from enstratus_workers.runtime.logs import DaemonLog
        path = Path({str(path)!r})
        dlog = DaemonLog(path, to_stderr=False, redirect_stdio=False)
        print("stderr before", file=sys.stderr, flush=True)
        path.rename(str(path) + ".1")        # logrotate
        dlog.reopen()                         # SIGHUP
        print("stderr after", file=sys.stderr, flush=True)
        print("stdout after", flush=True)
        os.write(2, b"fd 2 after\\n")
        dlog.close()
    """)
    with open(path, "ab") as out:
        r = subprocess.run([sys.executable, "-c", script], check=False, stdout=out, stderr=out, timeout=30)
    assert r.returncode == 0, (tmp_path / "worker@default.1.log.1").read_text()
    # Then what it wrote to its streams after the reopen is in the new file, not the renamed one
    rotated = (tmp_path / "worker@default.1.log.1").read_text()
    new = path.read_text()
    assert "stderr before" in rotated and "after" not in rotated
    assert "stderr after" in new and "stdout after" in new and "fd 2 after" in new


def test_a_daemon_log_without_a_file_logs_to_stderr_and_has_nothing_to_reopen(tmp_path, capsys):
    # Given a daemon logging to the journal (no file)
    dlog = DaemonLog(None, to_stderr=False, redirect_stdio=False)
    try:
        logging.getLogger("test_reopen.journal").warning("to the journal")
        # Then the record is on stderr, without a timestamp of its own, and a reopen says why it did nothing
        err = capsys.readouterr().err
        assert "WARNING test_reopen.journal [" in err and "to the journal" in err
        assert err.startswith("WARNING")
        assert "no log file" in dlog.reopen()
    finally:
        dlog.close()
    assert list(tmp_path.iterdir()) == []
