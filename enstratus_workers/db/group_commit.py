"""Group commit: concurrent one-at-a-time writes share one transaction.

A process that submits one job per call from many threads (the admin API's request threads,
platform code using ``submit()``) would otherwise pay one transaction, one commit and one fsync
per job. Here the first caller becomes the leader and writes at once, alone, so a lone caller
waits for nothing; callers that arrive while it writes queue up, and the next leader (the first
of them to wake) writes them all in one transaction. The group grows with the load, not with a
timer, which is the classic group commit of database logs.

One bad item never fails the others: when a group's write raises, each of its items is written
again alone, and only the items that fail alone see an exception. Unless ``retry_alone`` says
the error may have come after the group was stored (a connection lost at its COMMIT): writing
the items again would store them twice, so each caller gets that error instead.
"""

from __future__ import annotations

import threading
from typing import Callable, Generic, Sequence, TypeVar

T = TypeVar("T")
R = TypeVar("R")

_PENDING = object()


class _Slot:
    __slots__ = ("item", "result", "error")

    def __init__(self, item):
        self.item = item
        self.result = _PENDING
        self.error: BaseException | None = None

    @property
    def done(self) -> bool:
        return self.result is not _PENDING or self.error is not None


class GroupCommit(Generic[T, R]):
    """``run(item)`` returns what ``write(items)`` returned for that item (``write`` returns one
    result per item, in order); ``write`` is called with groups of at most ``max_group``."""

    def __init__(self, write: Callable[[Sequence[T]], Sequence[R]], max_group: int = 500,
                 retry_alone: Callable[[BaseException], bool] = lambda exc: True):
        self._write = write
        self._retry_alone = retry_alone
        self.max_group = max_group
        self._cv = threading.Condition()
        self._queue: list[_Slot] = []
        self._busy = False
        self.groups = 0      # transactions written (for tests and the curious)
        self.items = 0

    def run(self, item: T) -> R:
        slot = _Slot(item)
        with self._cv:
            self._queue.append(slot)
            while not slot.done:
                if self._busy:
                    self._cv.wait()
                    continue
                self._busy = True
                group, self._queue = self._queue[:self.max_group], self._queue[self.max_group:]
                self._cv.release()
                try:
                    self._write_group(group)
                finally:
                    self._cv.acquire()
                    self._busy = False
                    self._cv.notify_all()
        if slot.error is not None:
            raise slot.error
        return slot.result

    def _write_group(self, group: list[_Slot]) -> None:
        self.groups += 1
        self.items += len(group)
        for s, (result, error) in zip(group, write_each(self._write, [s.item for s in group], self._retry_alone)):
            s.result, s.error = result, error


def write_each(write: Callable[[Sequence[T]], Sequence[R]], items: Sequence[T],
               retry_alone: Callable[[BaseException], bool] = lambda exc: True
               ) -> list[tuple[R | None, BaseException | None]]:
    """``write(items)`` in one call, and for each item its (result, None) or (None, error).

    When the group's write raises, each item is written again alone (unless ``retry_alone``
    says the group may have been stored), so one bad item fails only itself.
    """
    try:
        results = write(items)
    except BaseException as exc:  # noqa: BLE001 - handed to the callers, one by one
        if len(items) == 1 or not retry_alone(exc):
            return [(None, exc)] * len(items)
        out: list[tuple[R | None, BaseException | None]] = []
        for item in items:           # find the bad one: each alone
            try:
                out.append((write([item])[0], None))
            except BaseException as alone:  # noqa: BLE001 - this caller's own failure
                out.append((None, alone))
        return out
    if len(results) != len(items):
        return [(None, RuntimeError(f"a group write of {len(items)} items returned {len(results)} results"))] * len(items)
    return [(r, None) for r in results]
