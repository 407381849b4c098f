"""The tables of the provisioning and analytics databases, as the code reads and writes them.

They are created and migrated by the Alembic chains ``provisioning`` and ``analytics``
(``db/migrate.py``, revisions in ``db/migrations/versions/``): a change here needs a revision
there, and ``tests/unit/test_migrations.py`` checks that the two agree.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import mysql

# The statuses live with the rest of a job's life; imported here for the readers of the schema.
from enstratus_workers.jobs.lifecycle import (  # noqa: F401
    ACTIVE,
    CANCELLED,
    DEAD,
    FAILED,
    PENDING,
    QUEUED,
    RUNNING,
    STATUSES,
    SUCCEEDED,
    TERMINAL,
)
from enstratus_workers.config.limits import ACCOUNT_MAX, NAME_MAX
from enstratus_workers.jobs.messages import MAX_ACTION_CHARS

from .identity import IdentityString

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")  # INTEGER PRIMARY KEY is SQLite's rowid
_LONG_TEXT = sa.Text().with_variant(mysql.MEDIUMTEXT(), "mysql")

provisioning = sa.MetaData()
analytics = sa.MetaData()

jobs = sa.Table(
    "enstratus_job", provisioning,
    sa.Column("job_id", _ID, primary_key=True, autoincrement=True),
    sa.Column("action", IdentityString(MAX_ACTION_CHARS), nullable=False),
    sa.Column("arguments", _LONG_TEXT, nullable=False),
    sa.Column("queue", IdentityString(100), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("max_attempts", sa.Integer, nullable=False),
    sa.Column("idempotency_key", IdentityString(200), nullable=True, unique=True),
    sa.Column("created_timestamp", sa.BigInteger, nullable=False),
    sa.Column("queued_timestamp", sa.BigInteger, nullable=True),
    sa.Column("start_timestamp", sa.BigInteger, nullable=True),
    sa.Column("end_timestamp", sa.BigInteger, nullable=True),
    sa.Column("worker", IdentityString(200), nullable=True),
    # the subscriber process that holds the current attempt (see db/jobs.py: one owner per attempt)
    sa.Column("owner", IdentityString(200), nullable=True),
    sa.Column("result", _LONG_TEXT, nullable=True),
    sa.Column("error", sa.Text, nullable=True),
    # when an operator asked to cancel it (jobs/lifecycle.py: cancel_verdict); None: never
    sa.Column("cancel_requested_ms", sa.BigInteger, nullable=True),
    # a deferred job (errors.Deferred) is relayed no sooner than this; None: as its backoff says
    sa.Column("not_before_ms", sa.BigInteger, nullable=True),
    # how often its actions deferred it (its last reason is its error while it waits)
    sa.Column("deferrals", sa.Integer, nullable=False, server_default="0"),
    # the tenant the job is for (None: no account); the relay takes turns by it (provisioning_0004)
    sa.Column("account", IdentityString(ACCOUNT_MAX), nullable=True),
    sa.Index("ix_enstratus_job_status", "status", "job_id"),
    # the relay's reads (db/outbox.py): the accounts waiting per queue, each one's oldest jobs,
    # the first attempts queued per queue: all ranges of this one index
    sa.Index("ix_enstratus_job_relay", "status", "queue", "account", "job_id"),
)

heartbeats = sa.Table(
    "enstratus_heartbeat", provisioning,
    sa.Column("daemon", IdentityString(32), primary_key=True),
    sa.Column("name", IdentityString(200), primary_key=True),
    sa.Column("host", IdentityString(200), primary_key=True),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("started_ms", sa.BigInteger, nullable=False),
    sa.Column("beat_ms", sa.BigInteger, nullable=False),
    sa.Column("expires_ms", sa.BigInteger, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("details", sa.Text, nullable=True),
)

cloud_rates = sa.Table(
    # the cloud API limits' budget, one row per (provider, account), shared by every worker
    # process of the fleet (db/cloud_rates.py; the policy in cloud/rate_policy.py). Times in
    # microseconds since the epoch: a turn of a fast key is a fraction of a millisecond.
    "enstratus_cloud_rate", provisioning,
    sa.Column("provider", IdentityString(100), primary_key=True),
    sa.Column("account", IdentityString(200), primary_key=True),
    sa.Column("next_us", sa.BigInteger, nullable=False),       # the next free turn
    sa.Column("rate", sa.Double, nullable=True),               # slowed rate, req/s; None: as configured
    sa.Column("slowed_us", sa.BigInteger, nullable=False),     # when a throttle last slowed it (0: never)
    sa.Column("eased_us", sa.BigInteger, nullable=False),      # when it last stepped back up (0: never)
    sa.Column("turns", sa.BigInteger, nullable=False),         # calls let through, ever
    sa.Column("throttles", sa.BigInteger, nullable=False),     # throttling answers seen, ever
    sa.Column("deferrals", sa.BigInteger, nullable=False),     # jobs put back for a turn or a throttle
)

events = sa.Table(
    "enstratus_job_event", analytics,
    sa.Column("event_id", _ID, primary_key=True, autoincrement=True),
    sa.Column("job_id", sa.BigInteger, nullable=False),
    sa.Column("action", sa.String(200), nullable=False),
    sa.Column("queue", sa.String(100), nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("outcome", sa.String(16), nullable=False),
    sa.Column("duration_ms", sa.BigInteger, nullable=False),
    sa.Column("worker", sa.String(200), nullable=True),
    sa.Column("event_timestamp", sa.BigInteger, nullable=False),
    # the attempt's error (cut to EVENT_ERROR_MAX: the job row keeps the last one whole) and the
    # host of the subscriber that recorded it: the job page's timeline (analytics_0003)
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("host", sa.String(200), nullable=True),
    sa.Index("ix_enstratus_job_event_job", "job_id"),
    sa.Index("ix_enstratus_job_event_time", "event_timestamp"),
)


pauses = sa.Table(
    # queues and accounts the operator paused, fleet-wide: their jobs wait in the outbox
    # (db/pauses.py; provisioning_0004)
    "enstratus_pause", provisioning,
    sa.Column("kind", sa.String(16), primary_key=True),          # "queue" or "account"
    sa.Column("name", IdentityString(max(NAME_MAX, ACCOUNT_MAX)), primary_key=True),
    sa.Column("since_ms", sa.BigInteger, nullable=False),
)


server_events = sa.Table(
    "enstratus_server_event", analytics,
    sa.Column("event_id", _ID, primary_key=True, autoincrement=True),
    sa.Column("server_id", sa.String(100), nullable=False),
    sa.Column("account", sa.String(200), nullable=True),
    sa.Column("old_state", sa.String(32), nullable=True),
    sa.Column("new_state", sa.String(32), nullable=False),
    sa.Column("job_id", sa.BigInteger, nullable=True),
    sa.Column("action", sa.String(200), nullable=True),
    sa.Column("event_timestamp", sa.BigInteger, nullable=False),
    sa.Index("ix_enstratus_server_event_server", "server_id"),
    sa.Index("ix_enstratus_server_event_job", "job_id"),   # a job's page lists its server's events
)

#: characters of an attempt's error kept in its event
EVENT_ERROR_MAX = 2000


# -- retention: the totals that survive pruning ------------------------------------------------
# Created by the revisions provisioning_0002 and analytics_0002 (db/migrations), which call the
# seeds below once. Old rows are pruned (db/retention.py); what the pages and the metrics count
# must survive that, and must cost the same at any history size, so the counts are kept as
# totals, written by the same transactions that change what they count.

#: Upper bounds (seconds) of the action-duration histogram, stored as columns of the totals
#: below: cloud calls take from ms to minutes.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
BUCKET_COLUMNS = tuple(f"le_{i}" for i in range(len(DURATION_BUCKETS)))

job_totals = sa.Table(
    # jobs ever in each finished status, as they stand now (a redriven dead job leaves "dead"):
    # kept by JobStore's writes, untouched by pruning. Unfinished jobs are few, counted live.
    "enstratus_job_total", provisioning,
    sa.Column("status", sa.String(16), primary_key=True),
    sa.Column("jobs", sa.BigInteger, nullable=False),
)

job_pruned = sa.Table(
    # jobs pruned that were created at or after the Jobs page's reset time ``since_ms`` (the one
    # in force when they were pruned): what that page adds to the rows still there.
    "enstratus_job_pruned", provisioning,
    sa.Column("status", sa.String(16), primary_key=True),
    sa.Column("since_ms", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("jobs", sa.BigInteger, nullable=False),
)

leases = sa.Table(
    # a job of the fleet that one daemon at a time may do (pruning): held until expires_ms
    "enstratus_lease", provisioning,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("holder", IdentityString(200), nullable=True),
    sa.Column("expires_ms", sa.BigInteger, nullable=False),
)

action_totals = sa.Table(
    # attempts per (action, outcome) ever recorded, their summed duration and a histogram (le_i:
    # attempts of at most DURATION_BUCKETS[i] s and more than the bound before, not cumulative):
    # kept by EventStore.record in the events' own transaction, untouched by pruning.
    "enstratus_action_total", analytics,
    sa.Column("action", IdentityString(200), primary_key=True),
    sa.Column("outcome", sa.String(16), primary_key=True),
    sa.Column("attempts", sa.BigInteger, nullable=False),
    sa.Column("duration_ms", sa.BigInteger, nullable=False),
    *(sa.Column(c, sa.BigInteger, nullable=False) for c in BUCKET_COLUMNS),
)

RETENTION_LEASE = "retention"


def seed_provisioning_totals() -> list:
    """The statements giving a new or adopted database a total for every finished status,
    counted from the rows it holds, and the pruning lease's row (one INSERT ... SELECT each, so
    ``db upgrade --sql`` prints them too)."""
    out = []
    for status in TERMINAL:
        counted = sa.select(sa.literal(status), sa.func.count()).select_from(jobs).where(jobs.c.status == status)
        out.append(job_totals.insert().from_select(["status", "jobs"], counted))
    out.append(leases.insert().values(name=RETENTION_LEASE, holder=None, expires_ms=0))
    return out


def _event_sums() -> list:
    """The columns summing a group of events as the totals hold them: count, duration, and one
    count per histogram bucket (not cumulative)."""
    per_bucket, low = [], None
    for bound in DURATION_BUCKETS:
        ms = bound * 1000
        within = events.c.duration_ms <= ms if low is None else sa.and_(events.c.duration_ms > low,
                                                                          events.c.duration_ms <= ms)
        per_bucket.append(sa.func.coalesce(sa.func.sum(sa.case((within, 1), else_=0)), 0))
        low = ms
    return [sa.func.count(), sa.func.coalesce(sa.func.sum(events.c.duration_ms), 0), *per_bucket]


def seed_analytics_totals() -> list:
    """The statement giving the action totals of the events a database holds (none when new)."""
    q = sa.select(events.c.action, events.c.outcome, *_event_sums()).group_by(events.c.action, events.c.outcome)
    return [action_totals.insert().from_select(["action", "outcome", "attempts", "duration_ms", *BUCKET_COLUMNS], q)]


action_minutes = sa.Table(
    # the same figures as enstratus_action_total, per minute (minute_ms: the minute's start, ms
    # since the epoch): what the status page's charts of the last hour read, 60 minutes times
    # (action, outcome) rows whatever the rate. Kept by EventStore.record in the events' own
    # transaction, pruned with the events (retention.events).
    "enstratus_action_minute", analytics,
    sa.Column("minute_ms", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("action", IdentityString(200), primary_key=True),
    sa.Column("outcome", sa.String(16), primary_key=True),
    sa.Column("attempts", sa.BigInteger, nullable=False),
    sa.Column("duration_ms", sa.BigInteger, nullable=False),
    *(sa.Column(c, sa.BigInteger, nullable=False) for c in BUCKET_COLUMNS),
)

MINUTE_MS = 60_000


def seed_action_minutes() -> list:
    """The statement giving the per-minute figures of the events a database holds (none when
    new): the sums of ``seed_analytics_totals``, grouped by minute too."""
    minute = (events.c.event_timestamp - events.c.event_timestamp % MINUTE_MS).label("minute_ms")
    q = (sa.select(minute, events.c.action, events.c.outcome, *_event_sums())
         .group_by(minute, events.c.action, events.c.outcome))
    return [action_minutes.insert().from_select(
        ["minute_ms", "action", "outcome", "attempts", "duration_ms", *BUCKET_COLUMNS], q)]
