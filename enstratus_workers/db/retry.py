"""The one retry of a whole transaction, for the errors that say "this did not happen: try again".

On a Galera cluster a commit can be refused by certification: another node committed a write
to the same rows first, and this transaction is rolled back with error 1213 (the deadlock
error's number), at its COMMIT or at its next statement. A plain MySQL/MariaDB gives the same
1213 to the loser of a deadlock, and 1205 to a lock wait that timed out. None of these is the
caller's fault and none left anything behind, so the whole transaction is run again, after a
short jittered pause (two hosts that collided once should not collide again in step).

The same goes for a writer node that is lost (``db/writer.py`` moves the engine to the next
node before the error reaches here, so the next try goes there): a connection that could not be
made, a node that is not a synced member (1047), or a connection lost at a statement, before
the COMMIT (the server rolls back what a lost connection had not committed). A connection lost
*at* the COMMIT is different: the commit may or may not have happened, and running an INSERT
again could store it twice. Only a transaction marked ``idempotent`` (a keyed submit, a guarded
outcome write, a heartbeat, a read) is run again then; any other raises, as before.

Callers wrap the function that holds the whole transaction: ``@retried()`` on a store method, or
``run(work)``. Every store of the service uses these two, not copies of the loop. When one
retried function calls another (a keyed submit looks its key up, then inserts), only the
outermost runs things again, as one unit, under its own ``idempotent``: the inner ones run once,
so the tries do not multiply.
"""

from __future__ import annotations

import contextvars
import functools
import logging
import time
from enum import Enum
from typing import Callable, TypeVar

import sqlalchemy as sa

from ..backoff import Backoff

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Rolled back by the server, nothing applied: deadlock or certification failure, lock wait timeout.
CONFLICT_CODES = frozenset({1213, 1205})
#: The node cannot take statements: not yet (or no longer) a synced Galera member.
NODE_NOT_READY = 1047
#: The connection was never made (too many connections, refused, unreachable, timed out):
#: nothing was sent.
CONNECT_CODES = frozenset({1040, 2002, 2003})
#: The node went away under a connection: shutdown in progress, killed, gone away, lost, out
#: of sync, lost while reading the packet, closed for inactivity.
LOST_CODES = frozenset({1053, 1927, 2006, 2013, 2014, 2055, 4031})
#: Everything that says "this node", not "this data": the recorder waits these out as an
#: outage, never failing a job for them (``daemons/subscriber/recorder.py``).
OUTAGE_CODES = CONFLICT_CODES | CONNECT_CODES | LOST_CODES | {NODE_NOT_READY}

ATTEMPTS = 5
#: Up to 50, 100, 200, 400 ms between the five tries ("full" jitter): under a second in all,
#: time for a writer move, short enough for a submit whose database is really down.
BACKOFF = Backoff(first=0.05, cap=0.8, jitter="full")


# Set while a retried function runs in this thread (or task): the ones it calls run once.
_retrying: contextvars.ContextVar[bool] = contextvars.ContextVar("enstratus_db_retrying", default=False)


class Verdict(Enum):
    RETRY = "retry"           # certainly not applied: run it again
    AMBIGUOUS = "ambiguous"   # lost at the COMMIT: applied or not, nobody knows
    FAIL = "fail"             # about the data or a bug: running it again changes nothing


def error_code(exc: BaseException) -> int | None:
    """The MySQL error number behind ``exc`` (a SQLAlchemy or driver error), if any."""
    orig = exc.orig if isinstance(exc, sa.exc.DBAPIError) else exc
    args = getattr(orig, "args", ())
    return args[0] if args and isinstance(args[0], int) else None


def verdict(exc: BaseException) -> Verdict:
    """Whether the transaction that raised ``exc`` may simply be run again (module docstring)."""
    if not isinstance(exc, sa.exc.DBAPIError):
        return Verdict.FAIL
    code = error_code(exc)
    if code in CONFLICT_CODES or code == NODE_NOT_READY:
        return Verdict.RETRY
    at_statement = exc.statement is not None   # SQLAlchemy gives no statement for COMMIT or connect
    if code in CONNECT_CODES and not at_statement:
        return Verdict.RETRY
    if exc.connection_invalidated or code in LOST_CODES:
        return Verdict.RETRY if at_statement else Verdict.AMBIGUOUS
    return Verdict.FAIL


def run(work: Callable[[], T], *, idempotent: bool = False, attempts: int = ATTEMPTS,
        what: str = "transaction", sleep: Callable[[float], None] = time.sleep,
        also: tuple[type[sa.exc.DBAPIError], ...] = ()) -> T:
    """``work()``, run again (up to ``attempts`` in all) while it fails with an error that left
    nothing behind, or, if ``idempotent``, one that may have; the last error is raised.
    ``also``: errors that the caller knows left nothing behind either (the loser of two first
    inserts of one key, whose next try finds the row: the KM's ``put``)."""
    if _retrying.get():
        return work()      # inside another retried run, which runs the whole unit again
    token = _retrying.set(True)
    try:
        for attempt in range(1, attempts + 1):
            try:
                return work()
            except sa.exc.DBAPIError as exc:
                v = Verdict.RETRY if isinstance(exc, also) else verdict(exc)
                again = v is Verdict.RETRY or (v is Verdict.AMBIGUOUS and idempotent)
                if not again or attempt == attempts:
                    raise
                log.debug("%s: try %d of %d failed (%s %s), running it again", what, attempt,
                          attempts, error_code(exc), v.value)
                sleep(BACKOFF.delay(attempt))
        raise AssertionError("unreachable")
    finally:
        _retrying.reset(token)


def retried(*, idempotent: bool = False, attempts: int = ATTEMPTS):
    """Decorate a function holding one whole transaction: it is ``run`` as above."""
    def wrap(fn: Callable[..., T]) -> Callable[..., T]:
        @functools.wraps(fn)
        def again(*args, **kwargs) -> T:
            return run(lambda: fn(*args, **kwargs), idempotent=idempotent, attempts=attempts,
                       what=fn.__qualname__)
        return again
    return wrap
