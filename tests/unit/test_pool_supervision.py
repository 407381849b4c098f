"""The worker pool's supervision and dispatch, without processes: ``subprocess.Popen`` is a fake
whose exit the test decides, the clock is the test's, and each worker's socket is one end of a
real ``multiprocessing`` pipe whose other end the test speaks the worker protocol on."""

from __future__ import annotations

import os
import signal
from collections import deque
from multiprocessing import Pipe
from types import SimpleNamespace

import pytest

from enstratus_workers.config.settings import SubscriberSettings, WorkerSettings, WorkerType
from enstratus_workers.daemons.subscriber import pool as pool_mod
from enstratus_workers.daemons.subscriber import worker_socket
from enstratus_workers.daemons.subscriber.pool import (
    RESPAWN_BACKOFF_MAX,
    RESTART_CAP,
    WORKER_INFLIGHT,
    WORKER_INFLIGHT_TINY,
    Assignment,
    WorkerPool,
)
from enstratus_workers.jobs.values import Outcome, Task
from enstratus_workers.layout import Layout
from enstratus_workers.mq.base import Delivery

pytestmark = pytest.mark.timeout(30)


class Clock:
    """Stands in for the ``time`` module inside pool.py: wall and monotonic move together."""

    def __init__(self):
        self.now = 1_700_000_000.0
        self.stepped = 0.0    # how far the wall clock was stepped (NTP, a resumed VM); monotonic was not

    def time(self) -> float:
        return self.now + self.stepped

    def step_wall(self, seconds: float) -> None:
        self.stepped += seconds

    def monotonic(self) -> float:
        return self.now - 1_600_000_000.0

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeProc:
    """A worker process that runs until the test ends it."""

    pids = iter(range(50_000, 60_000))

    def __init__(self, cmd, **_kw):
        self.cmd, self.pid, self.returncode = cmd, next(self.pids), None
        self.signals: list[int] = []

    def poll(self):
        return self.returncode

    def send_signal(self, signum: int) -> None:
        self.signals.append(signum)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def exit(self, code: int) -> None:
        self.returncode = code


class Rig:
    """A pool with fake processes, and the test's ends of the workers' sockets."""

    def __init__(self, tmp_path, monkeypatch, types=(WorkerType("default", ("default",), 2, 2),),
                 time_limit: float = 300.0, time_limits=None):
        self.clock = Clock()
        self.spawned: list[FakeProc] = []
        monkeypatch.setattr(pool_mod, "time", self.clock)
        monkeypatch.setattr(pool_mod, "now_ms", lambda: int(self.clock.time() * 1000))
        monkeypatch.setattr(pool_mod.subprocess, "Popen", self._popen)
        layout = Layout(tmp_path / "home")
        layout.ensure_dirs()
        worker = WorkerSettings(types=tuple(types), time_limit=time_limit)
        settings = SimpleNamespace(worker=worker, subscriber=SubscriberSettings.of(worker))
        self.wake_r, wake_w = os.pipe()
        self.pool = WorkerPool(settings, layout, "sub", wake_w, python="python", time_limits=time_limits)
        self.worker_ends: dict[str, object] = {}
        self.jobs = iter(range(1, 10_000))

    def _popen(self, cmd, **kw):
        proc = FakeProc(cmd, **kw)
        self.spawned.append(proc)
        return proc

    def handle(self, name: str):
        return next(h for h in self.pool.handles if h.name == name)

    def connect(self, name: str):
        """The worker process ``name`` says hello over its socket."""
        h = self.handle(name)
        ours, theirs = Pipe()
        self.pool._arrivals.append(({"t": "hello", "name": name, "type": h.worker_type, "pid": h.pid}, ours))
        self.pool.adopt_arrivals()
        self.worker_ends[name] = theirs
        return theirs

    def work(self, n: int, action: str = "demo.echo") -> deque:
        return deque(Assignment(Delivery("default", b"{}", str(j), False, j),
                                Task(j, action, {}, 1, 3, "default", "sub@h:1:ab"), "default")
                     for j in (next(self.jobs) for _ in range(n)))

    def received(self, name: str) -> list[int]:
        """Job ids the worker ``name`` was sent since the last look."""
        end, got = self.worker_ends[name], []
        while end.poll():
            frame = worker_socket.unpack(end.recv_bytes())
            got += [t["job_id"] for t in frame["a"]] if frame["t"] == "run" else [frame["t"]]
        return got

    def answer(self, name: str, *job_ids: int, took_ms: int = 5) -> None:
        """The worker reports ``job_ids`` done, each having taken ``took_ms``."""
        start = int(self.clock.time() * 1000)
        return self.say(name, {"t": "done", "r": [
            Outcome(j, 1, "succeeded", "w", start, start + took_ms, "null", None, "sub@h:1:ab").to_frame()
            for j in job_ids]})

    def say(self, name: str, frame: dict):
        self.worker_ends[name].send_bytes(worker_socket.pack(frame))
        return self.pool.read(self.pool.connections())


@pytest.fixture
def rig(tmp_path, monkeypatch):
    return Rig(tmp_path, monkeypatch)


def ids(assignments) -> list[int]:
    return [a.task.job_id for a in assignments]


def test_the_minimum_of_each_type_is_spawned_and_connected_workers_are_idle(rig):
    # When the pool first scales
    rig.pool.scale({}, force=True)
    # Then it started the minimum (two) of the default type, each told its name and type
    assert [p.cmd[p.cmd.index("--name") + 1] for p in rig.spawned] == ["default.1", "default.2"]
    assert all(p.cmd[p.cmd.index("--type") + 1] == "default" for p in rig.spawned)
    assert [h.state for h in rig.pool.handles] == ["starting", "starting"]
    # When one says hello, it is idle and the other still starting
    rig.connect("default.1")
    assert [h.state for h in rig.pool.handles] == ["idle", "starting"]


def test_before_any_duration_is_known_a_worker_holds_two_and_the_rest_waits(rig):
    # Given two connected workers of a type with no measured action yet
    rig.pool.scale({}, force=True)
    rig.connect("default.1"), rig.connect("default.2")
    pending = rig.work(5)
    # When five assignments are dispatched
    rig.pool.dispatch({"default": pending})
    # Then each worker got two (one running, one ready) and one is still waiting
    assert rig.received("default.1") == [1, 2] and rig.received("default.2") == [3, 4]
    assert ids(pending) == [5]


@pytest.mark.parametrize("took_ms, cap", [(0, WORKER_INFLIGHT_TINY), (5, WORKER_INFLIGHT), (50, 4), (500, 2)])
def test_a_worker_holds_many_short_actions_but_few_long_ones(rig, took_ms, cap):
    # Given one connected worker whose actions have taken ``took_ms`` each
    rig.pool.scale({}, force=True)
    rig.connect("default.1")
    first = rig.work(1)
    rig.pool.dispatch({"default": first})
    for _ in range(20):  # the mean follows recent durations
        rig.answer("default.1", *rig.received("default.1"), took_ms=took_ms)
        rig.pool.dispatch({"default": rig.work(1)})
    rig.answer("default.1", *rig.received("default.1"), took_ms=took_ms)
    # When a burst of 100 arrives
    pending = rig.work(100)
    rig.pool.dispatch({"default": pending})
    # Then it is sent as many as its cap allows, and the rest wait for the other worker
    assert len(rig.received("default.1")) == cap
    assert len(pending) == 100 - cap


def test_a_burst_is_spread_over_every_free_worker(rig):
    # Given two connected workers running short actions
    rig.pool.scale({}, force=True)
    rig.connect("default.1"), rig.connect("default.2")
    rig.pool.dispatch({"default": rig.work(1)})
    rig.answer("default.1", *rig.received("default.1"), took_ms=1)
    # When six arrive at once
    rig.pool.dispatch({"default": rig.work(6)})
    # Then each worker got three, not one worker all six
    assert len(rig.received("default.1")) == 3 and len(rig.received("default.2")) == 3


def test_a_worker_that_dies_charges_the_running_task_and_gives_back_the_rest(rig):
    # Given a worker holding three tasks, the oldest running
    rig.pool.scale({}, force=True)
    rig.connect("default.1")
    rig.pool.dispatch({"default": rig.work(1)})
    rig.answer("default.1", *rig.received("default.1"), took_ms=1)
    rig.pool.dispatch({"default": rig.work(3)})
    held = rig.received("default.1")
    assert held == [2, 3, 4]
    # When its process is killed from outside
    rig.clock.advance(10)
    rig.spawned[0].exit(-signal.SIGKILL)
    events = rig.pool.supervise()
    # Then the running task is charged with why, the two unstarted ones go back, nothing is finished
    assert [(a.task.job_id, reason) for a, (reason, _start) in events.crashed] == [
        (2, "worker process died (killed by SIGKILL)")]
    assert ids(events.returned) == [3, 4] and events.finished == []
    # and it is reincarnated at once (it had lived more than 5 s)
    h = rig.handle("default.1")
    assert h.reincarnations == 1 and h.proc is rig.spawned[-1] and len(rig.spawned) == 3
    assert h.state == "starting" and not h.inflight


def test_a_worker_dying_at_start_is_restarted_with_doubling_backoff(rig):
    # Given a worker that dies right after every start
    rig.pool.scale({}, force=True)
    delays = []
    for _ in range(RESTART_CAP - 1):
        h = rig.handle("default.1")
        h.proc.exit(1)
        rig.pool.supervise()
        assert h.proc is None  # not restarted in the same round
        delays.append(round(h.next_spawn_at - rig.clock.monotonic(), 3))
        rig.clock.advance(delays[-1])
        rig.pool.supervise()
        assert h.proc is rig.spawned[-1]
    # Then the waits between restarts double
    assert delays == [1.0, 2.0, 4.0, 8.0]
    assert rig.handle("default.1").reincarnations == RESTART_CAP - 1


def test_the_backoff_is_capped(rig):
    # Given a worker that died quickly many times, spread out so the restart cap is not reached
    rig.pool.scale({}, force=True)
    h = rig.handle("default.1")
    h.fast_deaths = 10
    # When it dies at start once more
    h.proc.exit(1)
    rig.pool.supervise()
    # Then it waits the maximum, not 0.5 * 2**11 s
    assert h.next_spawn_at - rig.clock.monotonic() == RESPAWN_BACKOFF_MAX


def test_a_worker_dying_too_often_is_disabled_until_the_types_are_set_again(rig):
    # Given a worker that dies RESTART_CAP times within the window
    rig.pool.scale({}, force=True)
    h = rig.handle("default.1")
    for _ in range(RESTART_CAP):
        h.proc.exit(1)
        rig.pool.supervise()
        rig.clock.advance(max(0.0, h.next_spawn_at - rig.clock.monotonic()))  # the backoff: 1+2+4+8 s
        rig.pool.supervise()
    # Then it is disabled and stays down, and no other process is started in its place
    assert h.state == "disabled" and h.proc is None
    started = len(rig.spawned)
    rig.clock.advance(3600)
    rig.pool.supervise()
    rig.pool.scale({}, force=True)
    rig.pool.supervise()
    assert h.proc is None and len(rig.spawned) == started
    assert [x.name for x in rig.pool.handles] == ["default.1", "default.2"]
    # When the desired types are set again (a reload or an admin change)
    rig.pool.set_types([WorkerType("default", ("default",), 2, 2)])
    rig.pool.supervise()
    # Then it is started again
    assert h.state == "starting" and h.proc is rig.spawned[-1]


def test_deaths_outside_the_window_do_not_add_up_to_the_cap(rig):
    # Given a worker that dies every two minutes
    rig.pool.scale({}, force=True)
    h = rig.handle("default.1")
    for _ in range(RESTART_CAP * 2):
        rig.clock.advance(120)
        h.proc.exit(1)
        rig.pool.supervise()
    # Then it is never disabled, and each death was a reincarnation restarted at once
    assert not h.disabled and h.reincarnations == RESTART_CAP * 2 and h.proc is rig.spawned[-1]


def test_a_task_past_its_time_limit_gets_its_worker_killed_and_is_charged_with_the_limit(tmp_path, monkeypatch):
    # Given a 10 s time limit, 2 s for one action, and a worker running that action
    rig = Rig(tmp_path, monkeypatch, time_limit=10.0, time_limits={"slow.one": 2.0})
    rig.pool.scale({}, force=True)
    rig.connect("default.1")
    rig.pool.dispatch({"default": rig.work(1, action="slow.one") + rig.work(1)})
    proc = rig.spawned[0]
    # When 1.5 s pass, nothing happens
    rig.clock.advance(1.5)
    rig.pool.supervise()
    assert proc.signals == []
    # When more than 2 s have passed, the worker is killed, once
    rig.clock.advance(1.0)
    rig.pool.supervise()
    rig.pool.supervise()
    assert proc.signals == [signal.SIGKILL]
    # and once it is dead the task is charged with the limit and the other one goes back
    proc.exit(-signal.SIGKILL)
    events = rig.pool.supervise()
    assert [(a.task.job_id, reason) for a, (reason, _) in events.crashed] == [
        (1, "time limit of 2s exceeded")]
    assert ids(events.returned) == [2]


def test_the_time_limit_counts_from_when_the_task_reached_the_head(tmp_path, monkeypatch):
    # Given a 10 s limit and a worker that ran its first task for 8 s
    rig = Rig(tmp_path, monkeypatch, time_limit=10.0)
    rig.pool.scale({}, force=True)
    rig.connect("default.1")
    rig.pool.dispatch({"default": rig.work(2)})
    rig.clock.advance(8)
    rig.answer("default.1", 1)
    # When the second task has run 8 s too (16 s since dispatch)
    rig.clock.advance(8)
    rig.pool.supervise()
    # Then the worker is not killed: the second task has not used up its own limit
    assert rig.spawned[0].signals == []


def test_a_recycled_worker_gives_back_unstarted_work_and_is_replaced_without_a_reincarnation(rig):
    # Given a worker holding two tasks
    rig.pool.scale({}, force=True)
    rig.connect("default.1")
    rig.pool.dispatch({"default": rig.work(2)})
    # When it finishes the first and retires (worker.max_tasks_per_child reached)
    finished = rig.answer("default.1", 1).finished
    events = rig.say("default.1", {"t": "bye", "reason": "ran 1 actions (worker.max_tasks_per_child)"})
    # Then the first is finished, the second comes back unstarted, and it takes no more work
    assert ids(a for a, _ in finished) == [1] and ids(events.returned) == [2]
    assert rig.handle("default.1").state == "stopping"
    rig.pool.dispatch({"default": rig.work(1)})
    assert rig.received("default.1") == [1, 2]  # only what it got before
    # When its process exits, it is replaced at once and that is no reincarnation
    rig.spawned[0].exit(0)
    events = rig.pool.supervise()
    h = rig.handle("default.1")
    assert events.crashed == [] and h.reincarnations == 0 and h.proc is rig.spawned[-1]


def test_an_external_worker_that_disconnects_is_charged_and_forgotten(rig):
    # Given a worker started by hand (the pool did not spawn it) holding two tasks
    ours, theirs = Pipe()
    rig.pool._arrivals.append(({"t": "hello", "name": "manual.1", "type": "default", "pid": 4242}, ours))
    rig.pool.adopt_arrivals()
    h = rig.pool.handles[-1]
    assert h.proc is None and h.pid == 4242
    rig.pool.dispatch({"default": rig.work(2)})
    # When its socket closes
    theirs.close()
    events = rig.pool.read(rig.pool.connections())
    # Then its running task is charged, the other returned, and it is no longer in the pool
    assert [(a.task.job_id, r) for a, (r, _) in events.crashed] == [(1, "worker process disconnected")]
    assert ids(events.returned) == [2]
    assert h not in rig.pool.handles


def test_a_worker_scaled_down_is_asked_to_stop_and_not_restarted(tmp_path, monkeypatch):
    # Given a type of one to three workers: one started, idle
    rig = Rig(tmp_path, monkeypatch, types=[WorkerType("default", ("default",), 1, 3)])
    rig.pool.scale({}, force=True)
    rig.connect("default.1")
    # When work waits while that worker is idle, the pool does not grow
    rig.clock.advance(2)
    rig.pool.scale({"default": 1})
    assert len(rig.spawned) == 1
    # When it is busy and work still waits, a second worker is started
    rig.pool.dispatch({"default": rig.work(2)})
    rig.clock.advance(2)
    rig.pool.scale({"default": 5})
    assert len(rig.spawned) == 2
    rig.connect("default.2")
    rig.answer("default.1", 1, 2)
    # When both have been idle past the retire time
    rig.clock.advance(60)
    rig.pool.scale({})
    # Then one (above the minimum) is told to stop; when it exits it is removed, not restarted
    stopping = [h for h in rig.pool.handles if h.retiring]
    assert len(stopping) == 1 and rig.received(stopping[0].name)[-1] == "stop"
    next(p for p in rig.spawned if p.pid == stopping[0].pid).exit(0)
    rig.pool.supervise()
    assert len(rig.pool.handles) == 1 and not rig.pool.handles[0].retiring
    assert len(rig.spawned) == 2
    # and at the minimum nothing more is retired
    rig.clock.advance(60)
    rig.pool.scale({})
    assert not rig.pool.handles[0].retiring


def test_after_ask_to_stop_workers_are_told_to_stop_and_the_dead_stay_dead(rig):
    # Given two connected workers
    rig.pool.scale({}, force=True)
    rig.connect("default.1"), rig.connect("default.2")
    # When the pool is asked to stop
    rig.pool.ask_to_stop()
    # Then both are told to stop
    assert rig.received("default.1") == ["stop"] and rig.received("default.2") == ["stop"]
    # and a worker that exits is not restarted, nor counted as a reincarnation
    rig.spawned[0].exit(0)
    rig.pool.supervise()
    rig.clock.advance(60)
    rig.pool.supervise()
    assert len(rig.spawned) == 2 and rig.handle("default.1").reincarnations == 0


def test_the_worker_is_sent_each_task_as_its_frame_and_its_outcome_arrives_unchanged(rig):
    # Given a connected worker handed one task
    rig.pool.scale({}, force=True)
    end = rig.connect("default.1")
    (a,) = work = rig.work(1)
    rig.pool.dispatch({"default": work})
    # Then it received the Task's own frame
    frame = worker_socket.unpack(end.recv_bytes())
    assert [Task.from_frame(t) for t in frame["a"]] == [a.task]
    # When it answers with the attempt's outcome, Then the pool hands on that very value
    outcome = Outcome(a.task.job_id, 1, "pending", "w", 1, 2, None, "boom", "sub@h:1:ab", True)
    events = rig.say("default.1", {"t": "done", "r": [outcome.to_frame()]})
    assert events.finished == [(a, outcome)]


@pytest.mark.parametrize("bad", [
    {"t": "done"},                                                         # no outcomes
    {"t": "done", "r": [{"job_id": 1, "start_ms": 1, "end_ms": 2}]},        # not an outcome
    {"t": "done", "r": [Outcome(1, 1, "succeeded", "w", 1, 2, "null", None).to_frame()] * 3},  # one too many
])
def test_a_worker_sending_a_frame_that_is_not_what_it_says_is_dropped_not_the_subscriber(rig, bad):
    # Given a worker handed two tasks
    rig.pool.scale({}, force=True)
    rig.connect("default.1")
    rig.pool.dispatch({"default": rig.work(2)})
    # When it sends a malformed done frame, Then its connection is dropped and nothing raises
    rig.say("default.1", bad)
    assert rig.handle("default.1").conn is None


def test_a_worker_the_system_will_not_start_is_retried_with_the_backoff_then_disabled(rig, monkeypatch):
    # Given a system that cannot fork (EAGAIN: out of processes or memory)
    import errno
    real_popen, refusals = rig._popen, []

    def refuse(cmd, **kw):
        if cmd[cmd.index("--name") + 1] == "default.1":
            refusals.append(rig.clock.time())
        raise OSError(errno.EAGAIN, os.strerror(errno.EAGAIN))

    monkeypatch.setattr(pool_mod.subprocess, "Popen", refuse)
    # When the pool starts its minimum, the subscriber is not taken down
    rig.pool.scale({}, force=True)
    h = rig.handle("default.1")
    assert h.state == "stopped" and h.proc is None and h.next_spawn_at > rig.clock.monotonic()
    # And each retry waits the backoff, until the restart cap disables it
    for _ in range(RESTART_CAP * 2):
        rig.clock.advance(max(0.0, h.next_spawn_at - rig.clock.monotonic()))
        rig.pool.supervise()
        if h.disabled:
            break
    assert h.disabled and len(refusals) == RESTART_CAP
    assert all(b - a >= 1.0 for a, b in zip(refusals, refusals[1:]))
    # When the system can fork again and the types are set again, it starts
    monkeypatch.setattr(pool_mod.subprocess, "Popen", real_popen)
    rig.pool.set_types([WorkerType("default", ("default",), 2, 2)])
    rig.pool.supervise()
    assert h.state == "starting" and h.proc in rig.spawned


def test_a_worker_that_connects_and_dies_while_the_pool_stops_does_not_break_the_stop(rig):
    # Given a pool told to stop, and a worker whose hello arrives as it dies
    rig.pool.scale({}, force=True)
    rig.pool.ask_to_stop()
    ours, theirs = Pipe()
    h = rig.handle("default.1")
    rig.pool._arrivals.append(({"t": "hello", "name": "default.1", "type": "default", "pid": h.pid}, ours))
    theirs.close()
    # When the pool adopts it, telling it to stop fails quietly
    rig.pool.adopt_arrivals()
    # Then the dead connection is read as a disconnect, and the stop goes on
    rig.pool.read(rig.pool.connections())
    assert h.conn is None


def test_a_wall_clock_step_neither_kills_a_working_worker_nor_holds_a_respawn_back(rig):
    # Given a worker running a task (time limit 300 s) and another that just died
    rig.pool.scale({}, force=True)
    rig.connect("default.1")
    rig.pool.dispatch({"default": rig.work(1)})
    working, dead = rig.handle("default.1"), rig.handle("default.2")
    dead.proc.exit(1)
    rig.pool.supervise()
    assert dead.proc is None and dead.next_spawn_at
    # When the wall clock is stepped an hour forward, then two hours back, and 2 s pass
    rig.clock.step_wall(3600)
    rig.pool.supervise()
    rig.clock.step_wall(-7200)
    rig.clock.advance(2)
    rig.pool.supervise()
    # Then the working one was not killed for a time limit, and the dead one was started again
    assert rig.spawned[0].signals == [] and working.kill_reason is None
    assert dead.state == "starting" and dead.proc is rig.spawned[-1]
    # And the time limit still holds on the monotonic clock
    rig.clock.advance(301)
    rig.pool.supervise()
    assert rig.spawned[0].signals == [signal.SIGKILL]
