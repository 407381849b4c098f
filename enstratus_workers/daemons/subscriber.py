"""The subscriber: takes actions off the queues, has worker processes run them, records, then acks.

Threads: the intake thread owns the queue connection (``intake.py``); the accept thread takes
worker connections (``pool/pool.py``); this main thread does everything else in one loop, woken
by whichever of them has news: decode deliveries, dispatch to workers, collect outcomes, write
them in batches (``recorder.py``), ack what is written, supervise the workers.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections import defaultdict, deque
from multiprocessing.connection import wait

from ..daemon import runner
from ..daemon.service import Service
from ..db import Event, Outcome, Started, open_databases
from ..db.instances import desired_types
from ..intake import Intake
from ..layout import short_hostname
from ..messages import MessageDecodeError, decode
from ..pool.pool import Assignment, WorkerPool
from ..recorder import Recorder
from ..retry import event_outcome, job_status_after

log = logging.getLogger(__name__)

HEARTBEAT_EVERY_S = 2.0
RECONCILE_EVERY_S = 5.0


class Subscriber(Service):
    daemon = "subscriber"

    def __init__(self, settings, layout, name: str):
        self.settings, self.layout, self.name = settings, layout, name
        self._stop = threading.Event()
        self._cold = threading.Event()
        self._reload = threading.Event()
        self._next_reconcile = 0.0
        self._last_beat = 0.0
        self.pending: dict[str, deque] = defaultdict(deque)   # worker type -> assignments waiting
        self.active: dict[int, list] = {}   # job id -> deliveries of it held here (duplicates)
        self.started_ms = int(time.time() * 1000)
        self.stats = {"received": 0, "succeeded": 0, "failed": 0, "pending": 0, "dead": 0,
                      "dead_lettered": 0, "duplicates": 0}

    def request_reload(self) -> None:
        self._reload.set()

    def request_stop(self, cold: bool = False) -> None:
        if cold:
            self._cold.set()
        self._stop.set()

    # -- run -----------------------------------------------------------------------------------
    def run(self, ready) -> None:
        s = self.settings
        self.layout.ensure_dirs()
        self.dbs = open_databases(s.worker, self.layout)
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        self._wake_r = wake_r
        self.pool = WorkerPool(s, self.layout, self.name, wake_w, time_limits=_action_time_limits())
        self.intake = Intake(s.mq, self.layout, s.worker.all_queues, s.mq.prefetch, wake_w,
                             client_name=f"subscriber@{self.name}")
        self.recorder = Recorder(self.dbs, s.worker.record_batch, s.worker.record_interval,
                                 on_recorded=self.intake.ack, on_dead=self.intake.dead_letter)
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
            self.recorder.stop(timeout=5)
            self.intake.stop()
            self._remove_heartbeat()
            self.dbs.close()
            os.close(wake_r)
            os.close(wake_w)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._round(timeout=0.5)

    def _round(self, timeout: float) -> None:
        ready = wait([self._wake_r, *self.pool.connections()], timeout=timeout)
        if self._wake_r in ready:
            try:
                os.read(self._wake_r, 65536)
            except BlockingIOError:
                pass
        self.pool.adopt_arrivals()
        self._take_deliveries()
        self._settle(self.pool.read([c for c in ready if c != self._wake_r]))
        self._settle(self.pool.supervise())
        if not self.pool.stopping:
            self._reconcile()
            self.pool.scale({t: len(q) for t, q in self.pending.items()})
            self.pool.dispatch(self.pending)
        self._beat()

    def _reconcile(self) -> None:
        """Follow the desired worker types (admin API, or worker.properties) every few seconds
        and on SIGHUP: the pool scales to them, the intake consumes their queues, and work
        waiting for a type that is gone is given back to its queue."""
        if not self._reload.is_set() and time.monotonic() < self._next_reconcile:
            return
        reload = self._reload.is_set()
        self._reload.clear()
        self._next_reconcile = time.monotonic() + RECONCILE_EVERY_S
        try:
            types = desired_types(self.dbs.provisioning, self.settings)
        except Exception as exc:
            log.warning("could not read the desired worker types (%s); keeping the current ones", exc)
            return
        if not reload and {t.name: t for t in types} == self.pool.types:
            return
        log.info("worker types: %s", ", ".join(f"{t.name}[{t.min}..{t.max}]<-{','.join(t.queues)}"
                                               for t in types) or "none")
        self.pool.set_types(types)
        queues = list(dict.fromkeys(q for t in types for q in t.queues))
        self.intake.set_queues(queues)
        for wtype in [w for w in self.pending if w not in self.pool.types]:
            self._give_back(self.pending.pop(wtype))

    def _give_back(self, assignments) -> None:
        """Return unstarted work to its queue (with any duplicates of it held here)."""
        for a in list(assignments):
            self.intake.nack(self.active.pop(a.message.job_id, [a.delivery]))
        assignments.clear()

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
        if not batch:
            return
        redelivered = [d for d in batch if d.redelivered]
        done_already = set()
        if redelivered:
            ids = []
            for d in redelivered:
                try:
                    ids.append(decode(d.body).job_id)
                except MessageDecodeError:
                    pass
            try:
                done_already = self.dbs.jobs.terminal_among(ids)
            except Exception:
                log.warning("could not check redelivered jobs; running them again", exc_info=True)
        to_ack = []
        for d in batch:
            self.stats["received"] += 1
            try:
                msg = decode(d.body)
            except MessageDecodeError as exc:
                log.error("dead-lettering undecodable message %s from %s: %s", d.message_id, d.queue, exc)
                self.intake.dead_letter(d, str(exc))
                self.stats["dead_lettered"] += 1
                continue
            if msg.job_id in done_already:
                to_ack.append(d)          # recorded before a crash lost the ack
                continue
            if msg.job_id in self.active:  # the same job is running here already (redelivery)
                self.active[msg.job_id].append(d)
                self.stats["duplicates"] += 1
                continue
            self.active[msg.job_id] = [d]
            a = Assignment(d, msg, self._type_for_queue(d.queue))
            self.pending[a.worker_type].append(a)
            # Marked running with this host's name, so stuck-job recovery knows whose it is.
            self.recorder.started(Started(msg.job_id, msg.attempt, self._display_for(a), a.received_ms))
        self.intake.ack(to_ack)

    def _settle(self, events) -> None:
        for a, outcome in events.finished:
            self._record(a, outcome["status"], outcome.get("retryable", False), outcome["start_ms"],
                         outcome["end_ms"], outcome.get("result"), outcome.get("error"),
                         outcome.get("worker") or "")
        for a, (reason, start_ms) in events.crashed:
            # The worker died under this action (crash, OOM kill, time limit): a failed attempt
            # that may be retried, so an action that kills its worker ends dead, not in a loop.
            self._record(a, "failed", True, start_ms or a.received_ms, int(time.time() * 1000),
                         None, reason, "")
        for a in events.returned:
            self.pending[a.worker_type].appendleft(a)

    def _record(self, a: Assignment, attempt_status, retryable, start_ms, end_ms, result, error,
                worker) -> None:
        m = a.message
        worker = worker or self._display_for(a)
        max_attempts = m.max_attempts or self.settings.worker.max_attempts
        status = job_status_after(attempt_status, retryable, m.attempt, max_attempts)
        if status == "dead":
            error = f"{error} (attempt {m.attempt} of {max_attempts}; dead)"
        outcome = Outcome(m.job_id, m.attempt, status, worker, start_ms, end_ms, result, error)
        event = Event(m.job_id, m.action, a.delivery.queue, m.attempt, event_outcome(status),
                      end_ms - start_ms, worker, end_ms)
        # Duplicates of this job delivered meanwhile are settled with it, once it is recorded.
        self.recorder.finished(outcome, event, self.active.pop(m.job_id, [a.delivery]),
                               dead_reason=error if status == "dead" else None)
        self.stats[status if status in self.stats else "failed"] += 1

    def _display_for(self, a: Assignment) -> str:
        return f"{a.worker_type}@{short_hostname()}"

    # -- heartbeat -----------------------------------------------------------------------------
    def snapshot(self) -> dict:
        workers = self.pool.snapshot()
        return {"workers": workers, "stats": dict(self.stats),
                "pending": {t: len(q) for t, q in self.pending.items()},
                "inflight": sum(w["inflight"] for w in workers),
                "recording": self.recorder.waiting, "connected": self.intake.connected.is_set(),
                "reconnects": self.intake.reconnects}

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

        1. stop taking new messages (the intake gives back anything delivered from now on);
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
        for q in self.pending.values():
            self._give_back(q)
        self.pool.ask_to_stop()
        deadline = time.monotonic() + self.settings.worker.grace_period
        while not self.pool.idle() and not self._cold.is_set() and time.monotonic() < deadline:
            self._round(timeout=0.2)
            for q in self.pending.values():   # returned by retiring workers: give them back too
                self._give_back(q)
        if not self.pool.idle():
            log.warning("grace period over or cold stop: killing workers with actions running; "
                        "their messages return to the queue")
        self.pool.terminate(timeout=2.0)
        self.recorder.stop(timeout=self.settings.worker.grace_period)
        time.sleep(0.2)  # let the intake thread send the last acks before it closes


def _action_time_limits() -> dict[str, float]:
    """Actions may declare their own hard limit (``fn.time_limit = 60``) over action.time_limit."""
    from ..actions import default_registry

    reg = default_registry()
    return {name: float(reg.get(name).time_limit) for name in reg.names()
            if isinstance(getattr(reg.get(name), "time_limit", None), (int, float))}


def build(settings, layout, name, options) -> Subscriber:
    return Subscriber(settings, layout, name)


def main(argv=None) -> int:
    return runner.main("subscriber", build, argv)


if __name__ == "__main__":
    # Run under the module's real name, so its loggers are not called "__main__".
    from enstratus_workers.daemons.subscriber import main as _main

    raise SystemExit(_main())
