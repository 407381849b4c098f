"""A daemon's log is one line per record whatever the record carries: names and errors from users
can neither forge a line nor drive the operator's terminal."""

from __future__ import annotations

import logging

import pytest

from enstratus_workers.runtime.logs import DaemonLog, escape

FORGED = "evil\n2030-01-01 00:00:00,000 INFO enstratus_workers.daemons.subscriber [1] all good \x1b[31mred\x1b[0m"


@pytest.fixture
def daemon_log(tmp_path):
    dlog = DaemonLog(tmp_path / "publisher@test.log", to_stderr=False, redirect_stdio=False)
    yield dlog
    dlog.close()


def lines_of(dlog: DaemonLog) -> list[str]:
    for h in dlog.handlers:
        h.flush()
    return dlog.path.read_text(encoding="utf-8").splitlines()


def test_a_newline_and_an_escape_sequence_in_an_argument_stay_on_one_escaped_line(daemon_log):
    # Given a record whose argument holds a newline that starts a forged record, and ANSI colours
    logging.getLogger("enstratus_workers.test").warning("submitted action %s", FORGED)
    # When it is written
    lines = lines_of(daemon_log)
    # Then it is one line, the newline and ESC shown as escapes and no control character left
    assert len(lines) == 1
    assert lines[0].endswith("submitted action evil\\n2030-01-01 00:00:00,000 INFO enstratus_workers.daemons"
                             ".subscriber [1] all good \\x1b[31mred\\x1b[0m")
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in lines[0])


@pytest.mark.parametrize("char,shown", [("\r", "\\r"), ("\t", "\\t"), ("\x00", "\\x00"), ("\x7f", "\\x7f"),
                                        ("\x85", "\\x85"), ("\x9b", "\\x9b"), ("\u2028", "\\u2028"),
                                        ("\u2029", "\\u2029"), ("\ud800", "\\ud800")])
def test_every_line_breaking_or_terminal_control_character_is_escaped(daemon_log, char, shown):
    # Given a message (not only an argument) holding the character, When logged,
    # Then it is written as its escape, on the record's one line
    logging.getLogger("enstratus_workers.test").info(f"queue a{char}b")
    lines = lines_of(daemon_log)
    assert len(lines) == 1 and lines[0].endswith(f"queue a{shown}b")


def test_printable_text_in_any_script_is_left_as_it_is():
    assert escape("déjà vu ☃ 東京 \\n stays") == "déjà vu ☃ 東京 \\n stays"


def test_a_traceback_keeps_its_lines_but_its_exception_messages_are_escaped(daemon_log):
    # Given an exception whose message (and whose cause's message) holds a forged record
    log = logging.getLogger("enstratus_workers.test")
    try:
        try:
            raise ValueError(FORGED)
        except ValueError as cause:
            raise RuntimeError("while running " + FORGED) from cause
    except RuntimeError:
        # When it is logged with its traceback
        log.exception("action %s failed", "x\ny")
    lines = lines_of(daemon_log)
    # Then the record is one line, the traceback keeps its own structure
    assert lines[0].endswith("action x\\ny failed")
    assert lines[1] == "Traceback (most recent call last):"
    assert any(line.startswith("ValueError: evil\\n2030-01-01") for line in lines)
    assert any(line.startswith("RuntimeError: while running evil\\n2030") for line in lines)
    # And no line of it starts like a record of the service's own, and none holds ESC
    assert sum(line.startswith("20") for line in lines) == 1
    assert not any("\x1b" in line for line in lines)
