"""What every request of the admin daemon works with, built once per app and passed explicitly
(``app.state.ctx``): the settings, the open databases, the desired-state store, the audit log,
the queue."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from ..db import Databases, open_databases
from ..db.audit import AuditStore
from ..db.instances import InstanceStore
from ..fleet.joining import join_fleet
from ..layout import Layout
from ..mq.shared import SharedTransport, held_by_daemon
from .config import AdminSettings



@dataclass
class AdminContext:
    settings: object            # config.Settings
    layout: Layout
    admin: AdminSettings
    dbs: Databases
    store: InstanceStore
    queues: SharedTransport
    registry: object = None     # actions.Registry: actions that declare their own attempt budget
    audit: AuditStore | None = None   # the operators' actions (admin/auditing.py writes them)

    @classmethod
    def open(cls, settings, layout: Layout, admin: AdminSettings, *,
             queues: SharedTransport | None = None) -> "AdminContext":
        """Open the databases (schemas ensured), seed the desired state on an install's first start."""
        dbs = open_databases(settings.worker, layout)
        try:
            store = InstanceStore(dbs.provisioning)
            store.ensure_seeded(settings)
            join_fleet(settings, dbs)
        except BaseException:
            dbs.close()
            raise
        from ..actions import default_registry

        # also the status figures' health check's: renewed now and then, closed when left idle
        queues = queues or held_by_daemon(settings, layout, "admin")
        return cls(settings, layout, admin, dbs, store, queues, default_registry(), AuditStore(dbs.provisioning))

    def submit_settings(self, fresh: bool = False):
        """The settings ``submit`` validates against, with the worker types of the desired state:
        a job may go to any queue an instance consumes (a disabled one's wait for it).

        Read through the databases' one reader of the desired state (``db/desired.py``), at
        most once a second unless ``fresh``: a submit refused against the cached copy is tried
        again with a fresh one (``submit_job``), so a queue added a moment ago is never refused;
        one removed a moment ago may take a job for up to that long, which then waits for a
        consumer as a disabled instance's jobs do.
        """
        return self.dbs.desired.get(fresh=fresh).submit_settings(self.settings)

    def watched_queues(self) -> list[str]:
        """Every queue worth a depth: every queue of the desired state (declared or consumed)."""
        return list(self.dbs.desired.queues(self.settings.worker.all_queues))

    def close(self) -> None:
        self.queues.close()
        self.dbs.close()


def ctx_of(request: Request) -> AdminContext:
    return request.app.state.ctx
