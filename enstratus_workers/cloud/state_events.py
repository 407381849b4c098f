"""Every change of a server's state also becomes an analytics event.

The cloud actions write server objects through the persistence layer (``servers.update_server``:
read, change, compare-and-swap). This store wraps that layer for the actions: it remembers the
state it last read of each server, and when a write of the ``server`` bucket lands with another
state, it records ``old -> new`` in the analytics DB with the job that did it (told by
:class:`StateEventHook`, one of the worker's hooks around each action). An analytics failure is
logged and never fails the action: the persistence layer holds the truth.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Callable

from ..actions.hooks import Hook
from ..clock import now_ms
from ..persist.base import Store, StoredObject

if TYPE_CHECKING:
    from ..db.analytics import EventStore

log = logging.getLogger(__name__)

SERVER_BUCKET = "server"


class StateEventStore(Store):
    name = "state-events"

    def __init__(self, inner: Store, events: Callable[[], EventStore]):
        # ``events`` gives the analytics EventStore: a worker makes it on the first state
        # change (``runtime/on_first_use.py``), so a worker that writes no server loads no
        # SQLAlchemy
        self.inner, self.events = inner, events
        self.job_id: int | None = None      # the job whose action writes now (StateEventHook)
        self.action: str | None = None
        self._seen: dict[str, str | None] = {}

    def forget_seen(self) -> None:
        self._seen.clear()

    def _get(self, bucket, key) -> StoredObject:
        obj = self.inner.get(bucket, key)
        if bucket == SERVER_BUCKET:
            self._seen[key] = _state(obj.data)
        return obj

    def _put(self, bucket, key, data, text, schema, indexes, expected) -> StoredObject:
        stored = self.inner.put(bucket, key, data, indexes, expected=expected, schema=schema)
        if bucket == SERVER_BUCKET:
            old, new = self._seen.get(key), _state(data)
            self._seen[key] = new
            if new is not None and new != old:
                self._record(key, data, old, new)
        return stored

    def _record(self, server_id, data, old, new) -> None:
        # imported here, not at the top: the db package loads SQLAlchemy, which a worker process
        # should not carry until an action writes a server (an idle worker stays small)
        from ..db.analytics import ServerEvent

        try:
            self.events().record_server_event(ServerEvent(
                server_id=server_id, account=(data or {}).get("account"), old_state=old, new_state=new,
                job_id=self.job_id, action=self.action, event_timestamp=now_ms()))
        except Exception as exc:
            log.warning("could not record the state change of server %s (%s -> %s): %s", server_id, old, new, exc)

    def _delete(self, bucket, key, expected) -> None:
        self.inner.delete(bucket, key, expected=expected)
        self._seen.pop(key, None)

    def _list_keys(self, bucket) -> list[str]:
        return self.inner.list_keys(bucket)

    def _query(self, bucket, index, lo, hi) -> list[str]:
        return self.inner.query_range(bucket, index, lo, hi)

    def ping(self) -> None:
        self.inner.ping()

    def close(self) -> None:
        self.inner.close()


class StateEventHook(Hook):
    """Tells the store which job's action is writing, for the length of each attempt."""

    def __init__(self, store: StateEventStore):
        self.store = store

    def before_action(self, task, context) -> None:
        self.store.job_id, self.store.action = task.job_id, task.action

    def after_action(self, task, context, outcome) -> None:
        self.store.job_id = self.store.action = None
        # the states read by this attempt: stale for the next (another worker may write the
        # server meanwhile), and kept they would grow with every server a worker ever saw
        self.store.forget_seen()


def _state(data) -> str | None:
    return data.get("state") if isinstance(data, dict) else None

