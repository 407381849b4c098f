"""ENSTRATUS_LOG_TARGET: file, journal, or auto (the journal only when stderr really is the
journal stream systemd names in JOURNAL_STREAM); any other value is refused naming the key."""

from __future__ import annotations

import os

import pytest

from enstratus_workers.errors import ConfigError
from enstratus_workers.runtime import logtarget


@pytest.fixture
def stream_fd(tmp_path):
    """An fd standing in for the stream systemd connects a unit's stderr to."""
    fd = os.open(tmp_path / "journal-stream", os.O_WRONLY | os.O_CREAT, 0o600)
    yield fd
    os.close(fd)


def journal_stream_of(fd: int) -> str:
    st = os.fstat(fd)
    return f"{st.st_dev}:{st.st_ino}"


@pytest.mark.parametrize("value,expected", [("file", "file"), ("journal", "journal"),
                                            ("auto", "file"), ("", "file"), (None, "file")])
def test_explicit_values_and_the_default_without_a_journal(value, expected, stream_fd):
    environ = {} if value is None else {logtarget.ENV: value}
    assert logtarget.resolve(environ, fd=stream_fd) == expected


def test_auto_logs_to_the_journal_when_stderr_is_the_journal_stream(stream_fd):
    # Given stderr on the stream JOURNAL_STREAM names (a systemd unit)
    environ = {"JOURNAL_STREAM": journal_stream_of(stream_fd)}
    # Then auto (the default) means the journal, and file still means the file
    assert logtarget.resolve(environ, fd=stream_fd) == "journal"
    assert logtarget.resolve({**environ, logtarget.ENV: "file"}, fd=stream_fd) == "file"


@pytest.mark.parametrize("stream", ["1:2", "garbage", ":", "12:", "-1:-2"])
def test_auto_ignores_a_journal_stream_that_is_not_stderr(stream, stream_fd):
    # Given JOURNAL_STREAM inherited by a process whose stderr was redirected elsewhere, or mangled
    assert logtarget.resolve({"JOURNAL_STREAM": stream}, fd=stream_fd) == "file"


def test_a_closed_stderr_is_not_the_journal(stream_fd):
    environ = {"JOURNAL_STREAM": journal_stream_of(stream_fd)}
    closed = os.dup(stream_fd)
    os.close(closed)
    assert logtarget.resolve(environ, fd=closed) == "file"


@pytest.mark.parametrize("value", ["syslog", "Journal", "file ", "\x1b[31m"])
def test_any_other_value_is_a_config_error_naming_the_key(value):
    with pytest.raises(ConfigError) as info:
        logtarget.resolve({logtarget.ENV: value})
    assert info.value.key == "ENSTRATUS_LOG_TARGET"
    assert "auto, file, journal" in str(info.value) and "\x1b" not in str(info.value)
