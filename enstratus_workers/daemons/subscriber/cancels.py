"""The subscriber's share of a cancel: find the cancels of the jobs it holds, stop their actions.

A cancel may come from any host's API or CLI, so the subscriber looks for them in the job table
itself: about every second while it holds work, one query by primary key over the ids of the
jobs it holds (``JobStore.cancels_among``); a cancel made on this host also rings the
subscribers' bells (``jobs/wakeup.py``), which makes the next look come at once, and so does one
made through another host's admin API (rung through the broker, ``mq/amqp_wake.py``). What it
does with a cancelled attempt depends on where the attempt is:

- waiting here, never handed to a worker: if the row already reads ``cancelled`` (it was pending
  or queued when the cancel landed), the delivery is a stale duplicate and is acked away;
  otherwise the attempt is run as its compensation only (``Task.compensate``);
- handed to a worker: the worker is told (a cancel frame naming the attempt, then SIGUSR1,
  ``daemons/worker_inbox.py``). Its action sees ``ctx.cancelled()`` and stops; the worker runs
  the compensation and answers with a ``cancelled`` outcome, recorded as any other;
- still running ``action.cancel_grace`` seconds after the worker was told: the worker process is
  killed, and the attempt goes back to be dispatched as its compensation only, to another worker
  or the one that replaces it (``Cancels.after_crash``). A compensation that kills its worker
  too ends the job ``cancelled`` with that as its error: it is not tried forever.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from dataclasses import replace

from enstratus_workers.daemons.subscriber import worker_socket
from enstratus_workers.jobs.lifecycle import CANCELLED

log = logging.getLogger(__name__)

LOOK_EVERY_S = 1.0


class Cancels:
    def __init__(self, grace_s: float, look_every_s: float = LOOK_EVERY_S):
        self.grace_s, self.look_every_s = grace_s, look_every_s
        self._next_look = 0.0
        self.told: dict[tuple[int, int], float] = {}   # attempt -> when its worker was told
        self.killed: set[tuple[int, int]] = set()      # attempts whose worker was killed for them
        self.seen = 0                                  # cancelled attempts acted on (heartbeat)

    def look_now(self) -> None:
        """A cancel was made on this host (its bell rang): look at the next round, not in a second."""
        self._next_look = 0.0

    def look(self, jobs, active, pending, handles, ack) -> None:
        """Act on the cancels of the attempts held here (module docstring); cheap between looks.

        ``jobs``: the job store; ``active``: attempt -> its deliveries; ``pending``: worker type -> assignments waiting;
        ``handles``: the worker processes; ``ack``: acks deliveries (a stale duplicate's)."""
        now = time.monotonic()
        self._kill_overdue(handles, now)
        if not active or now < self._next_look:
            return
        self._next_look = now + self.look_every_s
        try:
            rows = jobs.cancels_among({job_id for job_id, _ in active})
        except Exception as exc:   # the next look tries again; nothing is lost meanwhile
            log.warning("could not look for cancels of the jobs held here: %s", exc)
            return
        if not rows:
            return
        for queue in pending.values():
            for a in list(queue):
                if a.task.job_id in rows and not a.task.compensate:
                    self.seen += 1
                    if rows[a.task.job_id][0] == CANCELLED:   # ended before it started: nothing ran
                        queue.remove(a)
                        ack(active.pop(a.task.key, [a.delivery]))
                    else:
                        queue[queue.index(a)] = _compensating(a)
        for h in handles:
            for a in h.inflight:
                key = a.task.key
                if a.task.job_id in rows and not a.task.compensate and key not in self.told \
                        and key not in self.killed:
                    self.seen += 1
                    self._tell(h, a, now)

    def _tell(self, h, a, now: float) -> None:
        key = a.task.key
        self.told[key] = now
        try:
            h.conn.send_bytes(worker_socket.pack({"t": "cancel", "job": key[0], "attempt": key[1]}))
            _signal(h, signal.SIGUSR1)
        except (OSError, AttributeError):
            return   # gone: its tasks come back through the pool, and are looked at again
        log.info("job %s attempt %s cancelled: told worker %s", key[0], key[1], h.name)

    def _kill_overdue(self, handles, now: float) -> None:
        """Kill a worker still running a cancelled action ``grace_s`` after it was told."""
        if not self.told and not self.killed:
            return
        held = {a.task.key: h for h in handles for a in h.inflight}
        # an attempt whose outcome came in just before its worker's SIGKILL landed is no longer
        # held, and no crash will name it (after_crash): forgotten here, else kept for ever
        self.killed &= held.keys()
        for key, told_at in list(self.told.items()):
            h = held.get(key)
            if h is None:
                del self.told[key]          # answered (or given back)
            elif now - told_at >= self.grace_s and h.inflight[0].task.key == key and h.kill_reason is None:
                del self.told[key]
                self.killed.add(key)
                h.kill_reason = (f"cancelled; the action did not stop within action.cancel_grace "
                                 f"({self.grace_s:g}s)")
                log.warning("worker %s: job %s %s; killing pid %s", h.name, key[0], h.kill_reason, h.pid)
                _signal(h, signal.SIGKILL)

    def after_crash(self, a):
        """The assignment to dispatch again after its worker died under it, if it was cancelled:
        as its compensation only; None if it is to be charged as a failed attempt."""
        key = a.task.key
        if key not in self.killed and key not in self.told:
            return None
        self.killed.discard(key)
        self.told.pop(key, None)
        return None if a.task.compensate else _compensating(a)

    def forget(self, a) -> None:
        """An assignment given back unstarted by its worker: looked at afresh where it goes."""
        self.told.pop(a.task.key, None)


def _compensating(a):
    return replace(a, task=replace(a.task, compensate=True))


def _signal(h, signum: int) -> None:
    """Signal a worker process: our child through its Popen (its pid is ours until reaped), one
    started by hand by its pid while it is connected."""
    try:
        if h.proc is not None:
            h.proc.send_signal(signum)
        elif h.pid:
            os.kill(h.pid, signum)
    except ProcessLookupError:
        pass
