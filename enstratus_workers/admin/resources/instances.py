"""``/instances``: the desired worker pools (one per worker type), what they consume, their size.

A change is written to the provisioning DB in one transaction; queues an instance is to consume
are declared on the transport first (idempotent), so a queue that could not be declared never
appears in the desired state, and a failed database write leaves at most an empty queue behind.

An instance runs on the hosts its placement names (``host:NAME``, ``tag:TAG``, or ``["*"]`` for
every host; ``fleet/placement.py``), ``min``..``max`` processes on each. A placement naming no
host the fleet knows (none ever ran a daemon under that name, none carries that tag) is refused
with a 422 naming it: it would run the type nowhere. Every change is recorded in the audit log
with the instance before and after (``auditing``).
"""

from __future__ import annotations

from fastapi import APIRouter, Path, Request

from ...db.instances import Conflict, Instance
from ...fleet import placement
from ...fleet.hosts import fleet_view, known_hosts, least_loaded, running_by_type
from ..auditing import audited
from ..context import AdminContext, ctx_of
from ..errors import COMMON, CONFLICT, NOT_FOUND, invalid
from ..models import QUEUE_PATTERN, Concurrency, InstanceIn, InstanceOut, PlacementIn

router = APIRouter(prefix="/instances", tags=["instances"], responses=COMMON)

InstanceId = Path(ge=1, le=2**63 - 1, description="the instance's id")
QueueParam = Path(pattern=QUEUE_PATTERN, max_length=100, description="a queue name")


def _out(ctx: AdminContext, instance: Instance, running: dict | None = None) -> InstanceOut:
    """The instance with where its processes run now, on every host (``running``:
    ``running_by_type`` of the fleet, read here when not given)."""
    if running is None:
        running = running_by_type(fleet_view(ctx.dbs))
    return InstanceOut(**instance.as_dict(), running=running.get(instance.type, []))


def _checked(ctx: AdminContext, where: list[str]) -> tuple[str, ...]:
    """The placement, refused (422) if a target of it matches no known host."""
    targets = placement.parse(where)
    known = known_hosts(ctx.dbs) if targets else {}
    missing = placement.unknown(targets, known)
    if missing:
        raise invalid(placement.describe_unknown(missing, known), "body", "placement")
    return targets


def _target(arguments: dict) -> str:
    queue = arguments.get("queue")
    return f"instance {arguments['instance_id']}" + (f", queue {queue}" if queue else "")


def _state(ctx, arguments: dict) -> dict:
    return ctx.store.get(arguments["instance_id"]).as_dict()


def _state_by_type(ctx, arguments: dict) -> dict | None:
    found = ctx.store.by_type(arguments["body"].type)
    return found.as_dict() if found else None


def _audited(action: str):
    """Audited as ``action`` on the instance of the path, with its state before and after."""
    return audited(action, _target, _state)


@router.get("", response_model=list[InstanceOut],
            summary="List the instances of every host, with where each runs (hosts and processes)")
def list_instances(request: Request):
    ctx = ctx_of(request)
    running = running_by_type(fleet_view(ctx.dbs))
    return [_out(ctx, i, running) for i in ctx.store.list()]


@router.post("", response_model=InstanceOut, status_code=201, responses=CONFLICT,
             summary="Create an instance of a worker type (without a placement: on the least loaded live host)")
@audited("instance.create", lambda a: f"instance of type {a['body'].type}", _state_by_type)
def create_instance(body: InstanceIn, request: Request):
    ctx = ctx_of(request)
    if ctx.store.by_type(body.type) is not None:  # answer before touching the queue
        raise Conflict(f"an instance of type '{body.type}' exists already")
    if body.placement is not None:
        where = _checked(ctx, body.placement)
    else:   # as the SCS agent placed an instance "on a random agent": here, the least loaded live one
        where = (f"{placement.HOST}:{least_loaded(fleet_view(ctx.dbs), ctx.settings.worker.host_name)}",)
    ctx.queues.declare(body.queues)
    return _out(ctx, ctx.store.create(body.type, body.queues, body.concurrency.min, body.concurrency.max,
                                      body.enabled, where))


@router.get("/{instance_id}", response_model=InstanceOut, responses=NOT_FOUND, summary="One instance")
def get_instance(request: Request, instance_id: int = InstanceId):
    ctx = ctx_of(request)
    return _out(ctx, ctx.store.get(instance_id))


@router.delete("/{instance_id}", response_model=InstanceOut, responses=NOT_FOUND,
               summary="Delete an instance (its queues stay)")
@_audited("instance.delete")
def delete_instance(request: Request, instance_id: int = InstanceId):
    ctx = ctx_of(request)
    return _out(ctx, ctx.store.delete(instance_id))


@router.post("/{instance_id}/enable", response_model=InstanceOut, responses=NOT_FOUND,
             summary="Run the instance's processes")
@_audited("instance.enable")
def enable_instance(request: Request, instance_id: int = InstanceId):
    ctx = ctx_of(request)
    return _out(ctx, ctx.store.update(instance_id, enabled=True))


@router.post("/{instance_id}/disable", response_model=InstanceOut, responses=NOT_FOUND,
             summary="Stop the instance's processes (its settings are kept)")
@_audited("instance.disable")
def disable_instance(request: Request, instance_id: int = InstanceId):
    ctx = ctx_of(request)
    return _out(ctx, ctx.store.update(instance_id, enabled=False))


@router.post("/{instance_id}/start", response_model=InstanceOut, responses={**NOT_FOUND, **CONFLICT},
             summary="Enable a disabled instance, else run one process more (min and max + 1)")
@_audited("instance.start")
def start_instance(request: Request, instance_id: int = InstanceId):
    ctx = ctx_of(request)
    return _out(ctx, ctx.store.scale_up(instance_id))


@router.put("/{instance_id}/autoscale", response_model=InstanceOut, responses=NOT_FOUND,
            summary="Set how many processes the instance runs")
@_audited("instance.autoscale")
def autoscale_instance(body: Concurrency, request: Request, instance_id: int = InstanceId):
    ctx = ctx_of(request)
    return _out(ctx, ctx.store.update(instance_id, low=body.min, high=body.max))


@router.put("/{instance_id}/placement", response_model=InstanceOut, responses=NOT_FOUND,
            summary="Set the hosts the instance runs on (host:NAME, tag:TAG, or [\"*\"] for every host)")
@_audited("instance.placement")
def place_instance(body: PlacementIn, request: Request, instance_id: int = InstanceId):
    ctx = ctx_of(request)
    ctx.store.get(instance_id)  # 404 before judging the placement
    return _out(ctx, ctx.store.place(instance_id, _checked(ctx, body.placement)))


@router.put("/{instance_id}/queues/{queue}", response_model=InstanceOut, responses=NOT_FOUND,
            summary="Consume a queue (declared if new)")
@_audited("instance.consume")
def consume_queue(request: Request, instance_id: int = InstanceId, queue: str = QueueParam):
    ctx = ctx_of(request)
    ctx.store.get(instance_id)  # 404 before declaring anything
    ctx.queues.declare([queue])
    return _out(ctx, ctx.store.consume(instance_id, queue))


@router.delete("/{instance_id}/queues/{queue}", response_model=InstanceOut,
               responses={**NOT_FOUND, **CONFLICT}, summary="Stop consuming a queue")
@_audited("instance.cancel_queue")
def cancel_queue(request: Request, instance_id: int = InstanceId, queue: str = QueueParam):
    ctx = ctx_of(request)
    return _out(ctx, ctx.store.cancel(instance_id, queue))

