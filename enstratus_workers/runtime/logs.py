"""A daemon's log file: one per daemon instance, reopened on SIGHUP so logrotate can move it away.

The runner makes one ``DaemonLog`` in the daemon process. ``reopen`` is called from the runner's
signal-watcher thread (never from the signal handler itself), under the handler's lock so no
record is written half to the old file and half to the new one; the standard streams that
were on the log follow it to the new file (see ``reopen``).

Records are one line each whatever they carry: names that reach a log (actions, queues, job
arguments, error texts) come from users, and a newline in one would forge a line that a reader
or a log shipper takes for the service's own, an ESC sequence would colour or rewrite the
operator's terminal. ``EscapingFormatter`` therefore writes every control character of a
record's line as a visible escape (see ``escape``); a traceback keeps its own line breaks, but
the exception messages in it are escaped the same way.
"""

from __future__ import annotations

import logging
import sys
import threading
import traceback
from pathlib import Path

from enstratus_workers.runtime import reopen

log = logging.getLogger(__name__)

FORMAT = "%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s"
# the journal stamps each line with its own time: no second timestamp
JOURNAL_FORMAT = "%(levelname)s %(name)s [%(process)d] %(message)s"

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_table() -> dict[int, str]:
    table = {}
    # C0 and DEL, C1, the Unicode line and paragraph separators, and lone surrogates (which a
    # UTF-8 log file cannot even hold: the record would be lost to an encoding error)
    for code in (*range(0x20), *range(0x7F, 0xA0), 0x2028, 0x2029, *range(0xD800, 0xE000)):
        char = chr(code)
        table[code] = _NAMED.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
    return table


_ESCAPES = _escape_table()


def escape(text: str) -> str:
    """``text`` on one line with nothing a terminal acts on: LF as ``\\n``, CR ``\\r``, tab
    ``\\t``, other C0/C1 controls and DEL as ``\\xNN``, U+2028/U+2029 and lone surrogates as
    ``\\uNNNN``. Printable text, non-ASCII letters included, is left as it is."""
    return text.translate(_ESCAPES)


class EscapingFormatter(logging.Formatter):
    """A Formatter whose every record is one line (message, arguments, logger and thread names
    escaped), followed by its traceback, if any, whose exception messages are escaped too."""

    def format(self, record: logging.LogRecord) -> str:
        # another handler's Formatter may have cached its unescaped traceback on the record
        cached, record.exc_text = record.exc_text, None if record.exc_info else record.exc_text
        try:
            return super().format(record)
        finally:
            record.exc_text = cached

    def formatMessage(self, record: logging.LogRecord) -> str:
        return escape(super().formatMessage(record))

    def formatException(self, ei) -> str:
        te = traceback.TracebackException(*ei, compact=True)
        own = set()
        pending, seen = [te], set()
        while pending:  # every exception of the chain, groups included, each once
            t = pending.pop()
            if id(t) in seen:
                continue
            seen.add(id(t))
            own.update(t.format_exception_only())
            pending.extend(x for x in (t.__cause__, t.__context__, *(getattr(t, "exceptions", None) or ()))
                           if x is not None)
        text = "".join(_escape_line(part) if part in own else part for part in te.format())
        return text[:-1] if text.endswith("\n") else text


def _escape_line(part: str) -> str:
    """An exception's ``Type: message`` line, escaped but for the newline that ends it."""
    body, end = (part[:-1], "\n") if part.endswith("\n") else (part, "")
    return escape(body) + end


class ReopeningFileHandler(logging.FileHandler):
    """A FileHandler that can be told to reopen its file (after the file was renamed by rotation).

    File descriptors 1 and 2 follow the file when they were open on it as the handler opened it
    (see ``reopen``): a daemon points them at its log so that tracebacks and stray prints land
    there too. ``redirect_stdio`` makes both follow whatever they were.
    """

    def __init__(self, path: Path, redirect_stdio: bool = False):
        super().__init__(path, mode="a", encoding="utf-8", delay=False)
        self.redirect_stdio = redirect_stdio
        self.follow_fds = reopen.STDIO_FDS if redirect_stdio else reopen.fds_on_file(path)

    def reopen(self) -> None:
        reopen.reopen_handler(self, self.follow_fds)


class DaemonLog:
    """The handlers one daemon added to the root logger, so they can be reopened and removed.

    With ``path`` None there is no file: records go to stderr only (the journal, under systemd;
    see ``logtarget``), and a reopen has nothing to do.
    """

    def __init__(self, path: Path | None, *, to_stderr: bool, redirect_stdio: bool, level: str = "INFO"):
        self.path = path
        self.file_handler: ReopeningFileHandler | None = None
        self.handlers: list[logging.Handler] = []
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.file_handler = ReopeningFileHandler(path, redirect_stdio=redirect_stdio)
            self.handlers.append(self.file_handler)
        if to_stderr or path is None:
            self.handlers.append(logging.StreamHandler(sys.stderr))
        formatter = EscapingFormatter(FORMAT if path is not None else JOURNAL_FORMAT)
        root = logging.getLogger()
        root.setLevel(level)
        # pika narrates every connection step at INFO; its warnings and errors are what matter
        logging.getLogger("pika").setLevel(max(root.getEffectiveLevel(), logging.WARNING))
        for h in self.handlers:
            h.setFormatter(formatter)
            root.addHandler(h)
        # uncaught exceptions of threads go to the log with their traceback, not just to stderr
        threading.excepthook = _log_thread_exception

    def reopen(self) -> str:
        """Reopen the log file (after rotation); returns what was done, for the log."""
        if self.file_handler is None:
            return "logging to stderr only: no log file to reopen"
        self.file_handler.reopen()
        return f"reopened the log file {self.path}"

    def close(self) -> None:
        root = logging.getLogger()
        for h in self.handlers:
            root.removeHandler(h)
            h.close()
        threading.excepthook = threading.__excepthook__


def _log_thread_exception(args) -> None:
    if args.exc_type is SystemExit:
        return
    log.error("uncaught exception in thread %s", args.thread.name if args.thread else "?",
              exc_info=(args.exc_type, args.exc_value, args.exc_traceback))
