"""The publisher's schedules: periodic actions per account (fast for firewall rules, slow for budgets).

Time is cut into slots of each schedule's interval (slot = now_ms // interval_ms), and every
account gets at most one job per slot, whatever number of publishers run: the job's idempotency
key is ``sched:<action>:<account>:<slot>``, unique in the provisioning DB, so a second publisher's
submit returns the first one's job. Nothing is stored besides the jobs themselves.

A schedule never piles up: an account whose previous job of the same action is still pending,
queued or running is skipped, and looked at again a little later in the same slot, so a slow job
delays the next one instead of queueing behind it. ``tick`` is called on every publisher loop
(~20 times a second) and does no I/O at all unless a slot has begun or a skipped account is due
for another look.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

import sqlalchemy as sa

from enstratus_workers.clock import now_ms as clock_ms
from enstratus_workers.cloud.servers import SERVER_BUCKET
from enstratus_workers.errors import DatabaseError
from enstratus_workers.jobs.submit import SubmitError, submit
from enstratus_workers.persist import NotFound, StoreError, open_store

log = logging.getLogger(__name__)

KEY_PREFIX = "sched"
#: the longest the accounts of the server objects go without being read again (a shorter
#: schedule interval shortens it: a new account is scheduled from its first slot on)
ACCOUNTS_REFRESH_S = 60.0


def slot_of(now_ms: int, interval: float) -> int:
    """The number of the interval slot ``now_ms`` falls in; the same on every host with the same clock."""
    return now_ms // max(1, int(interval * 1000))


def job_key(action: str, account: str, slot: int) -> str:
    return f"{KEY_PREFIX}:{action}:{account}:{slot}"


def retry_ms(interval: float) -> int:
    """How soon a skipped account is looked at again within its slot: a tenth of the interval,
    between 1 and 30 seconds (a second publisher's job or a slow one is not worth a busy loop)."""
    return min(30_000, max(1_000, int(interval * 100)))


@dataclass
class _SlotState:
    """One schedule's progress through its current slot."""

    slot: int
    left: set[str] | None = None      # accounts still to submit; None: accounts not read yet
    next_ms: int = 0                  # the earliest time to look again
    skipped: set[str] = field(default_factory=set)  # accounts already reported in this slot


class ServerAccounts:
    """The distinct accounts of the server objects, re-read at most every ``refresh_s`` seconds.

    A server's account never changes, so after the first read only servers not seen before are
    fetched: one key listing per refresh, not one read per server.
    """

    def __init__(self, store, refresh_s: float = ACCOUNTS_REFRESH_S):
        self.store, self.refresh_ms = store, int(refresh_s * 1000)
        self._account_of: dict[str, str | None] = {}
        self._read_ms: int | None = None

    def get(self, now_ms: int) -> set[str]:
        """Raises ``StoreError`` when the persistence layer cannot be read."""
        if self._read_ms is None or now_ms - self._read_ms >= self.refresh_ms:
            keys = set(self.store.list_keys(SERVER_BUCKET))
            for gone in set(self._account_of) - keys:
                del self._account_of[gone]
            for key in sorted(keys - set(self._account_of)):
                try:
                    data = self.store.get(SERVER_BUCKET, key).data
                except NotFound:
                    continue  # deleted since the listing
                except StoreError as exc:
                    # one object that cannot be read (siblings, bytes that are not JSON) must
                    # not hold back every account's schedules: skipped, and read again at the
                    # next refresh
                    log.warning("cannot read server %s for its account (%s); skipping it", key, exc)
                    continue
                account = data.get("account") if isinstance(data, dict) else None
                self._account_of[key] = None if account in (None, "") else str(account)
            self._read_ms = now_ms
        return {a for a in self._account_of.values() if a}


class Scheduler:
    """Submits each schedule's action for every account once per interval; see the module docstring.

    ``persistence`` is the store of server objects (opened from the settings, and closed by
    ``close()``, when not given). The accounts are read again every ``accounts_refresh_s``
    seconds; by default the shortest schedule interval, at most ``ACCOUNTS_REFRESH_S``.
    """

    def __init__(self, settings, layout, dbs, persistence=None, *,
                 accounts_refresh_s: float | None = None):
        self.settings, self.dbs = settings, dbs
        self.schedules = tuple(settings.publisher.schedules)
        self._own_store = persistence is None and bool(self.schedules)
        self.persistence = open_store(settings.persistence, layout) if self._own_store else persistence
        if accounts_refresh_s is None:
            accounts_refresh_s = min([ACCOUNTS_REFRESH_S, *(s.interval for s in self.schedules)])
        self._accounts = ServerAccounts(self.persistence, accounts_refresh_s) if self.persistence else None
        self._state: dict[str, _SlotState] = {}
        self.created = 0

    def tick(self, now_ms: int | None = None) -> int:
        """Submit what is due now; returns the number of jobs created (not found existing).

        Never raises for an outage of the databases: the work is logged and tried again later.
        """
        now = clock_ms() if now_ms is None else now_ms
        created = 0
        for schedule in self.schedules:
            slot = slot_of(now, schedule.interval)
            state = self._state.get(schedule.action)
            if state is None or state.slot != slot:
                state = self._state[schedule.action] = _SlotState(slot)
            elif state.left == set() or now < state.next_ms:
                continue  # the common case: this slot is done or not due for a look: no I/O
            created += self._work(schedule, state, now)
        self.created += created
        return created

    def _work(self, schedule, state: _SlotState, now: int) -> int:
        state.next_ms = now + retry_ms(schedule.interval)
        try:
            if state.left is None:
                state.left = self._all_accounts(now)
            if not state.left:
                return 0
            active = self._active_accounts(schedule.action)
        except (StoreError, DatabaseError, sa.exc.SQLAlchemyError) as exc:
            log.warning("schedule %s: cannot read accounts or jobs (%s: %s); trying again in %ds",
                        schedule.action, type(exc).__name__, exc, retry_ms(schedule.interval) // 1000)
            return 0
        created = 0
        busy = sorted(state.left & active)
        if set(busy) - state.skipped:
            state.skipped.update(busy)
            log.info("schedule %s: %d accounts wait for their previous job to finish (%s%s)",
                     schedule.action, len(busy), ", ".join(busy[:5]), " ..." if len(busy) > 5 else "")
        for account in sorted(state.left - active):
            try:
                job, new = submit(self.settings, self.dbs, schedule.action,
                                  self._arguments(schedule, account), schedule.queue,
                                  idempotency_key=job_key(schedule.action, account, state.slot))
            except SubmitError as exc:  # permanent for this account: do not retry all slot long
                log.warning("schedule %s: account %s cannot be scheduled: %s", schedule.action, account, exc)
                state.left.discard(account)
                continue
            except (DatabaseError, sa.exc.SQLAlchemyError) as exc:
                log.warning("schedule %s: submit failed (%s); trying again in %ds", schedule.action,
                            type(exc).__name__, retry_ms(schedule.interval) // 1000)
                break
            state.left.discard(account)
            if new:
                created += 1
                log.debug("schedule %s: job %d for account %s (slot %d)", schedule.action,
                          job.job_id, account, state.slot)
        if created:
            log.info("schedule %s: submitted %d jobs for slot %d", schedule.action, created, state.slot)
        return created

    def _all_accounts(self, now: int) -> set[str]:
        accounts = set(self.settings.publisher.schedule_accounts)
        if self._accounts is not None:
            accounts |= self._accounts.get(now)
        return accounts

    def _active_accounts(self, action: str) -> set[str]:
        """Accounts with a scheduled job of ``action`` still pending, queued or running."""
        prefix = f"{KEY_PREFIX}:{action}:"
        return {k[len(prefix):].rsplit(":", 1)[0] for k in self.dbs.jobs.active_keys(action, prefix)}

    @staticmethod
    def _arguments(schedule, account: str) -> str:
        return json.dumps({**json.loads(schedule.arguments), "account": account}, sort_keys=True)

    def close(self) -> None:
        """Close the persistence layer if this scheduler opened it."""
        if self._own_store and self.persistence is not None:
            self.persistence.close()
            self.persistence = None
