"""Fair shares: which pending jobs the publisher relays next, by account, within each queue's window.

Two rules decide a relay pass (``db/outbox.py`` reads the outbox and takes the rows):

- **The window.** A queue holds at most ``publisher.window`` first attempts relayed and not yet
  started (``queued``); a backlog waits in the outbox, where turns can still be taken. Without
  the window, 10,000 jobs of one account would be relayed at once and a later account's jobs
  would queue behind all of them on the broker, where nobody can reorder them. Retries are not
  counted, nor deferred jobs whose time has not come: they wait in the broker's delay queues,
  and counting them would shut a queue for minutes behind a few failing or deferring jobs. The window is a bound per
  publisher pass, not a lock: two publishers reading the same room at the same moment may both
  fill it (at most one window each).
- **Turns by account.** Within a queue, the room is dealt to the accounts with jobs waiting by
  stride scheduling: each account has a *pass*, advanced by ``1 / weight`` for every job of its
  relayed; the next job goes to the account with the lowest pass. So while several accounts
  wait, an account of weight 3 gets three jobs for every one of a weight-1 account, and an
  account that starts waiting starts level with the least-served account waiting, neither
  behind the others' history nor ahead of it. An account that stops waiting is forgotten.
  Jobs without an account take turns as one account of weight 1.

A queue whose window is partly filled is refilled once a quarter of it is free: the workers
empty a window an outcome batch at a time, and a pass per batch would spend the publisher in
passes of a few jobs each (a pass costs about the same for 5 jobs as for 50).

Paused queues and accounts (``db/pauses.py``) get no room at all. Only what was really relayed
advances an account's pass (``settle``): an account dealt more turns than it had jobs is not
charged for them, and the pass is run again at once for the room it left.
"""

from __future__ import annotations

import heapq
from collections import Counter
from dataclasses import dataclass
from itertools import zip_longest
from typing import Mapping, NamedTuple, Sequence


#: a queue with jobs queued is refilled once this part of its window is free (``_refill_at``)
REFILL_PART = 4


class Paused(NamedTuple):
    """What is paused fleet-wide, as one relay pass or one delivery check reads it."""

    queues: frozenset = frozenset()
    accounts: frozenset = frozenset()

    def holds(self, queue: str, account: str | None) -> bool:
        """Whether a job of ``account`` on ``queue`` must wait in the outbox."""
        return queue in self.queues or (account is not None and account in self.accounts)


class Outlook(NamedTuple):
    """The outbox as a relay pass finds it (``db/outbox.py``'s one read)."""

    queued: Mapping[str, int]                          # first attempts relayed, not started, per queue
    waiting: Mapping[str, Sequence[str | None]]        # queue -> accounts with pending jobs on it
    paused: Paused = Paused()


class Group(NamedTuple):
    """Up to ``limit`` of the oldest pending jobs of ``account`` on ``queue``."""

    queue: str
    account: str | None
    limit: int


@dataclass(frozen=True)
class Plan:
    """One pass: the groups to read, and the order in which their jobs are published: a list of
    group indexes, one per turn dealt, the queues' turns interleaved, so that the accounts' jobs
    are interleaved on the broker and a batch too small for every queue is shared by them."""

    groups: tuple[Group, ...] = ()
    order: tuple[int, ...] = ()
    batch: int = 0                # most jobs the pass publishes


class Turns:
    """One queue's stride scheduler (module docstring): account -> pass."""

    def __init__(self):
        self._pass: dict[str | None, float] = {}

    def deal(self, accounts: Sequence[str | None], weight_of, turns: int) -> list[str | None]:
        """``turns`` accounts, in the order they get their turn (an account may recur). The
        waiting accounts are registered (newcomers level with the least-served); no pass moves
        until ``credit``."""
        waiting = set(accounts)
        for gone in [a for a in self._pass if a not in waiting]:
            del self._pass[gone]
        floor = min(self._pass.values(), default=0.0)
        for a in accounts:
            self._pass.setdefault(a, floor)
        if len(waiting) == 1:      # every turn is the one account's (the heap's answer, without it:
            return [accounts[0]] * turns   # a lone job's pass deals a whole window of turns)
        heap = [(self._pass[a], _order_key(a), a) for a in waiting]
        heapq.heapify(heap)
        dealt = []
        for _ in range(turns):
            at, key, a = heapq.heappop(heap)
            dealt.append(a)
            heapq.heappush(heap, (at + 1.0 / weight_of(a), key, a))
        return dealt

    def credit(self, account: str | None, relayed: int, weight: int) -> None:
        if account in self._pass:
            self._pass[account] += relayed / weight


def _order_key(account: str | None) -> tuple:
    """Ties go to jobs without an account, then by name: a stable order, the same on every host."""
    return (account is not None, account or "")


class FairShare:
    """The publisher's planner: ``plan`` a pass from the outbox's outlook, ``settle`` it with
    what was relayed. Keeps the turns of every queue between passes (one per publisher)."""

    def __init__(self, window: int | None = None, weights: Mapping[str, int] | None = None):
        self.window = window                     # None: no window (every pending job may go)
        self.weights = dict(weights or {})
        self._turns: dict[str, Turns] = {}
        self._first_queue = 0                    # queues take turns at a batch too small for all
        # the last pass left nothing pending that it saw: the next may read the few jobs pending
        # in one statement (``db/outbox.py``); set by the pass, False until one shows it
        self.outbox_emptied = False

    def _refill_at(self, queued: int) -> int:
        """The room a queue must have to be relayed to: any, when nothing of it is queued (a lone
        job goes at once); else a quarter of the window, so that a window emptied one outcome
        batch at a time is refilled in passes of a fair size, not in as many passes as batches."""
        if self.window is None or queued == 0:
            return 1
        return max(1, self.window // REFILL_PART)

    def weight(self, account: str | None) -> int:
        return self.weights.get(account, 1) if account is not None else 1

    def plan(self, outlook: Outlook, batch: int) -> Plan:
        """Deal each queue the turns its window has room for (at most ``batch``), in turns by
        account; paused queues and accounts get none."""
        queues = sorted(outlook.waiting)
        if queues:   # which queue's turn comes first, when the batch is too small for all
            self._first_queue %= len(queues)
            queues = queues[self._first_queue:] + queues[:self._first_queue]
            self._first_queue += 1
        for gone in [q for q in self._turns if q not in outlook.waiting]:
            del self._turns[gone]
        groups: list[Group] = []
        per_queue: list[list[int]] = []
        for queue in queues:
            if queue in outlook.paused.queues:
                continue
            accounts = [a for a in outlook.waiting[queue] if not outlook.paused.holds(queue, a)]
            queued = outlook.queued.get(queue, 0)
            room = batch if self.window is None else self.window - queued
            if not accounts or room < self._refill_at(queued):
                continue
            free = min(batch, room)
            dealt = self._turns.setdefault(queue, Turns()).deal(accounts, self.weight, free)
            if len(set(accounts)) == 1:     # one group, all the turns (a lone job's pass, mostly)
                per_queue.append((len(groups),) * free)
                groups.append(Group(queue, accounts[0], free))
                continue
            turns_of = Counter(dealt)
            index: dict[str | None, int] = {}
            for account in dict.fromkeys(dealt):       # in the order of their first turn
                index[account] = len(groups)
                groups.append(Group(queue, account, turns_of[account]))
            per_queue.append([index[a] for a in dealt])
        if len(per_queue) == 1:
            order = tuple(per_queue[0])
        else:
            order = tuple(i for turn in zip_longest(*per_queue) for i in turn if i is not None)
        return Plan(tuple(groups), order, batch)

    def settle(self, plan: Plan, read: Sequence[int], relayed: Sequence[int]) -> bool:
        """Advance the accounts by what they had relayed (``relayed[i]`` of ``plan.groups[i]``,
        of the ``read[i]`` jobs read); whether another pass should follow at once: the batch
        was the bound, or an account had as many jobs as turns while another had fewer (its
        room is free for the others)."""
        for g, n in zip(plan.groups, relayed):
            turns = self._turns.get(g.queue)
            if turns is not None:
                turns.credit(g.account, n, self.weight(g.account))
        if sum(relayed) >= plan.batch:
            return True
        full = [n >= g.limit for g, n in zip(plan.groups, read)]
        return any(full) and not all(full)
