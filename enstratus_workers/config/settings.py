"""The one immutable, validated settings object every daemon gets at start.

``enstratus_workers.config.load_settings(layout)`` builds it from the five files in
``services/worker/classes/``; everything downstream receives it (or a part of it) explicitly.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Mapping


class Secret:
    """A value that must never be logged: ``str()``/``repr()`` show ``'***'``; ``reveal()`` gives it."""

    __slots__ = ("_value",)

    def __init__(self, value):
        self._value = value

    def reveal(self):
        return self._value

    def __bool__(self):
        return bool(self._value)

    def __eq__(self, other):
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self):
        return hash(self._value)

    def __repr__(self):
        return "Secret('***')"

    __str__ = lambda self: "***"  # noqa: E731


@dataclass(frozen=True)
class MQSettings:
    """mq.cfg: which transport carries actions, and how to reach RabbitMQ."""

    transport: str = "embedded"          # "embedded" (SQLite file queue) | "amqp"
    host: str = "127.0.0.1"
    port: int = 5672
    user: str = "guest"
    password: Secret = Secret("guest")
    vhost: str = "/"
    ssl: bool = False
    heartbeat: int = 60                  # AMQP heartbeat, seconds
    prefetch: int = 500                  # unacked deliveries per subscriber (acks trail by a DB write)
    confirm_window: int = 1000           # publisher confirms in flight at once
    exchange: str = "enstratus.workers"  # direct exchange actions are published to
    queue_prefix: str = "enstratus."     # broker queue name = prefix + logical queue name
    queue_type: str = "classic"          # "classic" | "quorum"
    embedded_path: Path = Path("services/worker/data/queue.sqlite")  # resolved against the home
    source: Path | None = None           # the file these came from


@dataclass(frozen=True)
class WorkerType:
    """One worker type: the queues its processes consume and how many processes it runs."""

    name: str
    queues: tuple[str, ...]
    min: int = 1
    max: int = 1


@dataclass(frozen=True)
class Schedule:
    """A periodic action the publisher submits once per ``interval`` seconds for every account.

    The job's arguments are ``arguments`` (a JSON object, canonical text so the settings stay
    hashable) with ``"account"`` set to each account's id; ``queue`` None means the default queue.
    """

    action: str
    interval: float
    queue: str | None = None
    arguments: str = "{}"


@dataclass(frozen=True)
class WorkerSettings:
    """worker.properties: databases, worker types and the limits put on actions."""

    provisioning_url: Secret = Secret("sqlite:///services/worker/data/provisioning.db")
    analytics_url: Secret = Secret("sqlite:///services/worker/data/analytics.db")
    types: tuple[WorkerType, ...] = (WorkerType("default", ("default",), 2, 2),)
    default_queue: str = "default"       # queue of a job submitted without --queue
    time_limit: float = 300.0            # seconds an action may run before its worker is killed
    max_attempts: int = 3
    max_tasks_per_child: int = 0         # 0: never recycle on count
    max_memory_mb: int = 0               # 0: never recycle on memory
    grace_period: float = 30.0           # seconds a stop waits for running actions
    publisher_poll_interval: float = 0.05  # seconds between outbox polls when idle
    publisher_batch: int = 500           # pending jobs relayed per outbox transaction
    record_batch: int = 500              # outcomes written per database transaction
    record_interval: float = 0.02        # longest an outcome waits for its batch, seconds
    heartbeat_interval: float = 10.0     # pinger: seconds between checks; heartbeats expire at 3x
    guest_interval: float = 10.0         # pinger: seconds between heartbeat rounds over the guests
    guest_misses: int = 3                # missed beats in a row before a guest is unreachable
    guest_concurrency: int = 500         # guest agents pinged at once
    guest_timeout: float = 2.0           # seconds a guest agent has to answer a ping
    # publisher: periodic actions per account (server.sync only by default: the built-in sync)
    schedules: tuple[Schedule, ...] = (Schedule("server.sync", 60.0),)
    schedule_accounts: tuple[str, ...] = ()  # accounts scheduled besides those owning servers
    source: Path | None = None

    def type_for_queue(self, queue: str) -> WorkerType | None:
        for t in self.types:
            if queue in t.queues:
                return t
        return None

    @property
    def all_queues(self) -> tuple[str, ...]:
        seen: list[str] = []
        for t in self.types:
            seen.extend(q for q in t.queues if q not in seen)
        return tuple(seen)


@dataclass(frozen=True)
class PersistenceSettings:
    """dasein-persistence.properties: which store backs each bucket of platform objects."""

    default_backend: str = "sqlite"      # "sqlite" | "relational" | "riak"
    bucket_backends: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    riak_host: str = "127.0.0.1"
    riak_port: int = 8098
    riak_ssl: bool = False
    sqlite_path: Path = Path("services/worker/data/persistence.db")
    relational_url: Secret = Secret("")
    source: Path | None = None

    def backend_for(self, bucket: str) -> str:
        return self.bucket_backends.get(bucket, self.default_backend)


@dataclass(frozen=True)
class KMClientSettings:
    """enstratus-km-client.cfg: where the key-management service listens."""

    host: str = "127.0.0.1"
    port: int = 2013
    timeout: float = 5.0
    retries: int = 3
    ssl: bool = False
    source: Path | None = None


@dataclass(frozen=True)
class ProvisioningSettings:
    """enstratus-provisioning.cfg: the AES-256 key for KM traffic and the workers' source CIDRs."""

    encryption_key: Secret = Secret(b"")  # 32 raw bytes once loaded
    source_cidrs: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    source: Path | None = None


@dataclass(frozen=True)
class Settings:
    home: Path
    mq: MQSettings
    worker: WorkerSettings
    persistence: PersistenceSettings
    km_client: KMClientSettings
    provisioning: ProvisioningSettings
