"""``/hosts``: every host of the fleet, as its heartbeats and the host registry show it.

Any host's admin daemon answers for the whole fleet: the figures come from the provisioning DB
(``fleet/hosts.py``), never from the hosts themselves. A dead or stopped host is listed for a
day after its last heartbeat; ``DELETE`` forgets one that is gone for good (refused while alive).
"""

from __future__ import annotations

from fastapi import APIRouter, Path, Request

from ...db.hosts import HostRegistry
from ...db.instances import Conflict, NotFound
from ...config import limits
from ...fleet.hosts import ALIVE, HostView, fleet_view
from ..auditing import audited
from ..context import ctx_of
from ..errors import COMMON, CONFLICT, NOT_FOUND
from ..models import HostOut

router = APIRouter(prefix="/hosts", tags=["hosts"], responses=COMMON)

HostParam = Path(pattern=f"^{limits.DAEMON_NAME_PATTERN}$", max_length=limits.HOST_NAME_MAX,
                 description="a host's name (host.name)")


def _one(request: Request, name: str) -> HostView:
    found = [h for h in fleet_view(ctx_of(request).dbs) if h.name == name]
    if not found:
        raise NotFound(f"no host '{name}'")
    return found[0]


@router.get("", response_model=list[HostOut], summary="Every host: daemons, worker processes, state, last heartbeat")
def list_hosts(request: Request):
    return [HostOut(**h.as_dict()) for h in fleet_view(ctx_of(request).dbs)]


@router.get("/{name}", response_model=HostOut, responses=NOT_FOUND, summary="One host")
def get_host(request: Request, name: str = HostParam):
    return HostOut(**_one(request, name).as_dict())


@router.delete("/{name}", response_model=HostOut, responses={**NOT_FOUND, **CONFLICT},
               summary="Forget a host that is gone for good (not while it is alive)")
@audited("host.forget", lambda a: f"host {a['name']}")
def forget_host(request: Request, name: str = HostParam):
    host = _one(request, name)
    if host.state == ALIVE:
        raise Conflict(f"host '{name}' is alive: stop its daemons first")
    ctx = ctx_of(request)
    HostRegistry(ctx.dbs.provisioning).forget(name)
    ctx.dbs.heartbeats.forget_host(name)
    return HostOut(**host.as_dict())
