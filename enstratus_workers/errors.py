"""One exception tree for the service, and the LSB exit codes the daemons and init script use."""

# LSB init-script exit codes (start/stop/etc.) and status codes.
EXIT_OK = 0
EXIT_GENERIC = 1
EXIT_INVALID_ARGUMENT = 2
EXIT_UNIMPLEMENTED = 3
EXIT_NOT_INSTALLED = 5
EXIT_NOT_CONFIGURED = 6
EXIT_NOT_RUNNING = 7

STATUS_RUNNING = 0
STATUS_DEAD_WITH_PIDFILE = 1
STATUS_STOPPED = 3
STATUS_UNKNOWN = 4

# Monitoring-plugin (Nagios) exit codes for `pinger check`.
CHECK_OK = 0
CHECK_WARNING = 1
CHECK_CRITICAL = 2
CHECK_UNKNOWN = 3


class EnstratusError(Exception):
    """Base of every error this service raises on purpose."""


class ConfigError(EnstratusError):
    """A config file is missing, unreadable, insecure or holds a bad value.

    Carries the file, key and line so the message can point the operator at the fix.
    """

    def __init__(self, message, file=None, key=None, line=None):
        self.file, self.key, self.line, self.reason = file, key, line, message
        where = []
        if file is not None:
            where.append(str(file) + (f":{line}" if line else ""))
        if key is not None:
            where.append(f"key '{key}'")
        super().__init__((", ".join(where) + ": " if where else "") + message)


class TransportError(EnstratusError):
    """The queue transport failed; base of the transport errors."""


class ConnectionClosed(TransportError):
    """The connection to the broker (or the embedded queue file) was lost; reconnect and retry."""


class PublishError(TransportError):
    """Some messages were not confirmed by the broker (nacked, returned or connection lost).

    ``unconfirmed`` holds the message ids that must be treated as not published.
    """

    def __init__(self, message, unconfirmed=()):
        super().__init__(message)
        self.unconfirmed = tuple(unconfirmed)


class DatabaseError(EnstratusError):
    """A database operation failed (connection lost, deadlock, schema too new)."""


class ActionError(EnstratusError):
    """An action failed in a way it chose to report (unknown action, bad arguments)."""


class DaemonError(EnstratusError):
    """A daemon could not be started, stopped or queried."""


class Deferred(EnstratusError):
    """An action saying "not now": try again in ``delay_s`` seconds, and do not count this attempt.

    For a cloud API that throttles: the job goes back to ``pending`` with its attempts as before
    this one, and the publisher relays it no sooner than ``delay_s`` later (a broker-held delay).
    A job may be deferred any number of times; each deferral is an analytics event ``deferred``,
    and the job shows how often it was deferred and the last ``reason``.
    """

    def __init__(self, delay_s: float, reason: str = ""):
        if isinstance(delay_s, bool) or not isinstance(delay_s, (int, float)) or not 0 <= delay_s <= MAX_DEFER_S:
            raise ValueError(f"Deferred: delay_s must be a number of seconds from 0 to {MAX_DEFER_S}, "
                             f"not {delay_s!r}"[:200])
        self.delay_s, self.reason = float(delay_s), str(reason)
        super().__init__(f"deferred {self.delay_s:g}s" + (f": {self.reason}" if self.reason else ""))


#: the longest a job can be deferred: the longest delay a broker holds (mq.base.MAX_DELAY_MS)
MAX_DEFER_S = (2**32 - 1) // 1000


class Cancelled(EnstratusError):
    """Raised by ``ActionContext.stop_if_cancelled()``: the job was cancelled while its action
    ran. An action may raise it, return, or do anything else once ``ctx.cancelled()`` is true:
    the attempt ends ``cancelled`` either way, and the action's compensation runs."""
