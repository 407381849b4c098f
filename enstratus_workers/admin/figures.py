"""The figures of ``GET /status`` and of the Server Status page, which draws exactly these.

*Actual* comes from the subscribers' heartbeats through the ``Stat`` API (the same figures the
terminal monitor and the metrics show); *desired* from the instances table. Both are shown side
by side: a change made here is visible at once as desired, and as actual once the subscribers
have followed it.
"""

from __future__ import annotations

from collections import Counter

from enstratus_workers.daemons.pinger.health import check_health

from ..db import now_ms
from ..errors import EnstratusError
from ..fleet.hosts import fleet_view
from ..monitor.stat import DEAD, Stat
from .context import AdminContext

#: worker states that count as "on-line": alive and able to take (or holding) work
ONLINE_STATES = ("starting", "idle", "working")


def online_by_type(stats: list[Stat]) -> Counter:
    """Worker processes on-line per worker type, over the clusters that are not dead."""
    return Counter(w.get("type") for s in stats if s.status != DEAD
                   for w in s.worker_details if w.get("state") in ONLINE_STATES)


def overview(ctx: AdminContext) -> dict:
    """Everything the status page shows, as JSON-ready dicts."""
    stats = Stat.get_all(ctx.settings, ctx.layout, dbs=ctx.dbs, depths=ctx.queues)
    online = online_by_type(stats)
    instances = ctx.store.list()
    # which types consume which queue: the desired state, else (a type it does not know yet,
    # e.g. of a subscriber reading worker.properties) the config file
    queues_of = {t.name: t.queues for t in ctx.settings.worker.types}
    queues_of.update({i.type: i.queues for i in instances})
    names = ctx.watched_queues()
    depths, depth_error = {}, None
    try:
        depths = {d.queue: d for d in ctx.queues.depths(names)}
    except EnstratusError as exc:
        depth_error = str(exc)
    queue_rows = []
    for name in names:
        types = sorted(t for t, qs in queues_of.items() if name in qs)
        wanted = [i for i in instances if i.enabled and name in i.queues]
        d = depths.get(name)
        queue_rows.append({
            "name": name, "consumed_by": types,
            "workers_online": sum(online.get(t, 0) for t in types),
            "workers_desired": {"min": sum(i.min for i in wanted), "max": sum(i.max for i in wanted)},
            "consumers": d.consumers if d else None, "ready": d.ready if d else None,
            "unacked": d.unacked if d else None, "delayed": d.delayed if d else None,
            "dead": d.dead if d else None,
        })
    instance_rows = [{**i.as_dict(), "online": online.get(i.type, 0)} for i in instances]
    return {
        "health": check_health(ctx.settings, ctx.layout, ctx.dbs, broker=ctx.queues).as_dict(),
        "clusters": [s.as_dict() for s in stats],
        "instances": instance_rows,
        "queues": queue_rows,
        "depth_error": depth_error,
        "jobs": ctx.dbs.jobs.counts(),
        "hosts": [h.as_dict() for h in fleet_view(ctx.dbs)],   # every host of the fleet
        "observed_ms": now_ms(),
    }
