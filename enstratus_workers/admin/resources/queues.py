"""``/queues``: declare, list (with depths) and forget queues.

The transport binds every queue to the configured exchange (``mq.cfg``) with the queue's own name
as routing key; that is the only binding it makes, so a declaration asking for another one is
refused rather than recorded and silently not honoured.

Deleting a queue forgets it here. It is refused while an instance consumes it, and while it holds
messages (they would be stranded where no page shows them); the transport contract has no queue
deletion, so the empty queue itself stays on the broker, where a later declaration finds it again.
"""

from __future__ import annotations

from fastapi import APIRouter, Path, Request, Response

from ...db.instances import Conflict, NotFound, QueueEntry
from ...errors import EnstratusError
from ..auditing import audited
from ..context import AdminContext, ctx_of
from ..errors import COMMON, CONFLICT, NOT_FOUND, invalid
from ..models import QUEUE_PATTERN, QueueIn, QueueOut

router = APIRouter(prefix="/queues", tags=["queues"], responses=COMMON)

QueueParam = Path(pattern=QUEUE_PATTERN, max_length=100, description="a queue name")


def _entry(ctx: AdminContext, name: str) -> dict | None:
    """A declared queue's row, for the audit log (its depths are not asked: that may be slow)."""
    entry = ctx.store.queue(name)
    return None if entry is None else dict(entry.__dict__)


def describe(ctx: AdminContext, entries: list[QueueEntry]) -> list[QueueOut]:
    """The entries with their consumers and depths; depths missing (with the reason) if the queue
    cannot be asked, so a broker outage still lets the operator see the desired state."""
    consumers = ctx.store.consumers()
    depths, error = {}, None
    try:
        depths = {d.queue: d for d in ctx.queues.depths([e.name for e in entries])}
    except EnstratusError as exc:
        error = str(exc)
    out = []
    for e in entries:
        d = depths.get(e.name)
        out.append(QueueOut(
            name=e.name, exchange=e.exchange or ctx.settings.mq.exchange, routing_key=e.routing_key or e.name,
            consumed_by=consumers.get(e.name, []), depth_error=error,
            **({"ready": d.ready, "unacked": d.unacked, "consumers": d.consumers, "dead": d.dead,
                "delayed": d.delayed} if d else {})))
    return out


@router.get("", response_model=list[QueueOut], summary="List the declared queues with their depths")
def list_queues(request: Request):
    ctx = ctx_of(request)
    return describe(ctx, ctx.store.queues())


@router.post("", response_model=QueueOut, status_code=201,
             responses={200: {"model": QueueOut, "description": "the queue was declared already"}},
             summary="Declare a queue")
@audited("queue.create", lambda a: f"queue {a['body'].name}", lambda ctx, a: _entry(ctx, a["body"].name))
def declare_queue(body: QueueIn, request: Request, response: Response):
    ctx = ctx_of(request)
    exchange = ctx.settings.mq.exchange
    if body.exchange is not None and body.exchange != exchange:
        raise invalid(f"the transport binds queues to the exchange '{exchange}' (mq.cfg) only",
                      "body", "exchange")
    if body.routing_key is not None and body.routing_key != body.name:
        raise invalid("the transport routes a queue by its own name: routing_key must be the "
                      "queue's name or left out", "body", "routing_key")
    ctx.queues.declare([body.name])
    entry, created = ctx.store.add_queue(body.name, exchange, body.name)
    if not created:
        response.status_code = 200
    return describe(ctx, [entry])[0]


@router.get("/{name}", response_model=QueueOut, responses=NOT_FOUND, summary="One queue with its depths")
def get_queue(request: Request, name: str = QueueParam):
    ctx = ctx_of(request)
    entry = ctx.store.queue(name)
    if entry is None:
        raise NotFound(f"no queue '{name}'")
    return describe(ctx, [entry])[0]


@router.delete("/{name}", response_model=QueueOut, responses={**NOT_FOUND, **CONFLICT},
               summary="Forget a queue no instance consumes and that holds no messages")
@audited("queue.delete", lambda a: f"queue {a['name']}", lambda ctx, a: _entry(ctx, a["name"]))
def delete_queue(request: Request, name: str = QueueParam):
    ctx = ctx_of(request)
    entry = ctx.store.queue(name)
    if entry is None:
        raise NotFound(f"no queue '{name}'")
    users = ctx.store.consumers().get(name)
    if users:  # said before asking the queue, which may be down
        raise Conflict(f"queue '{name}' is consumed by {', '.join(users)}: cancel it on those instances first")
    depth = ctx.queues.depths([name])[0]
    held = depth.ready + (depth.unacked or 0) + (depth.delayed or 0) + depth.dead
    if held:
        raise Conflict(f"queue '{name}' holds {held} message(s) (dead letters included): "
                       "drain or purge it first")
    gone = describe(ctx, [entry])[0]
    ctx.store.remove_queue(name)  # checks the consumers again, under the lock
    return gone
