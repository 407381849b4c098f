"""The analytics event of an attempt says where it ran and why it failed: the subscriber puts
the host (``host.name``) and the attempt's error (cut to ``EVENT_ERROR_MAX``) into the event it hands the
recorder, and the job page's timeline reads them back."""

from __future__ import annotations

from types import SimpleNamespace

from enstratus_workers.daemons.subscriber.pool import Assignment
from enstratus_workers.db.schema import EVENT_ERROR_MAX
from enstratus_workers.jobs.values import Task
from tests.unit.test_delivery_check import deliver, new_job, sub  # noqa: F401 (the fixture)


def test_an_attempts_event_carries_its_host_and_its_error_cut_short(sub):
    # Given an attempt that failed with a very long error, and one that succeeded
    handed = []
    sub.recorder = SimpleNamespace(finished=lambda outcome, event, deliveries, dead_reason=None:
                                   handed.append(event))
    failed, ok = new_job(sub), new_job(sub)
    deliveries = deliver(sub, (failed, 1), (ok, 1))
    for job_id, d in zip((failed, ok), deliveries):
        task = Task(job_id, "echo", {}, 1, 5, "default", sub.owner)
        error = "x" * (EVENT_ERROR_MAX * 3) if job_id == failed else None
        outcome = task.outcome("failed" if error else "succeeded", retryable=bool(error), worker="default@h.1",
                               start_ms=1000, end_ms=1250, error=error)
        # When the subscriber records the outcome
        sub._record(Assignment(d, task, "default"), outcome)
    # Then each event names this host, the failed one's error is cut to the bound, the other has none
    bad, good = handed
    assert bad.host == good.host == sub.host   # host.name: the short host name unless set
    assert bad.error == "x" * EVENT_ERROR_MAX and good.error is None
    assert (bad.outcome, bad.duration_ms, bad.worker) == ("retry", 250, "default@h.1")
    # And once written, the events read back with them
    sub.dbs.events.record(handed)
    assert [(e.host, len(e.error or "")) for e in sub.dbs.events.for_job(failed)] == [(sub.host, EVENT_ERROR_MAX)]
