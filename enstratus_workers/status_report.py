"""``enstratus-workers status``: this install's daemons (its pid files), every host of the fleet
(heartbeats, ``fleet/hosts.py``), the health check, the job counts and the cloud API keys slowed
by throttles (``db/cloud_rates.py``), as data and as text."""

from __future__ import annotations

from dataclasses import asdict

from .clock import now_ms
from .daemons.pinger.health import check_health
from .db import open_databases
from .db.cloud_rates import CloudRateStore
from .errors import EnstratusError
from .fleet.hosts import fleet_view
from .fleet.hosts_text import host_lines
from .monitor import Stat
from .runtime.procs import daemon_states


def status_report(settings, layout) -> tuple[dict, str, bool]:
    """``(data, text, healthy)``: what ``status --json`` and ``status`` print, and whether the
    health check found nothing wrong."""
    daemons = [{"daemon": s.daemon, "name": s.name, "pid": s.pid, "state": s.state,
                "uptime_s": s.uptime_s} for s in daemon_states(layout)]
    health = check_health(settings, layout)
    data = {"host": settings.worker.host_name, "daemons": daemons, "health": health.as_dict()}
    hosts = []
    try:
        dbs = open_databases(settings.worker, layout)
        try:
            data["jobs"] = dbs.jobs.counts()
            data["heartbeats"] = [h.as_dict() for h in dbs.heartbeats.all()]
            data["clusters"] = [c.as_dict() for c in Stat.get_all(settings, layout, dbs=dbs)]
            hosts = fleet_view(dbs)
            data["hosts"] = [h.as_dict() for h in hosts]   # every host of the fleet
            data["cloud_limits"] = [{**asdict(k), "slowed": k.slowed}
                                    for k in CloudRateStore(dbs.provisioning).rates(settings.cloud)]
        finally:
            dbs.close()
    except EnstratusError as exc:
        data["jobs"] = {"error": str(exc)}
    lines = [f"{'DAEMON (this host: ' + settings.worker.host_name + ')':<34} {'PID':>7}  {'STATE':<8} UPTIME"]
    for d in daemons:
        up = f"{d['uptime_s']:.0f}s" if d["uptime_s"] is not None else "-"
        lines.append(f"{d['daemon'] + '@' + d['name']:<34} {d['pid'] or '-':>7}  {d['state']:<8} {up}")
    if not daemons:
        lines.append("(no daemon running)")
    if hosts:
        lines.extend(host_lines(hosts, now_ms()))
    if isinstance(data["jobs"], dict) and "error" not in data["jobs"]:
        lines.append("jobs: " + ", ".join(f"{k} {v}" for k, v in data["jobs"].items()))
    lines.extend(f"cloud API key {k['provider']} account {k['account']}: slowed to {k['rate']:.3g}/s of "
                 f"{k['configured']:g}/s ({k['throttles']} throttles)"
                 for k in data.get("cloud_limits", ()) if k["slowed"])
    lines.append(health.line())
    return data, "\n".join(lines), health.code == 0
