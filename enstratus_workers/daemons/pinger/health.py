"""Health checks of the service itself: queue, databases, daemons, heartbeats.

One function, ``check_health``, feeds the pinger daemon's heartbeat, ``pinger check`` (a
monitoring-plugin line and exit code) and the CLI's ``status``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from enstratus_workers.clock import now_ms
from enstratus_workers.db import Databases, open_databases
from enstratus_workers.errors import (
    CHECK_CRITICAL,
    CHECK_OK,
    CHECK_UNKNOWN,
    CHECK_WARNING,
    EnstratusError,
)
from enstratus_workers.mq import open_transport

REQUIRED_DAEMONS = ("publisher", "subscriber", "pinger")
_NAMES = {CHECK_OK: "OK", CHECK_WARNING: "WARNING", CHECK_CRITICAL: "CRITICAL", CHECK_UNKNOWN: "UNKNOWN"}


@dataclass
class Health:
    code: int = CHECK_OK
    problems: list[str] = field(default_factory=list)
    checks: dict = field(default_factory=dict)
    perf: dict = field(default_factory=dict)

    def worsen(self, code: int, problem: str) -> None:
        # UNKNOWN (3) is not "worse" than CRITICAL (2) for a monitoring system
        rank = {CHECK_OK: 0, CHECK_WARNING: 1, CHECK_UNKNOWN: 2, CHECK_CRITICAL: 3}
        if rank[code] > rank[self.code]:
            self.code = code
        self.problems.append(problem)

    @property
    def state(self) -> str:
        return _NAMES[self.code]

    def line(self) -> str:
        """One line, as monitoring plugins print: ``NAME STATE - summary | perfdata``."""
        summary = "; ".join(self.problems) if self.problems else "all checks passed"
        perf = " ".join(f"{k}={v}" for k, v in self.perf.items())
        return f"ENSTRATUS-WORKERS {self.state} - {summary}" + (f" | {perf}" if perf else "")

    def as_dict(self) -> dict:
        return {"state": self.state, "code": self.code, "problems": self.problems,
                "checks": self.checks, "perf": self.perf}


def check_health(settings, layout, dbs: Databases | None = None, *, require_pinger: bool = True) -> Health:
    from enstratus_workers.runtime.procs import daemon_states

    h = Health()
    own = dbs is None
    try:
        h.checks["mq"] = _check_mq(settings, layout, h)
        if own:
            try:
                dbs = open_databases(settings.worker, layout, ensure=False)
            except EnstratusError as exc:
                h.worsen(CHECK_CRITICAL, f"databases: {exc}")
                dbs = None
        if dbs is not None:
            for db, error in dbs.ping().items():
                h.checks[db] = error or "ok"
                if error:
                    h.worsen(CHECK_CRITICAL if db == "provisioning" else CHECK_WARNING, f"{db} DB: {error}")
        running = {}
        for st in daemon_states(layout):
            running.setdefault(st.daemon, []).append(st)
            if st.state != "running":
                h.worsen(CHECK_WARNING, f"{st.daemon}@{st.name} dead (stale pid file, pid {st.pid})")
        required = REQUIRED_DAEMONS if require_pinger else tuple(d for d in REQUIRED_DAEMONS if d != "pinger")
        for d in required:
            alive = [s for s in running.get(d, []) if s.state == "running"]
            h.checks[d] = f"{len(alive)} running" if alive else "not running"
            if not alive:
                h.worsen(CHECK_CRITICAL, f"{d} not running")
        workers = [s for s in running.get("worker", []) if s.state == "running"]
        h.perf["workers"] = len(workers)
        if dbs is not None and h.checks.get("provisioning") == "ok":
            check_heartbeats(dbs, h)
            counts = dbs.jobs.counts()
            h.perf.update({f"jobs_{k}": v for k, v in counts.items() if k in ("pending", "queued", "running", "dead")})
    finally:
        if own and dbs is not None:
            dbs.close()
    return h


def _check_mq(settings, layout, h: Health) -> str:
    try:
        with open_transport(settings.mq, layout, client_name="health-check") as t:
            t.ping()
            depths = t.depths(settings.worker.all_queues)
        for d in depths:
            h.perf[f"queue_{d.queue}_ready"] = d.ready
            if d.dead:
                h.perf[f"queue_{d.queue}_dead"] = d.dead
        return "ok"
    except EnstratusError as exc:
        h.worsen(CHECK_CRITICAL, f"queue ({settings.mq.transport}): {exc}")
        return str(exc)


def write_error(hb) -> str | None:
    """Why this daemon cannot record outcomes, if its live heartbeat says so (``write_error``).

    A subscriber whose writes keep failing holds its outcomes unacked and takes no new work
    once its prefetch is full, while its heartbeat still says it is alive: without this, every
    job would stall behind it and the check would say OK.
    """
    if hb.expired or not isinstance(hb.details, dict):
        return None
    return str(hb.details["write_error"]) if hb.details.get("write_error") else None


def check_heartbeats(dbs: Databases, h: Health) -> None:
    """The heartbeats' part of ``check_health``: dead daemons, degraded ones, stuck recording."""
    beats = dbs.heartbeats.all()
    stuck = [(hb, write_error(hb)) for hb in beats if write_error(hb)]
    if stuck:
        h.checks["write_errors"] = {f"{hb.daemon}@{hb.name}": why for hb, why in stuck}
    for hb, why in stuck:
        h.worsen(CHECK_CRITICAL, f"{hb.daemon} {hb.name} cannot record outcomes: {why}")
    for hb in beats:
        if hb.expired:
            age = (now_ms() - hb.beat_ms) / 1000
            h.worsen(CHECK_WARNING, f"{hb.daemon}@{hb.name} heartbeat expired {age:.0f}s ago")
        elif hb.status != "ok" and hb.daemon != "pinger":  # the pinger's status is this very report
            h.worsen(CHECK_WARNING, f"{hb.daemon}@{hb.name} reports {hb.status}")
