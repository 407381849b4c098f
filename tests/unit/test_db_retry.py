"""The one retry of a whole transaction (``db/retry.py``): what it runs again, what it does not,
and the callers that must never turn a conflict into a failed job or a failed submit."""

from __future__ import annotations

import pymysql
import pytest
import sqlalchemy as sa

from enstratus_workers.db import retry
from enstratus_workers.db.group_commit import GroupCommit, _Slot
from enstratus_workers.db.retry import Verdict


def mysql_error(code: int, text: str = "", *, statement: str | None = "UPDATE t SET x = 1",
                invalidated: bool = False, kind=sa.exc.OperationalError):
    """A SQLAlchemy error as the pymysql dialect raises it (``statement`` None: at COMMIT or connect)."""
    orig = pymysql.err.OperationalError(code, text)
    return kind(statement, None, orig, connection_invalidated=invalidated)


@pytest.mark.parametrize("error, expected", [
    (mysql_error(1213, "Deadlock found when trying to get lock"), Verdict.RETRY),
    (mysql_error(1213, "Deadlock found", statement=None), Verdict.RETRY),   # certification at COMMIT
    (mysql_error(1205, "Lock wait timeout exceeded"), Verdict.RETRY),
    (mysql_error(1047, "WSREP has not yet prepared node for application use"), Verdict.RETRY),
    (mysql_error(2003, "Can't connect to MySQL server", statement=None), Verdict.RETRY),
    (mysql_error(2013, "Lost connection to MySQL server during query", invalidated=True), Verdict.RETRY),
    (mysql_error(2013, "Lost connection", statement=None, invalidated=True), Verdict.AMBIGUOUS),
    (mysql_error(1053, "Server shutdown in progress", statement=None), Verdict.AMBIGUOUS),
    (mysql_error(1062, "Duplicate entry", kind=sa.exc.IntegrityError), Verdict.FAIL),
    (mysql_error(1406, "Data too long", kind=sa.exc.DataError), Verdict.FAIL),
    (ValueError("not a database error"), Verdict.FAIL),
])
def test_what_is_run_again(error, expected):
    assert retry.verdict(error) is expected


class Flaky:
    """A transaction that fails with ``errors`` one after the other, then returns 'done'."""

    def __init__(self, *errors):
        self.errors = list(errors)
        self.calls = 0

    def __call__(self):
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "done"


def no_sleep(_seconds):
    pass


def test_a_certification_failure_is_run_again_until_it_commits():
    work = Flaky(mysql_error(1213, statement=None), mysql_error(1213, statement=None))
    assert retry.run(work, sleep=no_sleep) == "done"
    assert work.calls == 3


def test_a_conflict_that_never_ends_is_raised_after_the_last_try():
    work = Flaky(*[mysql_error(1213) for _ in range(10)])
    with pytest.raises(sa.exc.OperationalError):
        retry.run(work, attempts=4, sleep=no_sleep)
    assert work.calls == 4


def test_a_connection_lost_at_commit_is_run_again_only_when_idempotent():
    lost = mysql_error(2013, "Lost connection", statement=None, invalidated=True)
    work = Flaky(lost)
    with pytest.raises(sa.exc.OperationalError):
        retry.run(work, sleep=no_sleep)               # an INSERT could be stored twice
    assert work.calls == 1
    work = Flaky(lost)
    assert retry.run(work, idempotent=True, sleep=no_sleep) == "done"


def test_bad_data_is_not_run_again():
    work = Flaky(mysql_error(1062, "Duplicate entry", kind=sa.exc.IntegrityError))
    with pytest.raises(sa.exc.IntegrityError):
        retry.run(work, sleep=no_sleep)
    assert work.calls == 1


def test_an_error_the_caller_names_is_run_again_and_others_still_judged_as_ever():
    # Given the loser of two first inserts of one key (the KM's put: its next try finds the row)
    duplicate = mysql_error(1062, "Duplicate entry", kind=sa.exc.IntegrityError)
    work = Flaky(duplicate, duplicate)
    # Then the caller that names it gets it run again
    assert retry.run(work, also=(sa.exc.IntegrityError,), sleep=no_sleep) == "done"
    assert work.calls == 3
    # And a bad value is still not run again, nor a commit lost in a non-idempotent unit
    work = Flaky(mysql_error(1406, "Data too long", kind=sa.exc.DataError))
    with pytest.raises(sa.exc.DataError):
        retry.run(work, also=(sa.exc.IntegrityError,), sleep=no_sleep)
    work = Flaky(mysql_error(2013, "Lost connection", statement=None, invalidated=True))
    with pytest.raises(sa.exc.OperationalError):
        retry.run(work, also=(sa.exc.IntegrityError,), sleep=no_sleep)
    assert work.calls == 1


def test_nested_retried_functions_run_again_as_one_unit():
    # Given a retried function calling another, whose statement keeps conflicting
    inner_calls = []

    @retry.retried()
    def inner():
        inner_calls.append(1)
        raise mysql_error(1213)

    @retry.retried(idempotent=True)
    def outer():
        return inner()

    # When the outer one runs
    with pytest.raises(sa.exc.OperationalError):
        outer()
    # Then the tries did not multiply: the outer ran the unit five times, the inner once each
    assert len(inner_calls) == retry.ATTEMPTS


def test_a_group_whose_commit_was_lost_is_not_written_again_item_by_item():
    # Given a group commit whose write of a group of three loses its connection at COMMIT
    writes = []

    def write(items):
        writes.append(list(items))
        raise mysql_error(2013, "Lost connection", statement=None, invalidated=True)

    groups = GroupCommit(write, retry_alone=lambda exc: retry.verdict(exc) is not Verdict.AMBIGUOUS)
    slots = [_Slot(i) for i in "abc"]
    groups._write_group(slots)
    # Then no item was written again alone (the group may be stored): each caller gets the error
    assert writes == [["a", "b", "c"]]
    assert all(isinstance(s.error, sa.exc.OperationalError) for s in slots)


def test_a_group_refused_for_one_bad_item_still_finds_it():
    def write(items):
        if "bad" in items:
            raise mysql_error(1406, "Data too long", kind=sa.exc.DataError)
        return [f"ok {i}" for i in items]

    groups = GroupCommit(write, retry_alone=lambda exc: retry.verdict(exc) is not Verdict.AMBIGUOUS)
    slots = [_Slot(i) for i in ("a", "bad", "c")]
    groups._write_group(slots)
    assert [s.result for s in (slots[0], slots[2])] == ["ok a", "ok c"]
    assert isinstance(slots[1].error, sa.exc.DataError)


def test_the_recorder_waits_out_a_node_that_is_not_ready_never_failing_the_job():
    from enstratus_workers.daemons.subscriber.recorder import _kind

    for code in (1213, 1205, 1047, 2013, 2003):
        assert _kind(mysql_error(code)) == "outage", code
