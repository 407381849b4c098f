"""The worker process: takes tasks from its subscriber over a local socket and runs them.

Started by the subscriber (``python -m enstratus_workers.daemons.worker run --name default.1
--type default --subscriber NAME``) or by an operator with ``services/worker/bin/worker start``
to add a process to a running subscriber. It exits when its subscriber goes away, so a dead
subscriber never leaves orphans working on actions nobody will record.

It is handed ``jobs.values.Task`` frames and answers each with the ``Outcome`` it built; what
every attempt needs besides its action (the state events' job, the count of tasks run) is a hook
around it (``actions/hooks.py``), in the one chain ``_hooks`` builds. A cancel reaches the
running action through its context (``worker_inbox.py``: a frame, and SIGUSR1 to look at it).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from multiprocessing.connection import Client

from enstratus_workers.daemons.subscriber import worker_socket
from enstratus_workers.runtime import runner
from enstratus_workers.runtime.on_first_use import OnFirstUse
from enstratus_workers.runtime.service import Service

from ..actions import default_registry
from ..actions.executor import execute
from ..actions.hooks import Hook, Hooks
from ..jobs import pathtrace
from ..jobs.values import Task
from .worker_inbox import Inbox

log = logging.getLogger(__name__)

RESULT_FLUSH_S = 0.005  # results wait at most this long for company before being sent back


class TaskCount(Hook):
    """Counts the attempts this process ran (worker.max_tasks_per_child)."""

    def __init__(self):
        self.done = 0

    def after_action(self, task, context, outcome) -> None:
        self.done += 1


class WorkerProcess(Service):
    daemon = "worker"

    def __init__(self, settings, layout, name: str, worker_type: str, subscriber: str):
        self.settings, self.layout = settings, layout
        self.name = name                       # e.g. "default.1"
        self.worker_type = worker_type
        self.subscriber = subscriber
        self.display_name = f"{worker_type}@{settings.worker.host_name}.{name.rsplit('.', 1)[-1]}"
        self._stop = threading.Event()
        self.count = TaskCount()

    @property
    def tasks_done(self) -> int:
        return self.count.done

    def request_stop(self, cold: bool = False) -> None:
        self._stop.set()

    def _hooks(self) -> Hooks:
        """The hooks around every action, in the order their ``before_action`` runs."""
        from ..cloud.state_events import StateEventHook

        return Hooks([self.count, StateEventHook(self.services["persistence"])])

    def _services(self) -> dict:
        """What actions get in their context: settings, the KM client, the persistence layer,
        the cloud API limits.

        The KM client opens a connection per request, so building it costs nothing and a KM
        that is down only fails the actions that need a credential; the limits connect to the
        provisioning DB on the first cloud call, the persistence backends are opened on their
        first use and the analytics engine on the first server state change
        (``_analytics_events``): an idle worker loads no SQLAlchemy.
        """
        from ..cloud.limiter import CloudLimiter
        from ..cloud.state_events import StateEventStore
        from ..km.client import KMClient
        from ..persist import open_store

        analytics_url = self.settings.worker.analytics_url.reveal()
        self._analytics = OnFirstUse(lambda: _analytics_events(analytics_url, self.layout))
        provisioning_url = self.settings.worker.provisioning_url.reveal()
        persistence = open_store(self.settings.persistence, self.layout, on_first_use=True)
        services = {"settings": self.settings,
                    "persistence": StateEventStore(persistence, self._analytics.get),
                    "cloud_limits": CloudLimiter(self.settings.cloud,
                                                 lambda: _cloud_rates(provisioning_url, self.layout))}
        if self.settings.provisioning.encryption_key:
            services["km"] = KMClient(self.settings.km_client, self.settings.provisioning.encryption_key)
        return services

    def run(self, ready) -> None:
        registry = default_registry()
        pathtrace.from_environment("worker")
        self.services = self._services()
        address = worker_socket.address(self.layout, self.subscriber)
        authkey = worker_socket.authkey_path(self.layout, self.subscriber).read_bytes()
        conn = Client(address, family="AF_UNIX", authkey=authkey)
        inbox = Inbox(conn)
        # before the hello: the subscriber signals only a worker it knows (SIGUSR1 would kill us)
        signal.signal(signal.SIGUSR1, inbox.on_signal)
        try:
            conn.send_bytes(worker_socket.pack({"t": "hello", "name": self.name, "type": self.worker_type,
                                           "pid": os.getpid(), "display": self.display_name}))
            ready()
            log.info("worker %s connected to subscriber %s; actions: %s",
                     self.display_name, self.subscriber, ", ".join(registry.names()))
            self._serve(conn, inbox, registry)
        finally:
            conn.close()
            for service in ("persistence", "km", "cloud_limits"):
                if service in self.services:
                    self.services[service].close()
            self._analytics.drop(lambda events: events.engine.dispose())

    def _serve(self, conn, inbox: Inbox, registry) -> None:
        limits = self.settings.subscriber   # its processes' recycling limits
        hooks = self._hooks()
        while not self._stop.is_set():
            try:
                frame = inbox.next(0.5)
                if frame is None:
                    continue
            except (EOFError, OSError):
                log.info("subscriber went away; exiting")
                return
            if frame["t"] == "stop":
                log.info("asked to stop")
                return
            if frame["t"] != "run":
                log.warning("ignoring unknown frame %r", frame.get("t"))
                continue
            done, last_send = [], time.monotonic()
            tasks = [Task.from_frame(t) for t in frame["a"]]
            for i, task in enumerate(tasks):
                cancelled = _watch(inbox, task.key)
                pathtrace.stamp("worker.start", (task.job_id,))
                done.append(execute(registry, task, self.display_name, self.services, hooks, cancelled).to_frame())
                pathtrace.stamp("worker.end", (task.job_id,))
                inbox.done(task.key)
                more = i + 1 < len(tasks)
                if not more or time.monotonic() - last_send >= RESULT_FLUSH_S:
                    conn.send_bytes(worker_socket.pack({"t": "done", "r": done}))
                    done, last_send = [], time.monotonic()
                reason = self._retire_reason(limits)
                if reason:
                    # Everything after this task stays unstarted: the subscriber re-dispatches it.
                    if done:
                        conn.send_bytes(worker_socket.pack({"t": "done", "r": done}))
                    conn.send_bytes(worker_socket.pack({"t": "bye", "reason": reason}))
                    log.info("retiring: %s", reason)
                    return
                if self._stop.is_set() and more:
                    conn.send_bytes(worker_socket.pack({"t": "bye", "reason": "stopping"}))
                    return

    def _retire_reason(self, limits) -> str | None:
        if limits.max_tasks_per_child and self.tasks_done >= limits.max_tasks_per_child:
            return f"ran {self.tasks_done} actions (worker.max_tasks_per_child)"
        if limits.max_memory_mb:
            rss_mb = _rss_mb()
            if rss_mb > limits.max_memory_mb:
                return f"memory {rss_mb:.0f} MiB above worker.max_memory_mb"
        return None


def _analytics_events(analytics_url: str, layout):
    """The analytics DB's ``EventStore`` for the server state changes, made on the first one.

    Only cloud actions change a server's state. Making the engine at start would load
    SQLAlchemy, and PyMySQL with cryptography for a MySQL URL, into every worker process, most
    of which never run a cloud action: that was over a third of an idle worker's memory.
    """
    from ..db.analytics import EventStore
    from ..db.engine import make_engine

    return EventStore(make_engine(analytics_url, layout))


def _cloud_rates(provisioning_url: str, layout):
    """The cloud API limits' store, made by the limiter on the first cloud call (SQLAlchemy is
    imported only then, for the reason ``_analytics_events`` gives)."""
    from ..db.cloud_rates import CloudRateStore
    from ..db.engine import make_engine

    return CloudRateStore(make_engine(provisioning_url, layout, create_database=False))


def _watch(inbox: Inbox, key: tuple[int, int]):
    """The action context's ``cancelled()`` for the attempt ``key``."""
    return lambda: inbox.cancelled(key)


def _rss_mb() -> float:
    """Current resident set size (not the peak: a worker that freed its memory may stay)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def add_arguments(parser) -> None:
    parser.add_argument("--type", dest="worker_type", default="default", help="worker type")
    parser.add_argument("--subscriber", default=None,
                        help="name of the local subscriber to work for (default: this host's)")


def build(settings, layout, name, options) -> WorkerProcess:
    subscriber = options.subscriber or settings.worker.host_name
    return WorkerProcess(settings, layout, name, options.worker_type, subscriber)


def main(argv=None) -> int:
    return runner.main("worker", build, argv, add_arguments=add_arguments)


if __name__ == "__main__":
    # Run under the module's real name, so its loggers are not called "__main__".
    from enstratus_workers.daemons.worker import main as _main

    raise SystemExit(_main())
