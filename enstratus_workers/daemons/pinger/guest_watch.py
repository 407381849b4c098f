"""Guest heartbeats for the pinger: one round beats this pinger's share of the running servers.

A round (``GuestWatch.beat_round``, called by the pinger every ``pinger.guest_interval``):

1. lists the servers to watch from the persistence layer's ``state_bin`` index: ``running``
   ones, and ``unreachable`` ones so that a recovery is noticed;
2. keeps this pinger's share of them (rendezvous hashing over the live pingers, i.e. the
   ``pinger`` heartbeat rows that have not expired: a pinger that dies has its share taken over
   at the survivors' next round once its row expires);
3. PINGs their agents at once (``guest_beats.beat_all``: bounded concurrency, a timeout each);
4. feeds the results to a ``HealthTracker`` and writes what changed into each server object
   (``guesthealth``; optimistic concurrency through ``servers.update_server``);
5. submits a ``server.sync`` of the account of every server that went unreachable, one per
   account per round, with an idempotency key per server and outage, so two pingers or a
   restarted one never submit the same sync twice.

Server objects are read when a server joins the share, after every failed beat (its address may
have changed, a sync may have rewritten it), and otherwise a sixth of the share per round, oldest
first: with 5,000 guests a round costs a few hundred reads, not 5,000.

``check`` (in ``guestcheck``) is the other half: what ``pinger check`` reports about guests.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from dataclasses import dataclass

import sqlalchemy as sa

from enstratus_workers.clock import now_ms
from enstratus_workers.cloud.servers import SERVER_BUCKET, update_server
from enstratus_workers.daemons.pinger import guest_health as gh
from enstratus_workers.daemons.pinger.guest_beats import (
    HealthTracker,
    beat_all,
    my_share,
)
from enstratus_workers.daemons.pinger.guest_beats import tracker as t
from enstratus_workers.daemons.pinger.guest_check import SUMMARY_KEY, check
from enstratus_workers.errors import DatabaseError
from enstratus_workers.jobs import submit as submitting
from enstratus_workers.persist import NotFound, StoreError, open_store

log = logging.getLogger(__name__)

PINGER_DAEMON = "pinger"
#: every cached server object is read again at least once in this many rounds
REFRESH_ROUNDS = 6

__all__ = ["GuestWatch", "PINGER_DAEMON", "SUMMARY_KEY", "check", "pinger_identity"]


def pinger_identity(name: str, host: str) -> str:
    """A pinger as the sharding knows it: its name and host, as its heartbeat row is keyed."""
    return f"{name}@{host}"


@dataclass
class _Known:
    data: dict
    read_ms: int


class GuestWatch:
    """The guest-heartbeat half of one pinger; see the module docstring.

    ``persistence`` is the store of server objects (opened from the settings, and closed by
    ``close()``, when not given); ``submit`` is ``enstratus_workers.jobs.submit.submit`` unless given.
    Not thread-safe: one pinger loop calls ``beat_round``.
    """

    check = staticmethod(check)

    def __init__(self, settings, layout, dbs, pinger_name: str, persistence=None, submit=None):
        p = settings.pinger
        self.settings, self.dbs = settings, dbs
        self.identity = pinger_identity(pinger_name, settings.worker.host_name)
        self.interval, self.timeout = p.guest_interval, p.guest_timeout
        self.concurrency, self.misses = p.guest_concurrency, p.guest_misses
        self._own_store = persistence is None
        self.persistence = open_store(settings.persistence, layout) if persistence is None else persistence
        self._submit = submitting.submit if submit is None else submit
        self.tracker = HealthTracker(self.misses)
        self._known: dict[str, _Known] = {}
        self._live: set[str] = set()
        self._pending_syncs: dict[str, str] = {}     # account -> idempotency key, until submitted
        self._last_start: float | None = None
        self.share: tuple[str, ...] = ()              # the servers beaten in the last round
        self.last_summary: dict = {}

    # -- one round -------------------------------------------------------------------------------

    def beat_round(self) -> dict:
        """Beat this pinger's share once and record the outcome; returns the round's summary.

        ``guests`` beaten = ``up`` + ``down`` (missed, not yet unreachable) + ``unreachable``;
        ``round_ms`` its duration, ``lag_ms`` how late it started after the previous round plus
        one interval, ``pingers`` the live pingers sharing the servers, ``syncs`` the jobs
        submitted. Raises ``StoreError`` when the servers cannot be listed (nothing was beaten).
        """
        started = time.monotonic()
        lag_ms = 0 if self._last_start is None else max(
            0, round((started - self._last_start - self.interval) * 1000))
        self._last_start = started
        live = self._live_pingers()
        watched = self._watched()
        mine = my_share(watched, self.identity, live)
        self.tracker.retain(mine)
        for gone in set(self._known) - set(mine):
            del self._known[gone]
        records = self._records(mine, now_ms())
        targets = [tg for sid, data in records.items() if (tg := gh.target_of(sid, data)) is not None]
        results = asyncio.run(beat_all(targets, self.timeout, self.concurrency)) if targets else []
        beaten_ms = now_ms()
        transitions = self.tracker.observe(results, beaten_ms)
        write_errors = sum(not self._record(r) for r in results)
        for tr in transitions:
            # a pinger's first sight of thousands of healthy guests is not news
            level = (logging.WARNING if tr.new == t.UNREACHABLE
                     else logging.DEBUG if tr.old == t.UNKNOWN else logging.INFO)
            log.log(level, "guest of server %s: %s -> %s%s", tr.server_id, tr.old, tr.new,
                    f" ({tr.error})" if tr.error else "")
        self._queue_syncs([tr for tr in transitions if tr.new == t.UNREACHABLE])
        syncs = self._submit_syncs()
        self.share = tuple(sorted(r.server_id for r in results))
        counts = {gh.UP: 0, gh.DOWN: 0, gh.UNREACHABLE: 0}
        for r in results:
            counts[self._health_of(r.server_id)] += 1
        self.last_summary = {
            "guests": len(results), "up": counts[gh.UP], "down": counts[gh.DOWN],
            "unreachable": counts[gh.UNREACHABLE], "round_ms": round((time.monotonic() - started) * 1000),
            "lag_ms": lag_ms, "at_ms": beaten_ms, "interval_s": self.interval,
            "pingers": len(live | {self.identity}), "syncs": syncs, "write_errors": write_errors}
        return dict(self.last_summary)

    def _live_pingers(self) -> set[str]:
        """Pingers whose heartbeat row has not expired; the last known set if the DB is down."""
        try:
            self._live = {pinger_identity(b.name, b.host) for b in self.dbs.heartbeats.all()
                          if b.daemon == PINGER_DAEMON and not b.expired}
        except (DatabaseError, sa.exc.SQLAlchemyError) as exc:
            log.warning("cannot read the pingers' heartbeats (%s): sharing as last known",
                        type(exc).__name__)
        return set(self._live)

    def _watched(self) -> list[str]:
        store = self.persistence
        return sorted(set(store.query(SERVER_BUCKET, "state_bin", gh.RUNNING))
                      | set(store.query(SERVER_BUCKET, "state_bin", gh.UNREACHABLE)))

    def _records(self, mine: list[str], now: int) -> dict[str, dict]:
        """The objects of the servers in ``mine``, read again where they may have changed."""
        stale = [sid for sid in mine if sid not in self._known or self._health_of(sid) != gh.UP]
        skip = set(stale)
        fresh = sorted((k.read_ms, sid) for sid, k in self._known.items() if sid not in skip)
        stale += [sid for _, sid in fresh[:math.ceil(len(mine) / REFRESH_ROUNDS)]]
        for sid in stale:
            try:
                self._known[sid] = _Known(dict(self.persistence.get(SERVER_BUCKET, sid).data), now)
            except NotFound:
                self._known.pop(sid, None)
            except (StoreError, TypeError, ValueError) as exc:
                log.warning("cannot read server %s (%s); beating it as last known", sid, exc)
        return {sid: self._known[sid].data for sid in mine
                if sid in self._known and self._known[sid].data.get("state") in gh.WATCHED_STATES}

    def _health_of(self, server_id: str) -> str:
        known = self._known.get(server_id)
        return gh.health_of(self.tracker.health(server_id), known and known.data.get("state"))

    def _record(self, result) -> bool:
        """Write one beat's outcome into the server object if anything changed; False on failure."""
        sid = result.server_id
        known = self._known.get(sid)
        health = self._health_of(sid)
        seen = self.tracker.health(sid).last_seen_ms
        slack = int(self.interval * self.misses * 1000)
        try:
            if known is None or gh.reconcile(known.data, health, seen, result.error, slack) is None:
                return True
            data, _ = update_server(self.persistence, sid,
                                    lambda cur: gh.reconcile(cur, health, seen, result.error, slack))
        except StoreError as exc:
            log.warning("cannot record the guest health of server %s: %s", sid, exc)
            return False
        except (TypeError, ValueError) as exc:
            # an object written by hand or by another tool, with fields of the wrong kind: the
            # round goes on, so the servers after it get their health and the syncs are queued
            log.warning("cannot record the guest health of server %s: its object does not read as "
                        "a server (%s)", sid, exc)
            return False
        if data is None:
            self._known.pop(sid, None)
        else:
            self._known[sid] = _Known(data, now_ms())
        return True

    # -- server.sync of the accounts of unreachable servers ---------------------------------------

    def _queue_syncs(self, went_unreachable) -> None:
        for tr in sorted(went_unreachable, key=lambda tr: tr.server_id):
            known = self._known.get(tr.server_id)
            account = known and known.data.get("account")
            if account in (None, ""):
                continue
            # one sync per account per round: it reconciles all of the account's servers
            self._pending_syncs.setdefault(str(account), gh.sync_key(tr.server_id, known.data))

    def _submit_syncs(self) -> int:
        """Submit the queued syncs; one that fails on the database is tried again next round."""
        submitted = 0
        for account, key in sorted(self._pending_syncs.items()):
            try:
                job, created = self._submit(self.settings, self.dbs, "server.sync",
                                            json.dumps({"account": account}), idempotency_key=key)
            except submitting.SubmitError as exc:
                log.error("cannot submit server.sync for account %s: %s", account, exc)
            except (DatabaseError, sa.exc.SQLAlchemyError) as exc:
                log.warning("cannot submit server.sync for account %s (%s); trying again next round",
                            account, type(exc).__name__)
                continue
            else:
                submitted += created
                log.info("server.sync of account %s: job %d%s", account, job.job_id,
                         "" if created else " (already submitted)")
            del self._pending_syncs[account]
        return submitted

    def close(self) -> None:
        """Close the persistence layer if this watch opened it."""
        if self._own_store and self.persistence is not None:
            self.persistence.close()
            self.persistence = None
