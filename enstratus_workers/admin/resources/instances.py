"""``/instances``: the desired worker pools (one per worker type), what they consume, their size.

A change is written to the provisioning DB in one transaction; queues an instance is to consume
are declared on the transport first (idempotent), so a queue that could not be declared never
appears in the desired state, and a failed database write leaves at most an empty queue behind.
"""

from __future__ import annotations

from fastapi import APIRouter, Path, Request

from ...db.instances import Conflict, Instance
from ..context import ctx_of
from ..errors import COMMON, CONFLICT, NOT_FOUND
from ..models import QUEUE_PATTERN, Concurrency, InstanceIn, InstanceOut

router = APIRouter(prefix="/instances", tags=["instances"], responses=COMMON)

InstanceId = Path(ge=1, le=2**63 - 1, description="the instance's id")
QueueParam = Path(pattern=QUEUE_PATTERN, max_length=100, description="a queue name")


def _out(instance: Instance) -> InstanceOut:
    return InstanceOut(**instance.as_dict())


@router.get("", response_model=list[InstanceOut], summary="List the instances")
def list_instances(request: Request):
    return [_out(i) for i in ctx_of(request).store.list()]


@router.post("", response_model=InstanceOut, status_code=201, responses=CONFLICT,
             summary="Create an instance of a worker type")
def create_instance(body: InstanceIn, request: Request):
    ctx = ctx_of(request)
    if ctx.store.by_type(body.type) is not None:  # answer before touching the queue
        raise Conflict(f"an instance of type '{body.type}' exists already")
    ctx.queues.declare(body.queues)
    return _out(ctx.store.create(body.type, body.queues, body.concurrency.min, body.concurrency.max,
                                 body.enabled))


@router.get("/{instance_id}", response_model=InstanceOut, responses=NOT_FOUND, summary="One instance")
def get_instance(request: Request, instance_id: int = InstanceId):
    return _out(ctx_of(request).store.get(instance_id))


@router.delete("/{instance_id}", response_model=InstanceOut, responses=NOT_FOUND,
               summary="Delete an instance (its queues stay)")
def delete_instance(request: Request, instance_id: int = InstanceId):
    return _out(ctx_of(request).store.delete(instance_id))


@router.post("/{instance_id}/enable", response_model=InstanceOut, responses=NOT_FOUND,
             summary="Run the instance's processes")
def enable_instance(request: Request, instance_id: int = InstanceId):
    return _out(ctx_of(request).store.update(instance_id, enabled=True))


@router.post("/{instance_id}/disable", response_model=InstanceOut, responses=NOT_FOUND,
             summary="Stop the instance's processes (its settings are kept)")
def disable_instance(request: Request, instance_id: int = InstanceId):
    return _out(ctx_of(request).store.update(instance_id, enabled=False))


@router.post("/{instance_id}/start", response_model=InstanceOut, responses={**NOT_FOUND, **CONFLICT},
             summary="Enable a disabled instance, else run one process more (min and max + 1)")
def start_instance(request: Request, instance_id: int = InstanceId):
    return _out(ctx_of(request).store.scale_up(instance_id))


@router.put("/{instance_id}/autoscale", response_model=InstanceOut, responses=NOT_FOUND,
            summary="Set how many processes the instance runs")
def autoscale_instance(body: Concurrency, request: Request, instance_id: int = InstanceId):
    return _out(ctx_of(request).store.update(instance_id, low=body.min, high=body.max))


@router.put("/{instance_id}/queues/{queue}", response_model=InstanceOut, responses=NOT_FOUND,
            summary="Consume a queue (declared if new)")
def consume_queue(request: Request, instance_id: int = InstanceId, queue: str = QueueParam):
    ctx = ctx_of(request)
    ctx.store.get(instance_id)  # 404 before declaring anything
    ctx.queues.declare([queue])
    return _out(ctx.store.consume(instance_id, queue))


@router.delete("/{instance_id}/queues/{queue}", response_model=InstanceOut,
               responses={**NOT_FOUND, **CONFLICT}, summary="Stop consuming a queue")
def cancel_queue(request: Request, instance_id: int = InstanceId, queue: str = QueueParam):
    return _out(ctx_of(request).store.cancel(instance_id, queue))

