"""The one immutable, validated settings object every daemon gets at start.

``enstratus_workers.config.load_settings(layout)`` builds it from the five files in
``services/worker/classes/``; everything downstream receives it (or a part of it) explicitly.

``WorkerSettings`` is the typed table of ``worker.properties`` (what ``config check`` validates
and ``describe`` shows). Its knobs are grouped per daemon, derived from it in one place
(``Settings.publisher``, ``.subscriber``, ``.pinger``, and ``.cloud`` for the worker processes'
cloud API limits); each daemon reads its own group, and
``Settings.worker`` for what they all share: the databases, the worker types' queues and the
limits put on every action.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field, fields
from functools import cached_property
from pathlib import Path
from types import MappingProxyType
from typing import ClassVar, Mapping

from enstratus_workers.config.hostlist import Node, parse_nodes
from enstratus_workers.layout import short_hostname


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
    host: str = "127.0.0.1"              # one node, or a cluster's: "a,b:5673,[::1]" (see ``nodes``)
    port: int = 5672                     # the port of a ``host`` entry that names none
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

    @cached_property
    def nodes(self) -> tuple[Node, ...]:
        """The broker nodes ``host`` names, in its order (``config/hostlist.py``)."""
        return parse_nodes([entry.strip() for entry in self.host.split(",")], self.port)


@dataclass(frozen=True)
class WorkerType:
    """One worker type: the queues its processes consume, how many processes it runs on each
    host it runs on, and which hosts those are (``fleet/placement.py``: ``()`` is every host)."""

    name: str
    queues: tuple[str, ...]
    min: int = 1
    max: int = 1
    placement: tuple[str, ...] = ()


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
class CloudRate:
    """A configured request rate of the cloud API limits: for every account of ``provider``
    (``account`` None: ``cloud.rate.<provider>``) or for one account of it
    (``cloud.rate.<provider>.<account>``). Requests per second; fractions allowed."""

    provider: str
    account: str | None
    rate: float


@dataclass(frozen=True)
class WorkerSettings:
    """worker.properties, as the file has it: databases, worker types, the limits put on actions,
    and the publisher's, subscriber's and pinger's knobs (which the daemons read from their
    groups, ``PublisherSettings`` and the others, not from here)."""

    # this host as the fleet knows it: default daemon name, heartbeat rows, worker names, placement
    host_name: str = field(default_factory=short_hostname)
    host_tags: tuple[str, ...] = ()      # host.tags: what placements may name with tag:TAG
    provisioning_url: Secret = Secret("sqlite:///services/worker/data/provisioning.db")
    analytics_url: Secret = Secret("sqlite:///services/worker/data/analytics.db")
    types: tuple[WorkerType, ...] = (WorkerType("default", ("default",), 2, 2),)
    default_queue: str = "default"       # queue of a job submitted without --queue
    time_limit: float = 300.0            # seconds an action may run before its worker is killed
    max_attempts: int = 3
    cancel_grace: float = 10.0           # seconds a cancelled action has to stop before it is killed
    max_tasks_per_child: int = 0         # 0: never recycle on count
    max_memory_mb: int = 0               # 0: never recycle on memory
    grace_period: float = 30.0           # seconds a stop waits for running actions
    publisher_poll_interval: float = 1.0   # safety net: seconds between outbox polls without a wake-up
    publisher_batch: int = 500           # pending jobs relayed per outbox transaction
    # first attempts relayed and not yet started, at most, per broker queue: the backlog waits
    # in the outbox, where the relay takes turns by account (jobs/fairshare.py)
    publisher_window: int = 300
    account_weights: tuple[tuple[str, int], ...] = ()   # account.<name>.weight (others: 1)
    record_batch: int = 500              # outcomes written per database transaction
    record_interval: float = 0.0         # longest an outcome waits for its batch, seconds (0: at once)
    heartbeat_interval: float = 10.0     # pinger: seconds between checks; heartbeats expire at 3x
    guest_interval: float = 10.0         # pinger: seconds between heartbeat rounds over the guests
    guest_misses: int = 3                # missed beats in a row before a guest is unreachable
    guest_concurrency: int = 500         # guest agents pinged at once
    guest_timeout: float = 2.0           # seconds a guest agent has to answer a ping
    # pinger: seconds finished jobs, events and audit rows are kept (0: forever); db/retention.py
    retention_succeeded: float = 7 * 86400.0
    retention_failed: float = 30 * 86400.0
    retention_dead: float = 90 * 86400.0
    retention_cancelled: float = 30 * 86400.0
    retention_events: float = 30 * 86400.0
    retention_audit: float = 365 * 86400.0   # the operators' actions (db/audit.py)
    # publisher: periodic actions per account (server.sync only by default: the built-in sync)
    schedules: tuple[Schedule, ...] = (Schedule("server.sync", 60.0),)
    schedule_accounts: tuple[str, ...] = ()  # accounts scheduled besides those owning servers
    # cloud API limits, per (provider, account), shared by the fleet (cloud/limiter.py)
    cloud_rate: float = 10.0             # requests/s of a key no cloud.rate.* names
    cloud_rates: tuple[CloudRate, ...] = ()   # cloud.rate.<provider>[.<account>]
    cloud_max_wait: float = 5.0          # longest a call waits for its turn; beyond: the job is deferred
    cloud_recover_after: float = 10.0    # seconds without a throttle between steps back up
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


class _DaemonGroup:
    """A daemon's part of ``WorkerSettings``: each field is the table's field of the same name,
    or the one ``_FROM`` names, so every group is derived from the table the same way."""

    _FROM: ClassVar[Mapping[str, str]] = MappingProxyType({})

    @classmethod
    def of(cls, w: WorkerSettings):
        return cls(**{f.name: getattr(w, cls._FROM.get(f.name, f.name)) for f in fields(cls)})


@dataclass(frozen=True)
class PublisherSettings(_DaemonGroup):
    """The publisher's part of worker.properties: the outbox relay (its batch, window and the
    accounts' weights) and the schedules."""

    _FROM = MappingProxyType({"poll_interval": "publisher_poll_interval", "batch": "publisher_batch",
                              "window": "publisher_window"})

    poll_interval: float                 # publisher.poll_interval
    batch: int                           # publisher.batch
    schedules: tuple[Schedule, ...]      # schedule.<action>.*
    schedule_accounts: tuple[str, ...]   # schedule.accounts
    # the relay's window and turns (jobs/fairshare.py); defaulted so the group can be built by position
    window: int = WorkerSettings.publisher_window                                # publisher.window
    account_weights: tuple[tuple[str, int], ...] = WorkerSettings.account_weights   # account.<name>.weight


@dataclass(frozen=True)
class SubscriberSettings(_DaemonGroup):
    """The subscriber's part of worker.properties: its worker types and their processes'
    recycling, the outcome recorder, and how long a stop waits for running actions."""

    types: tuple[WorkerType, ...]        # worker.types, worker.<type>.*
    record_batch: int                    # subscriber.record_batch
    record_interval: float               # subscriber.record_interval
    grace_period: float                  # worker.grace_period
    max_tasks_per_child: int             # worker.max_tasks_per_child
    max_memory_mb: int                   # worker.max_memory_mb
    cancel_grace: float = WorkerSettings.cancel_grace   # action.cancel_grace

    @property
    def all_queues(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(q for t in self.types for q in t.queues))


@dataclass(frozen=True)
class PingerSettings(_DaemonGroup):
    """The pinger's part of worker.properties: its health round, the guests' heartbeats, and
    retention (the pinger prunes old jobs and events)."""

    heartbeat_interval: float            # pinger.heartbeat_interval
    guest_interval: float                # pinger.guest_interval
    guest_misses: int                    # pinger.guest_misses
    guest_concurrency: int               # pinger.guest_concurrency
    guest_timeout: float                 # pinger.guest_timeout
    # the pinger prunes (db/retention.py); defaulted so the group can be built by position
    retention_succeeded: float = WorkerSettings.retention_succeeded   # retention.succeeded
    retention_failed: float = WorkerSettings.retention_failed         # retention.failed
    retention_dead: float = WorkerSettings.retention_dead             # retention.dead
    retention_cancelled: float = WorkerSettings.retention_cancelled   # retention.cancelled
    retention_events: float = WorkerSettings.retention_events         # retention.events
    retention_audit: float = WorkerSettings.retention_audit           # retention.audit


@dataclass(frozen=True)
class CloudLimitSettings(_DaemonGroup):
    """The cloud API limits of worker.properties (``cloud.*``), read by the worker processes
    (``cloud/limiter.py``) and by the metrics (the configured rate beside the current one)."""

    _FROM = MappingProxyType({"rate": "cloud_rate", "rates": "cloud_rates", "max_wait": "cloud_max_wait",
                              "recover_after": "cloud_recover_after"})

    rate: float = WorkerSettings.cloud_rate                     # cloud.rate
    rates: tuple[CloudRate, ...] = ()                           # cloud.rate.<provider>[.<account>]
    max_wait: float = WorkerSettings.cloud_max_wait             # cloud.max_wait
    recover_after: float = WorkerSettings.cloud_recover_after   # cloud.recover_after

    def rate_for(self, provider: str, account: str) -> float:
        """The configured rate of (provider, account): its own key, else its provider's, else
        ``cloud.rate``."""
        per_provider = self.rate
        for r in self.rates:
            if r.provider == provider and r.account == account:
                return r.rate
            if r.provider == provider and r.account is None:
                per_provider = r.rate
        return per_provider


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
    ca_file: Path | None = None       # ssl = true: the CA the KM's certificate must come from
    cert_file: Path | None = None     # ssl = true: this worker host's client certificate
    key_file: Path | None = None      # ssl = true: its private key (mode 0600)
    server_name: str = ""             # the name the KM's certificate must carry; "" = host
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

    # The per-daemon groups: derived from ``worker`` once (not fields, so ``describe`` and
    # ``config check --json`` show the file's table unchanged; ``replace(settings, worker=...)``
    # makes a new Settings whose groups follow the new table).
    @cached_property
    def publisher(self) -> PublisherSettings:
        return PublisherSettings.of(self.worker)

    @cached_property
    def subscriber(self) -> SubscriberSettings:
        return SubscriberSettings.of(self.worker)

    @cached_property
    def pinger(self) -> PingerSettings:
        return PingerSettings.of(self.worker)

    @cached_property
    def cloud(self) -> CloudLimitSettings:
        return CloudLimitSettings.of(self.worker)
