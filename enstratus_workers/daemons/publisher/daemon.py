"""The publisher: the only process that writes to the queue.

It relays jobs that are ``pending`` in the provisioning DB (a transactional outbox: the row
exists before any message does) as soon as their commit rings its bell (``jobs/wakeup.py``;
``publisher.poll_interval`` is only the safety net for a ring that never came), in batches,
with pipelined publisher confirms, and marks them ``queued`` only once the broker has confirmed
them. Several publishers can run at once: the rows of a batch stay locked (SKIP LOCKED) until
it is marked, so no job is relayed twice.

Fair shares (``jobs/fairshare.py``): each queue gets at most ``publisher.window`` first attempts
relayed and not yet started, dealt to the accounts waiting in turns (``account.<name>.weight``);
the rest wait in the outbox, and paused queues and accounts (``db/pauses.py``) wait there
whole. A job that starts or finishes rings the bell too (its subscriber's recorder), so the
window refills as the workers empty it.
"""

from __future__ import annotations

import logging
import sys
import threading
import time

import sqlalchemy as sa

from enstratus_workers.backoff import Backoff, Retrying
from enstratus_workers.clock import now_ms
from enstratus_workers.daemons.publisher.recovery import StuckJobs
from enstratus_workers.daemons.publisher.schedules import Scheduler
from enstratus_workers.db import open_databases
from enstratus_workers.db.held_connection import HeldConnection
from enstratus_workers.db.outbox import RelayPass
from enstratus_workers.errors import (
    ConnectionClosed,
    DatabaseError,
    PublishError,
    TransportError,
)
from enstratus_workers.fleet.joining import join_fleet
from enstratus_workers.jobs import pathtrace, wakeup
from enstratus_workers.jobs.fairshare import FairShare
from enstratus_workers.jobs.messages import encode_job
from enstratus_workers.jobs.wakeup import Bell
from enstratus_workers.mq import open_transport
from enstratus_workers.mq.base import OutgoingMessage
from enstratus_workers.runtime import runner
from enstratus_workers.runtime.service import Service

log = logging.getLogger(__name__)

HEARTBEAT_EVERY_S = 2.0
SWITCH_INTERVAL_S = 0.0005   # the GIL's hand-over interval in the publisher (run())


class Publisher(Service):
    daemon = "publisher"

    def __init__(self, settings, layout, name: str):
        self.settings, self.layout, self.name = settings, layout, name
        self._stop = threading.Event()
        self._bell: Bell | None = None
        self._ear = None                      # the broker's rings from other hosts
        self._relay_ringers = []              # the ear's rings of this host's waiters and subscribers
        self.transport = None
        self._declared: set[str] = set()
        self._relay_conn: HeldConnection | None = None   # the passes' own (made at the first)
        self.published = 0
        self.room_rings_let_go = 0            # wake-ups of room rings only, with nothing held back
        self.fair = FairShare(settings.publisher.window, dict(settings.publisher.account_weights))
        self.started_ms = now_ms()
        self._last_beat = 0.0
        # waits after a failed relay (broker or database away): 0.5 s doubling to 30 s, jittered so
        # that a fleet of publishers which lost the same broker node does not come back in step
        self._retrying = Retrying(Backoff(first=0.5, cap=30.0))

    def request_stop(self, cold: bool = False) -> None:
        self._stop.set()
        if self._bell is not None:
            self._bell.ring()

    def run(self, ready) -> None:
        p = self.settings.publisher
        self.layout.ensure_dirs()
        pathtrace.from_environment("publisher")
        # its ioloop thread answers confirms while this one waits on the database: as in the
        # subscriber (SWITCH_INTERVAL_S there), a thread whose answer came gets the GIL sooner
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        self.dbs = open_databases(self.settings.worker, self.layout)
        try:
            join_fleet(self.settings, self.dbs)
        except BaseException:
            self.dbs.close()
            raise
        self.stuck = StuckJobs(self.settings, self.dbs, depths=self._depths)
        self.scheduler = Scheduler(self.settings, self.layout, self.dbs)
        # a job committed from now on rings it; one committed before is relayed by the loop's
        # first pass, which reads the outbox before it ever waits
        self._bell = Bell(self.layout.run_dir, self.name) if wakeup.available() else None
        self._ear = self._listen_to_other_hosts()
        ready()
        try:
            while not self._stop.is_set():
                done = self._relay_once()
                self.stuck.tick()
                self.scheduler.tick()
                self._beat()
                if self.transport is not None:
                    self.transport.keep_alive()
                if done is None:             # something failed: back off
                    self._stop.wait(self._retrying.failed())
                    continue
                self._retrying.succeeded()
                if not done.more and not self._stop.is_set():   # nothing waits, or the windows are full
                    if self._bell is not None:
                        self._wait_for_work(p.poll_interval)   # a commit's ring, or the safety net
                        pathtrace.stamp("publisher.woken", (0,))
                    else:
                        self._stop.wait(p.poll_interval)
                elif self._ear is not None and self._bell.wait(0):
                    # busy with a backlog, the next pass follows at once and needs no ring; a
                    # cancel made here need not wait for the backlog to end to reach other hosts
                    self._pass_cancel_on()
        finally:
            # Shutdown order: the loop above finished its batch (marked or left pending);
            # nothing is in flight now, so close the connection, then the databases.
            log.info("stopping after relaying %d jobs", self.published)
            self._close_transport()
            self.scheduler.close()
            try:
                self.dbs.heartbeats.remove("publisher", self.name)
            except Exception:
                pass
            if self._ear is not None:
                self._ear.close()
            for ringer in self._relay_ringers:
                ringer.close()
            if self._relay_conn is not None:
                self._relay_conn.close()
            self.dbs.close()
            if self._bell is not None:
                self._bell.close()

    def _wait_for_work(self, interval: float) -> None:
        """Wait for a ring or the safety net's interval. Room rings (a job started or finished,
        ``jobs/wakeup.py``) are let go while the last pass left nothing pending: no job waits
        for that room, and at idle each such ring would cost an empty pass that the next job's
        submit could land behind. The safety net's interval runs on from the first wait. A
        cancel ring (``wakeup.CANCEL``) is passed on to the other hosts' subscribers through the
        broker and costs no pass either."""
        deadline = time.monotonic() + interval
        while self._bell.wait(deadline - time.monotonic()):
            self._pass_cancel_on()
            if not (self._bell.only_room and self.fair.outbox_emptied) or self._stop.is_set():
                return
            self.room_rings_let_go += 1

    def _pass_cancel_on(self) -> None:
        """After a wake-up: a cancel ring among its rings (a cancel made on this host by a
        process with no broker ringer: the CLI, a script) goes on to the other hosts."""
        if self._bell.cancelled and self._ear is not None:
            self._ear.ring_cancel()

    def _listen_to_other_hosts(self):
        """On RabbitMQ, the other hosts' rings (``mq/amqp_wake.py``) ring this bell too, and
        this host's waiters and subscribers when they carry recorded outcomes or a cancel."""
        if self._bell is None or self.settings.mq.transport != "amqp":
            return None
        from enstratus_workers.jobs import wakeup
        from enstratus_workers.mq.amqp_wake import WakeListener

        # rung from the listener's thread only: the store's own ringers stay its threads'
        waiters = wakeup.ringer_for(self.layout.run_dir, wakeup.WAITER)
        owners = wakeup.ringer_for(self.layout.run_dir, wakeup.SUBSCRIBER)
        self._relay_ringers = [waiters, owners]
        return WakeListener(self.settings.mq, self.settings.worker.host_name, f"publisher@{self.name}",
                            self._bell.ring, waiters.ring_done, owners.ring).start()

    def _relay_once(self) -> RelayPass | None:
        """One relay pass: how many jobs it relayed and whether another should follow at once
        (``FairShare.settle``: else wait for a ring or the poll); None after a failure."""
        try:
            if self.transport is None:
                self.transport = open_transport(self.settings.mq, self.layout,
                                                client_name=f"publisher@{self.name}")
                self._declared.clear()
                # every queue of the desired state: made through the admin API on any host too
                self._declare(self.dbs.desired.queues(self.settings.worker.all_queues))
                log.info("connected to the %s transport", self.settings.mq.transport)
            if self._relay_conn is None:
                self._relay_conn = HeldConnection(self.dbs.provisioning, autocommit=False, retry=False)
            done = self._relay_conn.run(
                lambda held: self.dbs.jobs.relay(self.fair, self.settings.publisher.batch, self._publish, held))
            self.published += done.relayed
            return done
        except ConnectionClosed as exc:
            log.warning("queue connection lost (%s); jobs stay pending until it is back", exc)
            self._close_transport()
        except PublishError as exc:
            log.warning("%s; %d jobs stay pending and are retried", exc, len(exc.unconfirmed))
        except TransportError as exc:
            log.warning("transport error: %s", exc)
            self._close_transport()
        except (DatabaseError, sa.exc.SQLAlchemyError) as exc:
            log.warning("database unavailable (%s); retrying", type(exc).__name__)
        return None

    def _depths(self, queues):
        if self.transport is None:
            return []
        try:
            return self.transport.depths(queues)
        except TransportError:
            return []

    def _declare(self, queues) -> None:
        new = [q for q in queues if q not in self._declared]
        if new:
            self.transport.declare(new)
            self._declared.update(new)

    def _publish(self, jobs) -> None:
        self._declare({j.queue for j in jobs})
        now = now_ms()
        messages = [self._message(j, j.next_attempt(now)) for j in jobs]
        if len(messages) == 1:
            self.transport.publish_one(messages[0])   # a job alone: on this thread (mq/amqp.py)
        else:
            self.transport.publish(messages)

    @staticmethod
    def _message(j, nxt) -> OutgoingMessage:
        return OutgoingMessage(queue=j.queue, message_id=str(j.job_id), delay_ms=nxt.delay_ms,
                               body=encode_job(j.job_id, j.action, j.arguments, nxt.attempt, j.max_attempts))

    def _close_transport(self) -> None:
        if self.transport is not None:
            try:
                self.transport.close()
            except Exception:
                log.debug("error closing transport", exc_info=True)
            self.transport = None

    def _beat(self) -> None:
        now = time.monotonic()
        if now - self._last_beat < HEARTBEAT_EVERY_S:
            return
        self._last_beat = now
        try:
            self.dbs.heartbeats.beat(
                "publisher", self.name, ttl_s=HEARTBEAT_EVERY_S * 5, started_ms=self.started_ms,
                status="ok" if self.transport is not None else "degraded",
                details={"published": self.published, "connected": self.transport is not None,
                         "recovered": self.stuck.recovered})
        except Exception as exc:
            log.warning("could not write heartbeat: %s", type(exc).__name__)


def build(settings, layout, name, options) -> Publisher:
    """Refuse (exit 6, as ``config check`` does) schedules of actions no worker has: the
    publisher would submit, once per interval and account, jobs that can only fail."""
    from enstratus_workers.actions import default_registry
    from enstratus_workers.config import worker_file
    from enstratus_workers.config.loader import unknown_schedules

    problems = unknown_schedules(layout.classes_dir / worker_file.FILENAME, default_registry())
    if problems:
        raise problems[0]
    return Publisher(settings, layout, name)


def main(argv=None) -> int:
    return runner.main("publisher", build, argv)
