"""The subscriber: takes actions off the queues, has worker processes run them, records, then acks.

Threads: the intake thread owns the queue connection (``intake.py``); the accept thread takes
worker connections (``pool.py``); this main thread does everything else in one loop, woken
by whichever of them has news: decode deliveries, check them against their job rows, dispatch
to workers, collect outcomes, write them in batches (``recorder.py``), ack what is written,
supervise the workers.

The job row is the truth; a message only points at it. Each batch of deliveries is checked
against the rows of its jobs in one query (``JobStore.delivery_rows``, on a connection the loop
holds: ``db/held_connection.py``), and a delivery runs only if its attempt is open or held by this
process (db/jobs.py's ownership rule), as the ``jobs.values.Task`` the row makes of it (its
action, arguments and max_attempts, this process as the owner). The worker answers with the
attempt's ``Outcome``, which goes to the recorder as it came; when the worker died under it, the
Outcome is built here from the same Task.

A delivery of a job without a row is a stranger (dead-lettered with the reason); one of a
finished job or of an attempt the row is not at is a stale duplicate (acked away; one of an
attempt finished elsewhere first has its analytics event made sure of: ``lost_events.py``).
Both are counted. One of a paused queue or account goes back to the outbox unrun (``pauses.py``). One
whose attempt another subscriber holds waits, unacked, until that owner records
it (then it is stale) or its heartbeat expires (then this process takes the attempt over). If
the rows cannot be read, nothing runs blind: the deliveries wait unacked and the check is
retried with backoff.

Cancels of the jobs held here are looked for in their rows about every second and acted on
(``cancels.py``): a waiting one is acked away or compensated, a running one's worker is told,
and killed if its action does not stop within ``action.cancel_grace``.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import secrets
import sys
import threading
import time
from collections import defaultdict, deque
from dataclasses import replace
from multiprocessing.connection import wait

from enstratus_workers.backoff import Backoff
from enstratus_workers.clock import now_ms
from enstratus_workers.daemons.subscriber.cancels import Cancels
from enstratus_workers.db.held_connection import HeldConnection
from enstratus_workers.daemons.subscriber.intake import Intake
from enstratus_workers.daemons.subscriber.lost_events import LostEvents, may_lack_event
from enstratus_workers.daemons.subscriber.pauses import PauseGate
from enstratus_workers.daemons.subscriber.pool import Assignment, WorkerPool
from enstratus_workers.daemons.subscriber.recorder import Recorder
from enstratus_workers.db import Event, Outcome, Started, open_databases
from enstratus_workers.db.heartbeats import live_owners
from enstratus_workers.db.schema import EVENT_ERROR_MAX
from enstratus_workers.fleet.joining import join_fleet
from enstratus_workers.fleet.placement import runs_on
from enstratus_workers.jobs import pathtrace, wakeup
from enstratus_workers.db.pauses import PauseStore
from enstratus_workers.jobs.lifecycle import event_outcome
from enstratus_workers.jobs.wakeup import Bell
from enstratus_workers.jobs.messages import MessageDecodeError, decode
from enstratus_workers.jobs.values import Task
from enstratus_workers.runtime import runner
from enstratus_workers.runtime.service import Service

log = logging.getLogger(__name__)

HEARTBEAT_EVERY_S = 2.0
RECONCILE_EVERY_S = 5.0
RELOAD_RETRY_S = 1.0         # a reload whose read of the desired types failed is tried again after this
CHECK_RETRY_MAX_S = 10.0    # longest wait between tries to read the job rows of deliveries
SWITCH_INTERVAL_S = 0.0005   # the GIL's hand-over interval in the subscriber (run())
CHECK_RETRY = Backoff(first=1.0, cap=CHECK_RETRY_MAX_S)   # the fleet's subscribers retry apart


class Subscriber(Service):
    daemon = "subscriber"

    def __init__(self, settings, layout, name: str):
        self.settings, self.layout, self.name = settings, layout, name
        self._stop = threading.Event()
        self._cold = threading.Event()
        self._reload = threading.Event()
        self._hup = threading.Event()        # SIGHUP not yet passed on to the workers
        self._next_reconcile = 0.0
        self._reload_owed = False            # a reload whose read of the desired types failed
        self._last_beat = 0.0
        self.pending: dict[str, deque] = defaultdict(deque)   # worker type -> assignments waiting
        self.active: dict[tuple, list] = {}   # (job id, attempt) -> its deliveries held here
        self._unchecked: list = []            # (delivery, message) not yet checked against its row
        self._check_at = 0.0                  # no check before this (the rows could not be read)
        self._check_failures = 0
        self._held: list = []                 # (delivery, message) of attempts another owner holds
        self._held_until = 0.0
        self._marked: set = set()             # (job id, attempt) handed to the recorder as started
        self._rows_conn: HeldConnection | None = None   # the delivery check's own (made at the first)
        self.cancels = Cancels(settings.subscriber.cancel_grace)
        self._bell = None                     # rung by a cancel made on this host (run() binds it)
        self._wake_out = None                 # rings other hosts' publishers through the broker
        self.host = settings.worker.host_name
        self.owner = _owner_token(name, self.host)
        self.started_ms = now_ms()
        self.stats = {"received": 0, "succeeded": 0, "failed": 0, "pending": 0, "dead": 0, "cancelled": 0,
                      "dead_lettered": 0, "duplicates": 0, "stale": 0, "strangers": 0, "taken_over": 0}

    def request_reload(self) -> None:
        self._reload.set()
        self._hup.set()

    def request_stop(self, cold: bool = False) -> None:
        if cold:
            self._cold.set()
        self._stop.set()

    # -- run -----------------------------------------------------------------------------------
    def run(self, ready) -> None:
        s = self.settings
        self.layout.ensure_dirs()
        pathtrace.from_environment("subscriber")
        # Its threads mostly wait on sockets (broker, database, workers); with the default 5 ms
        # switch interval a thread whose answer came waits up to that long for the GIL behind
        # a busy one, at every round trip (a recorder write is six): hand it over sooner.
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        self.owner = _owner_token(self.name, self.host)   # this process's own (the daemon may have forked)
        self.dbs = open_databases(s.worker, self.layout)
        try:
            join_fleet(s, self.dbs)
        except BaseException:
            self.dbs.close()
            raise
        self._bell = _cancel_bell(self.layout, self.name)
        # the room its outcomes make in the queues' windows wakes the publishers of other hosts too
        self._wake_out = _ring_other_hosts(s, self.dbs, self.name)
        # start with the types placed on this host: no process or consumer of another host's type
        # is started for the moment before the first reconcile
        here = self._types_here()
        if here is None:   # the database cannot say yet: the file's, until the first reconcile
            here = [t for t in s.worker.types if runs_on(t.placement, self.host, s.worker.host_tags)]
        s = self.settings = replace(s, worker=replace(s.worker, types=tuple(here)))
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        self._wake_r = wake_r
        self.pool = WorkerPool(s, self.layout, self.name, wake_w, time_limits=_action_time_limits())
        self.intake = Intake(s.mq, self.layout, s.subscriber.all_queues, s.mq.prefetch, wake_w,
                             client_name=f"subscriber@{self.name}")
        self.lost_events = LostEvents(self.dbs)
        self.recorder = Recorder(self.dbs, s.subscriber.record_batch, s.subscriber.record_interval,
                                 on_recorded=self.intake.ack, on_dead=self.intake.dead_letter)
        self.pauses = self.pause_gate()
        try:
            self.recorder.start()
            self.pool.start()
            self.intake.start()
            ready()
            self._beat(force=True)
            self._loop()
            self._shutdown()
        finally:
            self.pool.terminate()
            self.recorder.stop(timeout=0 if self._stop.is_set() else 5)   # _shutdown waited already
            self.intake.stop()
            self._remove_heartbeat()
            if self._rows_conn is not None:
                self._rows_conn.close()
            if self._wake_out is not None:
                self._wake_out.close()
            self.dbs.close()
            if self._bell is not None:
                self._bell.close()
            os.close(wake_r)
            os.close(wake_w)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._round(timeout=0.5)

    def _round(self, timeout: float) -> None:
        bell = [self._bell] if self._bell is not None else []
        ready = wait([self._wake_r, *bell, *self.pool.connections()], timeout=timeout)
        cancel_rung = bool(bell) and bell[0] in ready
        if cancel_rung:
            bell[0].drain()
            self.cancels.look_now()
            ready = [r for r in ready if r is not bell[0]]
        if self._wake_r in ready:
            try:
                os.read(self._wake_r, 65536)
            except BlockingIOError:
                pass
        self.pool.adopt_arrivals()
        if self._hup.is_set():   # also while stopping: workers finishing up write logs too
            self._hup.clear()
            self.pool.pass_on_hup()
        self._take_deliveries()
        self._settle(self.pool.read([c for c in ready if c != self._wake_r]))
        if cancel_rung:   # a cancel made on this host: its job, if waiting here, never starts
            self._look_for_cancels()
        self._settle(self.pool.supervise())
        if not self.pool.stopping:
            # the work checked this round goes to the workers before the round's periodic
            # reads (cancels, desired types, pauses), so that none of them is on its path
            self.pool.scale({t: len(q) for t, q in self.pending.items()})
            self._dispatch()
        if not cancel_rung:
            self._look_for_cancels()
        if not self.pool.stopping:
            self._reconcile()
            self.pauses.tick(self.pending, self.active)
            self._dispatch()     # what those put back in line (a compensation, work of a new type)
        self._beat()

    def _look_for_cancels(self) -> None:
        seen = self.cancels.seen
        self.cancels.look(self.dbs.jobs, self.active, self.pending, self.pool.handles, self._ack_stale)
        if self.cancels.seen != seen and self._marked:
            # an attempt acked away unrun (cancelled while it waited) may have been marked
            # started before a worker gave it back: it is held here no more
            self._marked &= self.active.keys()

    def _dispatch(self) -> None:
        self.pool.dispatch(self.pending)
        self._mark_dispatched()

    def _reconcile(self) -> None:
        """Follow the desired worker types placed on this host (admin API, or worker.properties)
        every few seconds and on SIGHUP: the pool scales to them, the intake consumes their
        queues, and work waiting for a type that is gone (or placed elsewhere now) is given back
        to its queue."""
        now = time.monotonic()
        if not self._reload.is_set() and now < self._next_reconcile:
            return
        reload = self._reload.is_set() or self._reload_owed
        self._reload.clear()
        self._next_reconcile = now + RECONCILE_EVERY_S
        types = self._types_here()
        if types is None:
            # a SIGHUP's reload whose read failed is still owed (it is what gives disabled
            # workers their new chance): tried again soon, not at every round
            self._reload_owed = reload
            if reload:
                self._next_reconcile = now + RELOAD_RETRY_S
            return
        self._reload_owed = False
        if not reload and {t.name: t for t in types} == self.pool.types:
            return
        log.info("worker types: %s", ", ".join(f"{t.name}[{t.min}..{t.max}]<-{','.join(t.queues)}"
                                               for t in types) or "none")
        self.pool.set_types(types)
        queues = list(dict.fromkeys(q for t in types for q in t.queues))
        self.intake.set_queues(queues)
        for wtype in [w for w in self.pending if w not in self.pool.types]:
            self._give_back(self.pending.pop(wtype))

    def _types_here(self):
        """The enabled worker types placed on this host (``worker.<type>.placement``, the admin
        API's ``placement``), read fresh from the one source of desired state (seeded from
        ``worker.properties`` on a new database); None if it cannot be read now."""
        try:
            return list(self.dbs.desired.get(fresh=True).types_on(self.host, self.settings.worker.host_tags))
        except Exception as exc:
            log.warning("could not read the desired worker types (%s); keeping the current ones", exc)
            return None

    def _give_back(self, assignments) -> None:
        """Return unstarted work to its queue (with any duplicates of it held here)."""
        for a in list(assignments):
            key = a.task.key
            self._marked.discard(key)
            self.intake.nack(self.active.pop(key, [a.delivery]))
        assignments.clear()

    def _give_back_unchecked(self) -> None:
        """Return deliveries not yet checked, or waiting for another owner, to their queues."""
        waiting, self._unchecked, self._held = self._unchecked + self._held, [], []
        self.intake.nack([d for d, _ in waiting])

    def _type_for_queue(self, queue: str) -> str:
        for t in self.pool.types.values():
            if queue in t.queues:
                return t.name
        return next(iter(self.pool.types), "default")

    def _take_deliveries(self) -> None:
        batch = []
        while True:
            try:
                batch.extend(self.intake.deliveries.get_nowait())
            except queue.Empty:
                break
        for d in batch:
            self.stats["received"] += 1
            try:
                self._unchecked.append((d, decode(d.body)))
            except MessageDecodeError as exc:
                log.error("dead-lettering undecodable message %s from %s: %s", d.message_id, d.queue, exc)
                self.intake.dead_letter(d, str(exc))
                self.stats["dead_lettered"] += 1
        if batch and pathtrace.on():
            pathtrace.stamp("subscriber.taken", (m.job_id for _, m in self._unchecked))
        self._check_deliveries()

    def _check_deliveries(self) -> None:
        """Run, ack away, dead-letter or hold each waiting delivery, by its job's row (module
        docstring); one query for all of them, plus the heartbeats if another owner holds one."""
        now = time.monotonic()
        waiting = []
        if self._unchecked and now >= self._check_at:
            waiting, self._unchecked = self._unchecked, []
        if self._held and now >= self._held_until:
            waiting, self._held = waiting + self._held, []
        if not waiting:
            return
        try:
            if self._rows_conn is None:
                self._rows_conn = HeldConnection(self.dbs.provisioning)
            ids = [m.job_id for _, m in waiting]
            rows = self._rows_conn.run(lambda conn: self.dbs.jobs.delivery_rows(ids, conn))
            if any(r.verdict(m.attempt, self.owner) == "foreign"
                   for r, m in ((rows.get(m.job_id), m) for _, m in waiting) if r is not None):
                live = live_owners(self.dbs.heartbeats.all())
            else:
                live = None      # read only if a finished attempt needs it (lost_events)
        except Exception as exc:
            self._unchecked[:0] = waiting
            self._check_failures += 1
            delay = CHECK_RETRY.delay(self._check_failures)
            self._check_at = now + delay
            if self._check_failures == 1:
                log.warning("cannot read the job rows of %d deliveries (%s); holding them unacked "
                            "and checking again until the database answers", len(waiting), exc)
            return
        if self._check_failures:
            log.info("job rows readable again after %d failed checks", self._check_failures)
            self._check_failures, self._check_at = 0, 0.0
        stale, paused, doubtful = [], [], []
        for d, msg in waiting:
            row = rows.get(msg.job_id)
            if row is None:
                reason = f"stranger: no job {msg.job_id} in the provisioning database"
                log.error("dead-lettering message %s from %s: %s", d.message_id, d.queue, reason)
                self.intake.dead_letter(d, reason)
                self.stats["strangers"] += 1
                continue
            verdict = row.verdict(msg.attempt, self.owner)
            if verdict == "foreign":
                verdict = "hold" if row.owner in live or not self._take_over(d, msg, row) else "run"
            if verdict == "hold":
                self._held.append((d, msg))
            elif verdict == "stale":
                if may_lack_event(row, msg.attempt, self.owner):
                    doubtful.append((d, msg, row))
                else:
                    stale.append(d)
            elif self.pauses.holds(d.queue, row.account):
                paused.append((d, msg, row))
            else:
                self._accept(d, msg, row)
        for d, msg, row in self.pauses.settle(paused):   # resumed since the pauses were last read
            self._accept(d, msg, row)
        if doubtful:   # finished elsewhere: its event may have died with its recorder
            try:
                acked, held = self.lost_events.settle(
                    doubtful, lambda: live if live is not None else live_owners(self.dbs.heartbeats.all()))
            except Exception as exc:
                log.warning("could not look up the events of %d finished attempts (%s); holding their "
                            "deliveries", len(doubtful), exc)
                acked, held = [], [(d, msg) for d, msg, _ in doubtful]
            stale += acked
            self._held += held
        if stale:
            self.stats["stale"] += len(stale)
            self.intake.ack(stale)
        if self._held and self._held_until <= now:
            self._held_until = now + HEARTBEAT_EVERY_S

    def pause_gate(self) -> PauseGate:
        """The pauses as this process obeys them, over its databases and intake (``pauses.py``)."""
        return PauseGate(PauseStore(self.dbs.provisioning, known_queue=lambda _name: True).current,
                         self.dbs.jobs.give_back, self.intake.ack)

    def _take_over(self, d, msg, row) -> bool:
        """Take a running attempt whose owner's heartbeat expired; False if the row moved on."""
        mark = Started(msg.job_id, msg.attempt, f"{self._type_for_queue(d.queue)}@{self.host}",
                       now_ms(), self.owner)
        try:
            taken = self.dbs.jobs.take_over(msg.job_id, msg.attempt, row.owner, mark)
        except Exception as exc:
            log.warning("could not take over job %s (%s); checking it again later", msg.job_id, exc)
            return False
        if taken:
            log.warning("took over job %s attempt %s from %s, whose heartbeat expired",
                        msg.job_id, msg.attempt, row.owner)
            self.stats["taken_over"] += 1
        return taken

    def _accept(self, d, msg, row) -> None:
        """Queue a checked delivery for a worker as the task the row makes of it; a second
        delivery of an attempt held here settles with the first."""
        key = (msg.job_id, msg.attempt)
        if key in self.active:
            self.active[key].append(d)
            self.stats["duplicates"] += 1
            return
        self.active[key] = [d]
        pathtrace.stamp("subscriber.checked", (msg.job_id,))
        # a row whose cancel was requested is here only for its compensation (lifecycle.after_lost)
        task = Task(row.job_id, row.action, _arguments(row.arguments), msg.attempt,
                    row.max_attempts or self.settings.worker.max_attempts, d.queue, self.owner,
                    compensate=row.cancel_requested_ms is not None, account=row.account)
        a = Assignment(d, task, self._type_for_queue(d.queue))
        self.pending[a.worker_type].append(a)

    def _mark_dispatched(self) -> None:
        """Hand the recorder a running mark (with this process as the owner) for each attempt
        a worker has been given; work still waiting here is not marked, so giving it back
        leaves its row as it was."""
        for h in self.pool.handles:
            for a in h.inflight:
                key = a.task.key
                if key not in self._marked:
                    self._marked.add(key)
                    self.recorder.started(Started(key[0], key[1], self._display_for(a), a.received_ms,
                                                  self.owner))

    def _settle(self, events) -> None:
        if events.finished and pathtrace.on():
            pathtrace.stamp("subscriber.outcome", (a.task.job_id for a, _ in events.finished))
        for a, outcome in events.finished:
            self._record(a, outcome)
        for a, (reason, start_ms) in events.crashed:
            again = self.cancels.after_crash(a)
            if again is not None:   # killed for a cancel: its compensation runs on another worker
                self.pending[a.worker_type].appendleft(again)
                continue
            started = start_ms or a.received_ms
            if a.task.compensate:   # the compensation itself died: the job ends cancelled, saying so
                charged = a.task.cancelled(worker=self._display_for(a), start_ms=started, end_ms=now_ms(),
                                           error=f"compensation did not finish: {reason}")
            else:
                # The worker died under this action (crash, OOM kill, time limit): a failed attempt
                # that may be retried, so an action that kills its worker ends dead, not in a loop.
                charged = a.task.outcome("failed", retryable=True, worker=self._display_for(a),
                                         start_ms=started, end_ms=now_ms(), error=reason)
            self._record(a, charged)
        for a in events.returned:
            self.cancels.forget(a)
            self.pending[a.worker_type].appendleft(a)

    def _ack_stale(self, deliveries) -> None:
        """Ack away the deliveries of a job cancelled before it started (a stale duplicate now)."""
        self.stats["stale"] += len(deliveries)
        self.intake.ack(deliveries)

    def _record(self, a: Assignment, outcome: Outcome) -> None:
        t = a.task
        event = Event(t.job_id, t.action, t.queue, t.attempt, event_outcome(outcome.status, outcome.deferred),
                      outcome.end_ms - outcome.start_ms, outcome.worker, outcome.end_ms,
                      error=outcome.error[:EVENT_ERROR_MAX] if outcome.error else None, host=self.host)
        # Duplicates of this job delivered meanwhile are settled with it, once it is recorded.
        self._marked.discard(t.key)
        self.recorder.finished(outcome, event, self.active.pop(t.key, [a.delivery]),
                               dead_reason=outcome.error if outcome.status == "dead" else None)
        self.stats[outcome.status if outcome.status in self.stats else "failed"] += 1

    def _display_for(self, a: Assignment) -> str:
        return f"{a.worker_type}@{self.host}"

    # -- heartbeat -----------------------------------------------------------------------------
    def snapshot(self) -> dict:
        workers = self.pool.snapshot()
        return {"workers": workers, "stats": {**self.stats, "given_back": self.pauses.given_back},
                "pending": {t: len(q) for t, q in self.pending.items()},
                "inflight": sum(w["inflight"] for w in workers),
                "recording": self.recorder.waiting, "connected": self.intake.connected.is_set(),
                "reconnects": self.intake.reconnects, "owner": self.owner,
                "checking": len(self._unchecked), "held": len(self._held), "cancels": self.cancels.seen,
                "write_error": getattr(self.recorder, "write_error", None)}

    def _beat(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_beat < HEARTBEAT_EVERY_S:
            return
        self._last_beat = now
        try:
            self.dbs.heartbeats.beat("subscriber", self.name, ttl_s=HEARTBEAT_EVERY_S * 5,
                                     status="ok" if self.intake.connected.is_set() else "degraded",
                                     details=self.snapshot(), started_ms=self.started_ms)
        except Exception as exc:
            log.warning("could not write heartbeat: %s", exc)

    def _remove_heartbeat(self) -> None:
        try:
            self.dbs.heartbeats.remove("subscriber", self.name)
        except Exception:
            pass

    # -- shutdown ------------------------------------------------------------------------------
    def _shutdown(self) -> None:
        """Stop in this order, so nothing taken is lost and nothing finished is run again:

        1. stop taking new messages (the intake holds anything delivered from now on, unsettled:
           it goes back to its queue when the consumer closes);
        2. give back what no worker has started yet;
        3. let running actions finish up to the grace period (the intake keeps the connection,
           and its heartbeats, alive meanwhile), recording and acking their outcomes;
           a second SIGTERM (cold stop) skips the wait;
        4. stop the workers (killing any still running: their messages were never acked and
           return to the queue when the consumer closes);
        5. close the consumer and connections (in ``run``'s finally).
        """
        log.info("stopping: no new work; %s", "cold" if self._cold.is_set() else "warm")
        self.intake.pause()
        self._give_back_unchecked()
        for q in self.pending.values():
            self._give_back(q)
        self.pool.ask_to_stop()
        deadline = time.monotonic() + self.settings.subscriber.grace_period
        while not self.pool.idle() and not self._cold.is_set() and time.monotonic() < deadline:
            self._round(timeout=0.2)
            self._give_back_unchecked()
            for q in self.pending.values():   # returned by retiring workers: give them back too
                self._give_back(q)
        if not self.pool.idle():
            log.warning("grace period over or cold stop: killing workers with actions running; "
                        "their messages return to the queue")
        self.pool.terminate(timeout=2.0)
        # What is left of the grace period (at least a second, ample for a healthy write): an
        # outcome that cannot be written by then stays unacked and its message comes back.
        self.recorder.stop(timeout=max(1.0, deadline - time.monotonic()))
        time.sleep(0.2)  # let the intake thread send the last acks before it closes


def _cancel_bell(layout, name: str) -> Bell | None:
    """The bell a cancel on this host rings, so the cancels are looked for at once rather than
    at the next second's look; None where there are no bells (the look alone then)."""
    if not wakeup.available():
        return None
    try:
        return Bell(layout.run_dir, name, wakeup.SUBSCRIBER)
    except OSError as exc:   # another process holds the address: the look alone, then
        log.warning("no cancel bell for subscriber %s (%s); cancels are looked for every second", name, exc)
        return None


def _ring_other_hosts(settings, dbs, name: str):
    """On RabbitMQ, the broker's ring of every host's publishers (``mq/amqp_wake.py``), rung
    with this host's bell; None on the embedded transport."""
    if settings.mq.transport != "amqp":
        return None
    from enstratus_workers.mq.amqp_wake import ring_through_broker

    return ring_through_broker(settings, dbs.ringers, f"subscriber@{name}", dbs.heartbeats)


def _owner_token(name: str, host: str) -> str:
    """This subscriber process as the owner of the attempts it runs: name, host, pid and a
    random part, so a restarted process (or a reused pid) is never mistaken for its predecessor."""
    return f"{name}@{host}:{os.getpid()}:{secrets.token_hex(4)}"[-200:]


def _arguments(text: str):
    """The row's arguments as the worker gets them: parsed, or the text if it is not JSON
    (so the job fails with the reason rather than the subscriber)."""
    try:
        return json.loads(text)
    except (TypeError, ValueError, RecursionError):
        return text


def _action_time_limits() -> dict[str, float]:
    """The actions' own hard limits over action.time_limit (declared: actions/options.py)."""
    from enstratus_workers.actions import default_registry

    return default_registry().time_limits()


def build(settings, layout, name, options) -> Subscriber:
    return Subscriber(settings, layout, name)


def main(argv=None) -> int:
    return runner.main("subscriber", build, argv)
