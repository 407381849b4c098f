"""The JSON bodies of the admin API, as pydantic models: they validate requests and are the
OpenAPI spec, so the spec, the checks and the fuzzing (schemathesis) can never disagree.

Names follow ``worker.properties``: a worker type is letters, digits, ``_`` and ``-``; a queue
name may also hold ``.`` and ``:``. Both are capped at 100 characters, the width of the queue
column of the job table.
"""

from __future__ import annotations

from typing import Annotated, Any, Optional

from pydantic import BaseModel, ConfigDict, Field, JsonValue, StringConstraints, model_validator

from ..config import limits
from ..config.limits import ACCOUNT_MAX, ACTION_MAX, MAX_ATTEMPTS, MAX_PROCESSES, NAME_MAX
from ..db.schema import STATUSES
from ..fleet import placement

# The names and ranges of config.limits, anchored for pydantic: every door accepts the same.
TYPE_PATTERN = f"^{limits.TYPE_PATTERN}$"
QUEUE_PATTERN = f"^{limits.QUEUE_PATTERN}$"
ACTION_PATTERN = f"^{limits.ACTION_PATTERN}$"
ACCOUNT_PATTERN = f"^{limits.ACCOUNT_PATTERN}$"
TypeName = Annotated[str, StringConstraints(pattern=TYPE_PATTERN, max_length=NAME_MAX)]
QueueName = Annotated[str, StringConstraints(pattern=QUEUE_PATTERN, max_length=NAME_MAX)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Concurrency(_Strict):
    """How many worker processes an instance runs: at least ``min``, at most ``max``."""

    min: int = Field(ge=0, le=MAX_PROCESSES, description="processes kept running even when idle")
    max: int = Field(ge=1, le=MAX_PROCESSES, description="processes at most, under load")

    @model_validator(mode="after")
    def _ordered(self):
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) must not be greater than max ({self.max})")
        return self


_PLACEMENT_DOC = ("where the type runs: host:NAME and tag:TAG targets (a host whose host.name is NAME, "
                  "every host whose host.tags hold TAG), each naming a known host, or [\"*\"] for every host")
Target = Annotated[str, StringConstraints(min_length=1, max_length=5 + limits.HOST_NAME_MAX)]


def _placement(items: Optional[list[str]]) -> Optional[list[str]]:
    return None if items is None else placement.shown(placement.parse(items))


class InstanceIn(_Strict):
    type: TypeName = Field(description="the worker type: letters, digits, '_' and '-'; at most 100")
    queues: list[QueueName] = Field(min_length=1, max_length=50, description="queues its processes consume")
    concurrency: Concurrency = Field(default_factory=lambda: Concurrency(min=1, max=1),
                                     description="processes per host it runs on")
    enabled: bool = True
    placement: Optional[list[Target]] = Field(
        default=None, min_length=1, max_length=limits.MAX_PLACEMENT,
        description=_PLACEMENT_DOC + "; left out: on the live host running the fewest worker processes")

    @model_validator(mode="after")
    def _queues(self):
        if len(set(self.queues)) != len(self.queues):
            raise ValueError("a queue is listed twice")
        self.placement = _placement(self.placement)
        return self


class PlacementIn(_Strict):
    placement: list[Target] = Field(min_length=1, max_length=limits.MAX_PLACEMENT, description=_PLACEMENT_DOC)

    @model_validator(mode="after")
    def _targets(self):
        self.placement = _placement(self.placement)
        return self


class ProcessOut(BaseModel):
    name: Optional[str] = Field(description="the process's name on its host, e.g. default.1")
    display: Optional[str] = Field(default=None, description="type@host.n, as jobs record it")
    pid: Optional[int]
    state: str = Field(description="starting, idle, working, stopping or stopped")


class RunningOn(BaseModel):
    host: str
    processes: list[ProcessOut]


class InstanceOut(BaseModel):
    id: int
    type: str
    queues: list[str]
    concurrency: Concurrency
    enabled: bool
    placement: list[str] = Field(description='its targets, or ["*"] for every host')
    running: list[RunningOn] = Field(default_factory=list,
                                     description="where its worker processes run now, per host")
    created_ms: int
    updated_ms: int


class DaemonOut(BaseModel):
    daemon: str = Field(description="subscriber, publisher, pinger or admin")
    name: str
    pid: int
    status: str = Field(description="what its last heartbeat said: ok, degraded, ...")
    state: str = Field(description="alive, or dead once its heartbeat expired")
    started_ms: int
    beat_ms: int
    expires_ms: int


class HostWorkerOut(ProcessOut):
    subscriber: str
    type: Optional[str]


class HostOut(BaseModel):
    name: str
    state: str = Field(description="alive (a heartbeat not expired), dead (every heartbeat expired) "
                                   "or stopped (its daemons stopped cleanly)")
    last_heartbeat_ms: Optional[int]
    tags: list[str]
    first_seen_ms: Optional[int] = Field(description="when a daemon of it first started here")
    daemons: list[DaemonOut]
    workers: list[HostWorkerOut]
    worker_processes: int = Field(description="its worker processes on-line")
    clock_offset_ms: Optional[int] = Field(default=None, description=(
        "how far its clock is ahead of the database server's (negative: behind) at its latest "
        "live heartbeat; the job times it stamps are off by as much. null: no live heartbeat says"))


class QueueIn(_Strict):
    name: QueueName = Field(description="letters, digits, '_', '-', '.' and ':'; at most 100")
    exchange: Optional[str] = Field(default=None, max_length=200,
                                    description="must be the configured exchange (mq.cfg), if given")
    routing_key: Optional[str] = Field(default=None, max_length=200,
                                       description="must be the queue's name, if given")


class QueueOut(BaseModel):
    name: str
    exchange: Optional[str]
    routing_key: Optional[str]
    consumed_by: list[str] = Field(description="worker types whose instances consume it")
    ready: Optional[int] = None
    unacked: Optional[int] = None
    consumers: Optional[int] = None
    dead: Optional[int] = None
    delayed: Optional[int] = None
    depth_error: Optional[str] = Field(default=None, description="why the depths are missing")


MAX_BULK_JOBS = 1000   # jobs in one POST /jobs list (one transaction; the body cap bounds it too)


class JobIn(_Strict):
    action: str = Field(min_length=1, max_length=ACTION_MAX, pattern=ACTION_PATTERN,
                        description="a registered action name")
    arguments: JsonValue = Field(default_factory=dict, description="the action's arguments (a JSON object)")
    queue: Optional[QueueName] = Field(default=None, description="default: worker.default_queue")
    idempotency_key: Optional[str] = Field(default=None, min_length=1, max_length=200)
    max_attempts: Optional[int] = Field(default=None, ge=1, le=MAX_ATTEMPTS)
    # checked by submit (limits.valid_account), whose 422 names the account and the rule
    account: Optional[str] = Field(default=None, max_length=4 * ACCOUNT_MAX, description=(
        f"the account the job is for: {limits.ACCOUNT_RULE}; default: the arguments' 'account', if any"))


class JobOut(BaseModel):
    job_id: int
    action: str
    arguments: Any
    queue: str
    status: str
    attempts: int
    max_attempts: int
    idempotency_key: Optional[str]
    created_timestamp: int
    queued_timestamp: Optional[int]
    start_timestamp: Optional[int]
    end_timestamp: Optional[int]
    worker: Optional[str]
    result: Any
    error: Optional[str]
    cancel_requested_ms: Optional[int] = Field(
        default=None, description="when a cancel was requested (ms since the epoch); null: never")
    not_before_ms: Optional[int] = Field(
        default=None, description="a deferred job is relayed no sooner than this (ms since the epoch)")
    deferrals: int = Field(default=0, description="how often its actions deferred it; the last "
                                                  "reason is its error while it waits")
    account: Optional[str] = Field(default=None, description="the account the job is for (null: none)")


class SubmitOut(BaseModel):
    created: bool = Field(description="false when the idempotency key named an earlier job")
    job: JobOut


class JobStats(BaseModel):
    since_ms: int = Field(description="jobs created before this are not counted (0: since ever)")
    counts: dict[str, int] = Field(description="jobs by status: " + ", ".join(STATUSES))
    total: int


class PauseOut(BaseModel):
    kind: str = Field(description="queue or account")
    name: str
    paused: bool
    since_ms: Optional[int] = Field(description="when it was paused (null: it is not)")


class Message(BaseModel):
    detail: str
