"""``worker.properties``: the databases, the worker types, the limits put on actions, the pinger's
guest heartbeats, the publisher's schedules and the cloud API limits."""

from __future__ import annotations

import re
from functools import partial
from pathlib import Path

from enstratus_workers.config import converters as conv
from enstratus_workers.config import account_keys, cloud_keys, limits, schedule_keys
from enstratus_workers.config.problems import did_you_mean, raise_all
from enstratus_workers.config.propfile import Prop, PropFile
from enstratus_workers.config.settings import WorkerSettings, WorkerType
from enstratus_workers.errors import ConfigError
from enstratus_workers.fleet import placement

FILENAME = "worker.properties"


def _single_queue(text: str) -> str:
    queues = conv.queue_names(text)
    if len(queues) > 1:
        raise ValueError("names more than one queue: the default queue is a single queue name")
    return queues[0]


def _ranged(key: str, kind: str = "integer", lo_open: bool = False):
    """The converter of ``key``, bounded as ``limits.RANGES`` has it (one table for every door)."""
    lo, hi = limits.RANGES[key]
    if kind == "integer":
        return partial(conv.integer, lo=lo, hi=hi)
    return partial(conv.number, lo=lo, hi=hi, lo_open=lo_open)


def _prop(key: str, field: str, kind: str = "integer", lo_open: bool = False) -> Prop:
    return Prop(key, field, _ranged(key, kind, lo_open))


PROPS = (
    Prop("host.name", "host_name", conv.host_name),
    Prop("host.tags", "host_tags", conv.host_tags),
    Prop("provisioning.url", "provisioning_url", conv.db_url, secret=True, url=True),
    Prop("analytics.url", "analytics_url", conv.db_url, secret=True, url=True),
    Prop("worker.default_queue", "default_queue", _single_queue),
    _prop("action.time_limit", "time_limit", "number", lo_open=True),
    _prop("action.max_attempts", "max_attempts"),
    _prop("action.cancel_grace", "cancel_grace", "number", lo_open=True),
    _prop("worker.max_tasks_per_child", "max_tasks_per_child"),
    _prop("worker.max_memory_mb", "max_memory_mb"),
    _prop("worker.grace_period", "grace_period", "number"),
    _prop("publisher.poll_interval", "publisher_poll_interval", "number", lo_open=True),
    _prop("publisher.batch", "publisher_batch"),
    _prop("publisher.window", "publisher_window"),
    _prop("subscriber.record_batch", "record_batch"),
    _prop("subscriber.record_interval", "record_interval", "number"),
    _prop("pinger.heartbeat_interval", "heartbeat_interval", "number", lo_open=True),
    _prop("pinger.guest_interval", "guest_interval", "number", lo_open=True),
    _prop("pinger.guest_misses", "guest_misses"),
    _prop("pinger.guest_concurrency", "guest_concurrency"),
    _prop("pinger.guest_timeout", "guest_timeout", "number", lo_open=True),
    _prop("retention.succeeded", "retention_succeeded", "number"),
    _prop("retention.failed", "retention_failed", "number"),
    _prop("retention.dead", "retention_dead", "number"),
    _prop("retention.cancelled", "retention_cancelled", "number"),
    _prop("retention.events", "retention_events", "number"),
    _prop("retention.audit", "retention_audit", "number"),
    Prop(schedule_keys.ACCOUNTS_KEY, "schedule_accounts", schedule_keys.accounts),
    _prop(cloud_keys.DEFAULT_KEY, "cloud_rate", "number", lo_open=True),
    _prop("cloud.max_wait", "cloud_max_wait", "number"),
    _prop("cloud.recover_after", "cloud_recover_after", "number", lo_open=True),
)
TYPES_KEY = "worker.types"
TYPE_KEYS = ("queues", "min", "max", "placement")
_PER_TYPE = re.compile(r"worker\.([^.]+)\.(queues|min|max|placement)")


def _type_defaults() -> dict[str, WorkerType]:
    """Worker types as the dataclass defaults them, so a key left out means the same as no file."""
    return {t.name: t for t in WorkerSettings().types}


def _read_type(f: PropFile, name: str, defaults: dict[str, WorkerType]) -> WorkerType:
    base = defaults.get(name) or WorkerType(name, (name,))
    queues = f.get(f"worker.{name}.queues", conv.queue_names, base.queues)
    low = f.get(f"worker.{name}.min", _ranged("worker.min"), base.min)
    high = f.get(f"worker.{name}.max", _ranged("worker.max"), base.max)
    where = f.get(f"worker.{name}.placement", placement.parse, base.placement)
    return WorkerType(name, queues, low, high, where)


def _known_keys(type_names, f: PropFile) -> set[str]:
    return {p.key for p in PROPS} | {TYPES_KEY} | schedule_keys.known_keys(f) | cloud_keys.known_keys(f) \
        | account_keys.known_keys(f) | {f"worker.{name}.{part}" for name in type_names for part in TYPE_KEYS}


def validate(f: PropFile, settings: WorkerSettings) -> None:
    """The checks that involve more than one key, recorded on ``f``."""
    if "host.name" not in f.entries and not limits.valid_host_name(settings.host_name):
        f.error(f"this system's short host name {settings.host_name!r} cannot name a host here "
                f"({limits.HOST_NAME_RULE}): set host.name", "host.name")
    for t in settings.types:
        if t.min > t.max:
            low, high = f"worker.{t.name}.min", f"worker.{t.name}.max"
            key = low if low in f.entries else high  # point at a line the operator wrote
            f.error(f"{low} ({t.min}) is greater than {high} ({t.max})", key, f.line(key))
    if settings.default_queue not in settings.all_queues:
        f.error(f"default queue {settings.default_queue!r} is not consumed by any worker type "
                f"(their queues: {', '.join(settings.all_queues)})",
                "worker.default_queue", f.line("worker.default_queue"))
    for s in settings.schedules:
        if s.queue is not None and s.queue not in settings.all_queues:
            key = f"schedule.{s.action}.queue"
            f.error(f"queue {s.queue!r} is not consumed by any worker type "
                    f"(their queues: {', '.join(settings.all_queues)})", key, f.line(key))
    if settings.guest_timeout >= settings.guest_interval:
        key = "pinger.guest_timeout" if "pinger.guest_timeout" in f.entries else "pinger.guest_interval"
        f.error(f"pinger.guest_timeout ({settings.guest_timeout:g}) must be less than "
                f"pinger.guest_interval ({settings.guest_interval:g}): a ping would outlast its round",
                key, f.line(key))
    if settings.cloud_max_wait >= settings.time_limit:
        key = "cloud.max_wait" if "cloud.max_wait" in f.entries else "action.time_limit"
        f.error(f"cloud.max_wait ({settings.cloud_max_wait:g}) must be less than action.time_limit "
                f"({settings.time_limit:g}): a wait for a turn would outlast the action", key, f.line(key))


def read_host_name(path: Path) -> str:
    """Only ``host.name`` of the file at ``path`` (the system's short host name if it is not set
    or there is no file): what the runner names a daemon by default, before (or without: status
    and stop) reading the whole configuration. ``ConfigError`` with file, key and line if bad."""
    f = PropFile.read(path)
    text = None if f is None else f.entries.get("host.name")
    if text is None:
        name = WorkerSettings().host_name
        if not limits.valid_host_name(name):
            raise ConfigError(f"this system's short host name {name!r} cannot name a host here "
                              f"({limits.HOST_NAME_RULE}): set host.name", file=path, key="host.name")
        return name
    try:
        return conv.host_name(text.value)
    except ValueError as exc:
        raise ConfigError(str(exc), file=path, key="host.name", line=text.line) from None


def read_worker(path: Path) -> WorkerSettings:
    """The settings in ``path``, the defaults if there is no such file; ConfigError(s) if it is bad."""
    f = PropFile.read(path)
    if f is None:
        read_host_name(path)   # the defaults still need a usable host name
        return WorkerSettings()
    f.check_exposure(PROPS)
    defaults = _type_defaults()
    before = len(f.errors)
    names = f.get(TYPES_KEY, partial(conv.names, what="worker type"), tuple(defaults))
    types_ok = len(f.errors) == before
    types = tuple(_read_type(f, name, defaults) for name in names)
    schedules = schedule_keys.read_schedules(f)
    settings = WorkerSettings(**f.convert(PROPS), types=types, schedules=schedules,
                              cloud_rates=cloud_keys.read_rates(f),
                              account_weights=account_keys.read_weights(f), source=path)
    strays = {key: f"worker type {m.group(1)!r} is not listed in {TYPES_KEY} ({', '.join(names)})"
                   f"{did_you_mean(m.group(1), names)}"
              for key in f.entries if (m := _PER_TYPE.fullmatch(key)) and m.group(1) not in names}
    # with worker.types unreadable, every per-type key would look stray: report the cause only
    f.check_unknown(_known_keys(names, f) | (set() if types_ok else set(strays)), strays)
    if types_ok:
        validate(f, settings)
    f.errors.sort(key=lambda e: e.line or 0)
    raise_all(f.errors)
    return settings
