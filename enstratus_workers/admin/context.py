"""What every request of the admin daemon works with, built once per app and passed explicitly
(``app.state.ctx``): the settings, the open databases, the desired-state store, the queue."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field, replace

from fastapi import Request

from ..db import Databases, open_databases
from ..db.instances import InstanceStore
from ..layout import Layout
from .config import AdminSettings
from .transport import SharedTransport


SUBMIT_SETTINGS_TTL_S = 1.0


@dataclass
class AdminContext:
    settings: object            # config.Settings
    layout: Layout
    admin: AdminSettings
    dbs: Databases
    store: InstanceStore
    queues: SharedTransport
    registry: object = None     # actions.Registry: actions that declare their own attempt budget
    # submit_settings() as last read, and when (monotonic): a submit reads the desired state at
    # most once a second instead of once per request
    _submit_cache: tuple | None = field(default=None, repr=False)
    _submit_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def open(cls, settings, layout: Layout, admin: AdminSettings, *,
             queues: SharedTransport | None = None) -> "AdminContext":
        """Open the databases (schemas ensured), seed the desired state on an install's first start."""
        dbs = open_databases(settings.worker, layout)
        try:
            store = InstanceStore(dbs.provisioning)
            store.ensure_seeded(settings)
        except BaseException:
            dbs.close()
            raise
        from ..actions import default_registry

        return cls(settings, layout, admin, dbs, store, queues or SharedTransport(settings, layout),
                   default_registry())

    def submit_settings(self, fresh: bool = False):
        """The settings ``submit`` validates against, with the worker types of the desired state:
        a job may go to any queue an instance consumes (a disabled one's wait for it).

        Read at most once per ``SUBMIT_SETTINGS_TTL_S`` unless ``fresh``: a submit refused
        against the cached copy is tried again with a fresh one (``submit_job``), so a queue
        added a moment ago is never refused; one removed a moment ago may take a job for up to
        that long, which then waits for a consumer as a disabled instance's jobs do.
        """
        cached = self._submit_cache
        if not fresh and cached is not None and time.monotonic() - cached[0] < SUBMIT_SETTINGS_TTL_S:
            return cached[1]
        with self._submit_lock:
            types = tuple(i.worker_type() for i in self.store.list())
            worker = replace(self.settings.worker, types=types or self.settings.worker.types)
            settings = replace(self.settings, worker=worker)
            self._submit_cache = (time.monotonic(), settings)
        return settings

    def watched_queues(self) -> list[str]:
        """Every queue worth a depth: declared ones, and the configured ones for a fleet whose
        subscribers still read worker.properties."""
        names = [q.name for q in self.store.queues()]
        return names + [q for q in self.settings.worker.all_queues if q not in names]

    def close(self) -> None:
        self.queues.close()
        self.dbs.close()


def ctx_of(request: Request) -> AdminContext:
    return request.app.state.ctx
