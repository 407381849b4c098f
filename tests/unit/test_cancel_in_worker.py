"""A cancel and a deferral inside the worker process: the executor's pipeline, the worker's inbox.

No daemon here: the executor is called as the worker calls it, and the inbox is given a real
``multiprocessing`` connection, as the worker's socket is.
"""

from __future__ import annotations

import json
import os
import signal
from multiprocessing import Pipe

import pytest

from enstratus_workers.actions import Registry, action
from enstratus_workers.actions.executor import execute
from enstratus_workers.daemons.subscriber import worker_socket
from enstratus_workers.daemons.worker_inbox import Inbox
from enstratus_workers.errors import Deferred
from enstratus_workers.jobs.values import Outcome, Task


def task(action_name, attempt=1, compensate=False):
    return Task(7, action_name, {"n": 1}, attempt, 3, "default", "sub@h:1:aa", compensate)


def registry_with(**actions):
    reg = Registry()
    for name, fn in actions.items():
        reg.register(name, fn)
    return reg


def test_a_cooperative_action_stops_and_its_compensation_is_the_result():
    calls = []

    def undo(arguments, context):
        calls.append(("undo", context.cancelled()))
        return {"terminated": "srv-1"}

    @action(compensate=undo)
    def looping(arguments, context):
        turns = 0
        while not context.cancelled():
            turns += 1
        calls.append(("stopped", turns))
        return {"turns": turns}

    # Given a cancel that lands on the action's 1,000th look
    looks = iter(range(10**6))
    outcome = execute(registry_with(looping=looping), task("looping"), "w@h.1",
                      cancelled=lambda: next(looks) >= 1000)
    # Then the action stopped, the compensation ran after it, and the job ends cancelled with it
    assert calls == [("stopped", 999), ("undo", True)]
    assert (outcome.status, json.loads(outcome.result), outcome.error) == ("cancelled", {"terminated": "srv-1"}, None)
    assert Outcome.from_frame(outcome.to_frame()) == outcome


def test_a_compensation_that_raises_still_ends_the_job_cancelled_with_its_error():
    def undo(arguments, context):
        raise RuntimeError("cannot undo")

    @action(compensate=undo)
    def stops(arguments, context):
        context.stop_if_cancelled()   # raises errors.Cancelled: the action's way out

    looks = iter(range(10))   # not cancelled when it starts, cancelled from its first look on
    outcome = execute(registry_with(stops=stops), task("stops"), "w@h.1", cancelled=lambda: next(looks) > 0)
    assert outcome.status == "cancelled" and outcome.result is None
    assert outcome.error == "compensation failed: RuntimeError: cannot undo"


def test_a_task_cancelled_before_it_started_runs_nothing_and_a_compensation_task_only_compensates():
    ran = []

    def undo(arguments, context):
        ran.append("undo")
        return "cleaned"

    @action(compensate=undo)
    def act(arguments, context):
        ran.append("act")

    reg = registry_with(act=act)
    # Given a task whose cancel arrived before its worker started it / Then neither runs
    assert execute(reg, task("act"), "w@h.1", cancelled=lambda: True).status == "cancelled"
    assert ran == []
    # Given the action stopped elsewhere (its worker killed) / Then only the compensation runs
    outcome = execute(reg, task("act", compensate=True), "w@h.2")
    assert ran == ["undo"] and (outcome.status, outcome.result) == ("cancelled", '"cleaned"')
    # and an action without a compensation ends cancelled with nothing to show
    assert execute(registry_with(plain=lambda a, c: 1), task("plain", compensate=True), "w").result is None


def test_a_deferred_attempt_is_not_counted_and_says_why():
    def throttled(arguments, context):
        raise Deferred(2.5, "429 from the provider")

    outcome = execute(registry_with(throttled=throttled), task("throttled", attempt=2), "w@h.1")
    assert (outcome.status, outcome.attempt, outcome.attempts) == ("pending", 2, 1)
    assert outcome.not_before_ms - outcome.end_ms == 2500 and outcome.deferred
    assert outcome.error == "deferred 2.5s: 429 from the provider"
    assert Outcome.from_frame(outcome.to_frame()) == outcome


@pytest.mark.parametrize("delay", [-1, "soon", float("inf"), True])
def test_a_deferral_with_a_bad_delay_is_refused_where_it_is_raised(delay):
    with pytest.raises(ValueError, match="delay_s must be a number of seconds"):
        Deferred(delay, "x")


def test_the_inbox_notes_cancels_only_once_signalled_and_keeps_other_frames_in_order():
    subscriber, worker = Pipe()
    inbox = Inbox(worker)
    running, nxt = (7, 1), (8, 1)
    # Given a task frame and a cancel of the running attempt waiting in the socket, not signalled
    subscriber.send_bytes(worker_socket.pack({"t": "run", "a": []}))
    subscriber.send_bytes(worker_socket.pack({"t": "cancel", "job": 7, "attempt": 1}))
    # Then the action's look costs nothing and sees nothing
    assert not inbox.cancelled(running)
    # When the SIGUSR1 comes (its handler only sets the flag)
    previous = signal.signal(signal.SIGUSR1, inbox.on_signal)
    try:
        os.kill(os.getpid(), signal.SIGUSR1)
        assert inbox.signalled
    finally:
        signal.signal(signal.SIGUSR1, previous)
    # Then the running attempt is cancelled, the next one is not, and the run frame waits
    assert inbox.cancelled(running) and not inbox.cancelled(nxt)
    assert inbox.next(0)["t"] == "run" and inbox.next(0) is None
    # When a late signal comes after the attempt ended, for the cancel of that same attempt
    inbox.done(running)
    subscriber.send_bytes(worker_socket.pack({"t": "cancel", "job": 7, "attempt": 1}))
    inbox.on_signal(signal.SIGUSR1, None)
    # Then the worker's next job is not cancelled by it
    assert not inbox.cancelled(nxt)
