"""A value made the first time it is asked for: what a worker process opens only when an action
needs it (an idle worker loads no SQLAlchemy, PyMySQL or cryptography: ``daemons/worker.py``)."""

from __future__ import annotations

import threading
from typing import Callable, Generic, TypeVar

T = TypeVar("T")


class OnFirstUse(Generic[T]):
    """``make()``'s value, made once, by the first caller of ``get`` (under a lock: actions may
    run in threads); ``drop`` closes it if it was made and forgets it."""

    def __init__(self, make: Callable[[], T]):
        self._make = make
        self._value: T | None = None
        self._lock = threading.Lock()

    def get(self) -> T:
        with self._lock:
            if self._value is None:
                self._value = self._make()
            return self._value

    def made(self) -> T | None:
        """The value if it was made, else None (nothing is made)."""
        return self._value

    def drop(self, close: Callable[[T], None]) -> None:
        with self._lock:
            value, self._value = self._value, None
        if value is not None:
            close(value)
