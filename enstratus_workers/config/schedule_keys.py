"""The ``schedule.*`` keys of ``worker.properties``: which periodic actions the publisher submits.

One schedule per action, named by the key itself so an operator writes what they mean::

    schedule.server.sync.interval = 60          seconds; 0 turns a default schedule off
    schedule.server.sync.queue = sync           optional; default: worker.default_queue
    schedule.server.sync.arguments = {"x": 1}   optional JSON object; "account" is added per job
    schedule.accounts = 42, 43                  accounts scheduled besides those owning servers

The action's name may hold dots, so a key is split at its last part (``interval``, ``queue``,
``arguments``), not at its first dot.
"""

from __future__ import annotations

import json
import re

from enstratus_workers import strictjson
from enstratus_workers.config import converters as conv
from enstratus_workers.config import limits
from enstratus_workers.config.propfile import PropFile
from enstratus_workers.config.settings import Schedule, WorkerSettings

ACCOUNTS_KEY = "schedule.accounts"
PER_SCHEDULE = re.compile(r"schedule\.(.+)\.(interval|queue|arguments)")
PARTS = ("interval", "queue", "arguments")


def accounts(text: str) -> tuple[str, ...]:
    """``schedule.accounts``: account names as every door takes them (``limits.ACCOUNT_RULE``:
    the servers' ``account_bin`` index can hold them, and a job's account column too)."""
    found: list[str] = []
    for item in conv.comma_list(text):
        if not limits.valid_account(item):
            raise ValueError(f"{item!r} is not a usable account id ({limits.ACCOUNT_RULE})")
        if item not in found:
            found.append(item)
    return tuple(found)


def interval(text: str) -> float:
    """Seconds between a schedule's jobs: 0 turns the schedule off; below 1 s is a typo."""
    value = conv.number(text, *limits.RANGES["schedule.interval"])
    if 0 < value < 1:
        raise ValueError(f"{value:g} is out of range: must be 0 (off) or at least 1 second")
    return value


def arguments(text: str) -> str:
    """Further arguments of a scheduled job: a JSON object, kept as canonical text."""
    word = text.strip()
    if not word:
        return "{}"
    try:
        value = strictjson.loads(word)
    except ValueError as exc:
        raise ValueError(f"is not strict JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ValueError('must be a JSON object, e.g. {"full": true}')
    if "account" in value:
        raise ValueError("must not set 'account': every job gets the account it is for")
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _queue(text: str) -> str:
    queues = conv.queue_names(text)
    if len(queues) > 1:
        raise ValueError("names more than one queue: a schedule submits to one queue")
    return queues[0]


def read_schedules(f: PropFile) -> tuple[Schedule, ...]:
    """The default schedules, changed or turned off (interval 0) by the file, plus the file's own.

    A schedule the defaults do not know exists once the file gives its interval. Problems are
    recorded on ``f``; the schedule in question is then left out.
    """
    defaults = {s.action: s for s in WorkerSettings().schedules}
    written: dict[str, list[str]] = {action: [] for action in defaults}
    for key in f.entries:
        if m := PER_SCHEDULE.fullmatch(key):
            written.setdefault(m.group(1), []).append(key)
    schedules = []
    for action, keys in written.items():
        base = defaults.get(action) or Schedule(action, 0.0)
        if not limits.ACTION_NAME.fullmatch(action):
            f.error(f"{action!r} is not a valid action name ({limits.ACTION_RULE})",
                    keys[0], f.line(keys[0]))
            continue
        interval_key = f"schedule.{action}.interval"
        if action not in defaults and interval_key not in f.entries:
            f.error(f"schedule {action!r} has no {interval_key}", keys[0], f.line(keys[0]))
            continue
        schedule = Schedule(action, f.get(interval_key, interval, base.interval),
                            f.get(f"schedule.{action}.queue", _queue, base.queue),
                            f.get(f"schedule.{action}.arguments", arguments, base.arguments))
        if schedule.interval > 0:
            schedules.append(schedule)
    return tuple(schedules)


def known_keys(f: PropFile) -> set[str]:
    """Every schedule key the file may hold: the defaults' (for "did you mean") and its own."""
    keys = {f"schedule.{s.action}.{part}" for s in WorkerSettings().schedules for part in PARTS}
    return keys | {key for key in f.entries if PER_SCHEDULE.fullmatch(key)}
