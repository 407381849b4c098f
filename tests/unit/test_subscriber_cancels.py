"""The subscriber's share of a cancel (``daemons/subscriber/cancels.py``), with the pool's worker
handles and the job store stood in for: what waits is acked away or compensated, what runs is
told, what does not stop is killed and compensated elsewhere."""

from __future__ import annotations

import signal
from collections import deque
from types import SimpleNamespace

from enstratus_workers.daemons.subscriber import worker_socket
from enstratus_workers.daemons.subscriber.cancels import Cancels
from enstratus_workers.daemons.subscriber.pool import Assignment
from enstratus_workers.jobs.values import Task


class Rows:
    """The job store's ``cancels_among``, answering from a dict."""

    def __init__(self, rows):
        self.rows, self.asked = rows, []

    def cancels_among(self, ids):
        self.asked.append(sorted(ids))
        return {i: r for i, r in self.rows.items() if i in ids}


class Worker:
    """A worker handle: the frames sent to it and the signals it got."""

    def __init__(self, *assignments):
        self.name, self.pid, self.kill_reason = "default.1", 4242, None
        self.inflight = deque(assignments)
        self.frames, self.signals = [], []
        self.conn = SimpleNamespace(send_bytes=lambda b: self.frames.append(worker_socket.unpack(b)))
        self.proc = SimpleNamespace(send_signal=self.signals.append)


def assignment(job_id, attempt=1, compensate=False) -> Assignment:
    task = Task(job_id, "test.loop", {}, attempt, 3, "default", "me", compensate)
    return Assignment(SimpleNamespace(tag=job_id), task, "default")


def test_what_waits_is_acked_away_if_it_ended_else_only_compensated():
    # Given two attempts waiting for a worker: one whose row a cancel ended (it was queued), one
    # whose row is running with a cancel requested (taken over from a dead owner), and a third
    gone, running, other = assignment(1), assignment(2), assignment(3)
    pending = {"default": deque([gone, running, other])}
    active = {a.task.key: [a.delivery] for a in (gone, running, other)}
    acked = []
    # When the subscriber looks
    Cancels(grace_s=5).look(Rows({1: ("cancelled", 0), 2: ("running", 1)}), active, pending, [], acked.extend)
    # Then the first is acked away unrun, the second will run as its compensation only
    assert acked == [gone.delivery] and (1, 1) not in active
    assert [(a.task.job_id, a.task.compensate) for a in pending["default"]] == [(2, True), (3, False)]


def test_a_running_attempt_is_told_once_then_killed_after_the_grace_and_compensated_elsewhere():
    running, behind = assignment(7), assignment(8)
    worker = Worker(running, behind)
    active = {a.task.key: [a.delivery] for a in (running, behind)}
    rows = Rows({7: ("running", 1), 8: ("queued", 0)})
    cancels = Cancels(grace_s=0, look_every_s=0)
    # When the subscriber looks / Then the worker is told of both, each by a frame naming the
    # attempt and a SIGUSR1 (so a late signal can only ever point at those attempts)
    cancels.look(rows, active, {}, [worker], None)
    assert worker.frames == [{"t": "cancel", "job": 7, "attempt": 1}, {"t": "cancel", "job": 8, "attempt": 1}]
    assert worker.signals == [signal.SIGUSR1, signal.SIGUSR1]
    # When it looks again, the grace over / Then the running one's worker is killed, once, and
    # the one behind it (not started) is not what it is killed for
    cancels.look(rows, active, {}, [worker], None)
    cancels.look(rows, active, {}, [worker], None)
    assert worker.signals[2:] == [signal.SIGKILL] and "action.cancel_grace (0s)" in worker.kill_reason
    assert len(worker.frames) == 2
    # When the pool reports the worker died under it / Then it goes out again as its compensation
    again = cancels.after_crash(running)
    assert again.task.key == running.task.key and again.task.compensate
    # and a compensation that kills its worker is not sent out again (it is recorded cancelled)
    assert cancels.after_crash(again) is None
    # and a crash of an attempt nobody cancelled is charged as usual
    assert cancels.after_crash(assignment(9)) is None


def test_no_query_while_nothing_is_held_and_one_a_second_while_something_is():
    rows = Rows({})
    cancels = Cancels(grace_s=5, look_every_s=60)
    cancels.look(rows, {}, {}, [], None)
    a = assignment(5)
    for _ in range(3):
        cancels.look(rows, {a.task.key: [a.delivery]}, {"default": deque([a])}, [], None)
    assert rows.asked == [[5]]


def test_an_attempt_that_finished_as_its_worker_was_killed_is_not_remembered_for_ever():
    # Given a cancelled attempt whose worker is killed at the end of the grace
    running = assignment(7)
    worker = Worker(running)
    active = {running.task.key: [running.delivery]}
    rows = Rows({7: ("running", 1)})
    cancels = Cancels(grace_s=0, look_every_s=0)
    cancels.look(rows, active, {}, [worker], None)
    cancels.look(rows, active, {}, [worker], None)
    assert worker.signals[-1] == signal.SIGKILL and cancels.killed == {running.task.key}
    # When its outcome came in just before the SIGKILL landed (no crash will name it)
    worker.inflight.clear()
    del active[running.task.key]
    # Then the next look forgets it
    cancels.look(rows, active, {}, [worker], None)
    assert cancels.killed == set() and cancels.told == {}


def test_the_subscriber_forgets_the_started_mark_of_an_attempt_acked_away_unrun(tmp_path):
    from enstratus_workers.config import load_settings
    from enstratus_workers.daemons.subscriber.daemon import Subscriber
    from enstratus_workers.layout import Layout
    from tests import servicehome as sh

    layout = Layout(sh.make_home(tmp_path))
    sub = Subscriber(load_settings(layout), layout, "vm")
    # Given an attempt marked started, then given back by its worker, waiting again, and cancelled
    waiting = assignment(5)
    sub.pending["default"].append(waiting)
    sub.active[waiting.task.key] = [waiting.delivery]
    sub._marked.add(waiting.task.key)
    sub.dbs = SimpleNamespace(jobs=Rows({5: ("cancelled", 0)}))
    sub.pool = SimpleNamespace(handles=[])
    sub.intake = SimpleNamespace(ack=lambda deliveries: None)
    # When the subscriber looks for cancels
    sub._look_for_cancels()
    # Then it is acked away unrun, and nothing of it is kept
    assert not sub.pending["default"] and sub.active == {} and sub._marked == set()
