"""The one table of names and ranges: what the config files, ``submit`` and the admin API accept.

A value one door accepts and another refuses is a trap (``config check`` passing a
``worker.x.max`` the admin API then refuses to show, a ``max_attempts`` that overflows the job
table's column), so every door checks against the constants here. Each integer range stays
inside its database column (a 32-bit signed ``INTEGER``) and below a documented maximum that
no sane configuration reaches, so a typo (an extra zero, a pasted timestamp) is an error
rather than a thousand forked processes.
"""

from __future__ import annotations

import re

#: width of the name columns (queue, worker type) of the job and desired-state tables
NAME_MAX = 100
#: width of the action column of the job table
ACTION_MAX = 200
#: a daemon instance's name is part of its pid, log and socket file names, and of its heartbeat
DAEMON_NAME_MAX = 200
#: width of the account column of the job table and of the pauses (a KM account may be longer:
#: such an account cannot own jobs)
ACCOUNT_MAX = 100
#: the largest value a 32-bit signed INTEGER column holds
INT32_MAX = 2**31 - 1

#: worker type: letters, digits, '_' and '-', not starting with '-'
TYPE_PATTERN = rf"[A-Za-z0-9_][A-Za-z0-9_-]{{0,{NAME_MAX - 1}}}"
#: queue: a worker type's characters plus '.' and ':'
QUEUE_PATTERN = rf"[A-Za-z0-9_][A-Za-z0-9_.:-]{{0,{NAME_MAX - 1}}}"
#: action: as a queue name, but as long as the action column
ACTION_PATTERN = rf"[A-Za-z0-9_][A-Za-z0-9_.:-]{{0,{ACTION_MAX - 1}}}"
#: daemon instance (``--name``): worker-type-like parts joined by single dots ("default.1",
#: "myhost"); no '/', and no part starts with '.', so a name can never climb out of run/ or log/
DAEMON_NAME_PATTERN = r"[A-Za-z0-9_][A-Za-z0-9_-]*(?:\.[A-Za-z0-9_][A-Za-z0-9_-]*)*"

#: account: what the platform names its tenants by ("42", "acme-corp", "Zürich AG"): any printable
#: characters, none a control character, ',' (lists of accounts: schedule.accounts, Riak's index
#: headers) or '/' (the admin API's /accounts/{account}/... paths), no blank at either end (Riak's
#: index values cannot carry one, and MariaDB's PAD SPACE collations would take "a " for "a").
#: Accounts are identities: "acme", "ACME" and "acmé" are three (db/identity.py).
ACCOUNT_PATTERN = (rf"[^\x00-\x1f\x7f,/\s](?:[^\x00-\x1f\x7f,/]{{0,{ACCOUNT_MAX - 2}}}"
                   rf"[^\x00-\x1f\x7f,/\s])?")

TYPE_NAME = re.compile(TYPE_PATTERN)
QUEUE_NAME = re.compile(QUEUE_PATTERN)
ACTION_NAME = re.compile(ACTION_PATTERN)
DAEMON_NAME = re.compile(DAEMON_NAME_PATTERN)
ACCOUNT_NAME = re.compile(ACCOUNT_PATTERN)

TYPE_RULE = f"letters, digits, '_' and '-', at most {NAME_MAX}"
QUEUE_RULE = f"letters, digits, '_', '-', '.' and ':', at most {NAME_MAX}"
ACTION_RULE = f"letters, digits, '_', '-', '.' and ':', at most {ACTION_MAX}"
ACCOUNT_RULE = (f"1 to {ACCOUNT_MAX} characters, none a control character, ',' or '/', "
                "no blank at either end")
DAEMON_NAME_RULE = (f"letters, digits, '_' and '-', in parts joined by single dots, "
                    f"at most {DAEMON_NAME_MAX}")

#: a host's name (``host.name``) is the default daemon name, so part of pid, log and socket file
#: names, of worker names (``type@host.n``), owner tokens and heartbeat rows: a daemon name's
#: characters (which a queue name may hold too), at most a DNS label's 63
HOST_NAME_MAX = 63
HOST_NAME_RULE = (f"letters, digits, '_' and '-', in parts joined by single dots, "
                  f"at most {HOST_NAME_MAX}")
#: a host tag (``host.tags``, ``tag:T`` in a placement): a worker type's characters, at most 63
TAG_MAX = 63
TAG_PATTERN = rf"[A-Za-z0-9_][A-Za-z0-9_-]{{0,{TAG_MAX - 1}}}"
TAG_NAME = re.compile(TAG_PATTERN)
TAG_RULE = f"letters, digits, '_' and '-', at most {TAG_MAX}"
#: most tags one host may carry, and most targets (hosts and tags) one placement may name
MAX_TAGS = 50
MAX_PLACEMENT = 50

#: most worker processes one worker type may ask for (worker.<type>.max, the admin API)
MAX_PROCESSES = 256
#: most attempts a job may be given (action.max_attempts, submit --max-attempts, the admin API)
MAX_ATTEMPTS = 100


def valid_daemon_name(name: str) -> bool:
    return len(name) <= DAEMON_NAME_MAX and DAEMON_NAME.fullmatch(name) is not None


def valid_host_name(name: str) -> bool:
    return isinstance(name, str) and len(name) <= HOST_NAME_MAX and DAEMON_NAME.fullmatch(name) is not None


def valid_account(name) -> bool:
    """An account name every door accepts (``ACCOUNT_RULE``), storable as UTF-8."""
    if not isinstance(name, str) or ACCOUNT_NAME.fullmatch(name) is None:
        return False
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:   # a lone surrogate (undecodable bytes on a command line)
        return False
    return True


#: worker.properties: key -> (lowest, highest) accepted; the converters' messages quote them
RANGES: dict[str, tuple[float, float]] = {
    "action.max_attempts": (1, MAX_ATTEMPTS),
    "action.time_limit": (0, 7 * 86400),            # > 0; a week
    "action.cancel_grace": (0, 86400),              # > 0; a day
    "worker.min": (0, MAX_PROCESSES),
    "worker.max": (1, MAX_PROCESSES),
    "worker.max_tasks_per_child": (0, 1_000_000_000),
    "worker.max_memory_mb": (0, 16 * 1024 * 1024),  # 16 TiB
    "worker.grace_period": (0, 86400),
    "publisher.poll_interval": (0, 3600),           # > 0
    "publisher.batch": (1, 100_000),
    "publisher.window": (1, 100_000),               # first attempts relayed, not yet started, per queue
    "account.weight": (1, 1000),                    # turns of an account per turn of a weight-1 one
    "subscriber.record_batch": (1, 100_000),
    "subscriber.record_interval": (0, 60),
    "pinger.heartbeat_interval": (0, 86400),        # > 0
    "pinger.guest_interval": (0, 86400),            # > 0
    "pinger.guest_misses": (1, 1000),
    "pinger.guest_concurrency": (1, 20000),
    "pinger.guest_timeout": (0, 3600),              # > 0
    "schedule.interval": (0, 30 * 86400),           # 0 (off) or at least 1 s; a month
    # retention periods, seconds: 0 keeps forever; at most ten years
    "retention.succeeded": (0, 10 * 365 * 86400),
    "retention.failed": (0, 10 * 365 * 86400),
    "retention.dead": (0, 10 * 365 * 86400),
    "retention.cancelled": (0, 10 * 365 * 86400),
    "retention.events": (0, 10 * 365 * 86400),
    "retention.audit": (0, 10 * 365 * 86400),
    # cloud API limits (config/cloud_keys.py): requests per second, > 0 (fractions allowed)
    "cloud.rate": (0, 100_000),
    "cloud.max_wait": (0, 600),                     # 0: never wait, defer at once
    "cloud.recover_after": (0, 86400),              # > 0
}
