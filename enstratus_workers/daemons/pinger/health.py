"""Health checks of the service itself: queue, databases, daemons, heartbeats.

One function, ``check_health``, feeds the pinger daemon's heartbeat, ``pinger check`` (a
monitoring-plugin line and exit code), the CLI's ``status`` and the admin's status figures.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

import sqlalchemy as sa

from enstratus_workers.clock import now_ms
from enstratus_workers.db import Databases, open_databases, schema
from enstratus_workers.db.heartbeats import clock_note, clock_offsets
from enstratus_workers.errors import (
    CHECK_CRITICAL,
    CHECK_OK,
    CHECK_UNKNOWN,
    CHECK_WARNING,
    EnstratusError,
)
from enstratus_workers.mq import NodeState, open_transport
from enstratus_workers.mq.shared import SharedTransport

log = logging.getLogger(__name__)

REQUIRED_DAEMONS = ("publisher", "subscriber", "pinger")
_NAMES = {CHECK_OK: "OK", CHECK_WARNING: "WARNING", CHECK_CRITICAL: "CRITICAL", CHECK_UNKNOWN: "UNKNOWN"}

# In the text part of a plugin line, the first "|" starts the perfdata and a line break starts
# the long text: a problem's text (a DB error, a queue name) may hold either, so neither survives.
_TEXT_BREAKERS = re.compile(r"\r\n|[\r\n|]")
# A perfdata label needs single quotes around it if it holds a blank, "=" or "'" (doubled inside).
_LABEL_NEEDS_QUOTES = re.compile(r"[\s=']")


@dataclass(frozen=True)
class PerfSpec:
    """What a perfdata value carries besides the number: ``value[UOM];[warn];[crit];[min];[max]``.

    ``warn``/``crit`` are threshold ranges as the operator gave them (``10``, ``10:``, ``~:10``,
    ``10:20``, ``@10:20``); empty fields are left out from the end, as the guidelines allow.
    """

    uom: str = ""
    warn: str = ""
    crit: str = ""
    min: str = ""
    max: str = ""

    def render(self, label: str, value) -> str:
        fields = f"{self.warn};{self.crit};{self.min};{self.max}".rstrip(";")
        return f"{perf_label(label)}={value}{self.uom}" + (f";{fields}" if fields else "")


COUNT = PerfSpec()                 # a number of things, as every label was before thresholds
SECONDS = PerfSpec(uom="s")


def perf_label(label: str) -> str:
    """``label`` as a perfdata label: quoted if it must be, never able to end the perfdata."""
    label = _TEXT_BREAKERS.sub("_", label)
    return f"'{label.replace(chr(39), chr(39) * 2)}'" if _LABEL_NEEDS_QUOTES.search(label) else label


def plain_text(text: str) -> str:
    """``text`` safe in the text part of a plugin line: "|" becomes "/", line breaks a blank."""
    return _TEXT_BREAKERS.sub(lambda m: "/" if m.group() == "|" else " ", text)


@dataclass
class Health:
    code: int = CHECK_OK
    problems: list[str] = field(default_factory=list)
    checks: dict = field(default_factory=dict)
    perf: dict = field(default_factory=dict)
    perf_specs: dict[str, PerfSpec] = field(default_factory=dict)  # per perf label; COUNT if absent

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
        """One line, as monitoring plugins print: ``NAME STATE - summary | perfdata``, with
        exactly one "|" whatever the problems say."""
        summary = plain_text("; ".join(self.problems)) if self.problems else "all checks passed"
        perf = " ".join(self.perf_specs.get(k, COUNT).render(k, v) for k, v in self.perf.items())
        return f"ENSTRATUS-WORKERS {self.state} - {summary}" + (f" | {perf}" if perf else "")

    def as_dict(self) -> dict:
        d = {"state": self.state, "code": self.code, "problems": self.problems,
             "checks": self.checks, "perf": self.perf}
        limits = {k: {"warn": p.warn, "crit": p.crit} for k, p in self.perf_specs.items() if p.warn or p.crit}
        if limits:
            d["thresholds"] = limits
        return d


def check_health(settings, layout, dbs: Databases | None = None, *, require_pinger: bool = True,
                 states: list | None = None, broker: SharedTransport | None = None) -> Health:
    """The service's health: the queue, the databases, the daemons' pid files (``states`` as
    just read by ``daemon_states``, else read here), the heartbeats and the job counts.

    ``broker``: the queue connection a daemon keeps between its checks (see ``_check_mq``);
    without it the queue is checked on connections opened for this check and closed after it."""
    from enstratus_workers.runtime.procs import daemon_states

    h = Health()
    own = dbs is None
    try:
        if own:
            try:
                dbs = open_databases(settings.worker, layout, ensure=False)
            except EnstratusError as exc:
                h.worsen(CHECK_CRITICAL, f"databases: {exc}")
                dbs = None
        # every queue of the desired state (the file's while the database cannot say)
        queues = dbs.desired.queues(settings.worker.all_queues) if dbs is not None else settings.worker.all_queues
        h.checks["mq"] = _check_mq(settings, layout, h, queues, held=broker)
        if dbs is not None:
            for db, error in dbs.ping().items():
                h.checks[db] = error or "ok"
                if error:
                    h.worsen(CHECK_CRITICAL if db == "provisioning" else CHECK_WARNING, f"{db} DB: {error}")
        check_db_nodes(settings, h)
        running = {}
        for st in daemon_states(layout) if states is None else states:
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
            h.perf["lag"] = round(waiting_for_s(dbs), 1)
            h.perf_specs["lag"] = SECONDS
    finally:
        if own and dbs is not None:
            dbs.close()
    return h


def check_db_nodes(settings, h: Health) -> None:
    """The nodes of a database URL that names a Galera cluster (``config/dburl.py``), each
    probed as the writer choice probes it (``db/nodes.py``): their states and the writer (the
    first healthy one) in ``checks``; a node that is not healthy is a WARNING (the cluster
    lost a member); none healthy is CRITICAL for provisioning and names every node."""
    from enstratus_workers.config import dburl
    from enstratus_workers.db.nodes import Prober, first_healthy

    probed: dict[tuple, list] = {}
    for db, url in (("provisioning", settings.worker.provisioning_url), ("analytics", settings.worker.analytics_url)):
        parsed = dburl.parse(url.reveal())
        if not parsed.clustered:
            continue
        key = (parsed.nodes, parsed.url.username, parsed.url.password)   # one round per cluster
        if key not in probed:
            probed[key] = Prober(parsed.url).probe_all(parsed.nodes)
        states = probed[key]
        writer = first_healthy(states)
        h.checks[f"{db}_nodes"] = {"writer": str(writer) if writer else None,
                                   **{str(s.node): s.state for s in states}}
        if writer is None:
            h.worsen(CHECK_CRITICAL if db == "provisioning" else CHECK_WARNING,
                     f"{db} DB: no healthy node: {', '.join(map(str, states))}")
        for s in states:
            if writer is not None and not s.healthy:
                h.worsen(CHECK_WARNING, f"{db} DB node {s}")


def _check_mq(settings, layout, h: Health, queues=None, held: SharedTransport | None = None) -> str:
    """Ping the queue and take the depths of ``queues`` (default: the configured ones).

    ``held``: the transport the caller keeps from one check to the next (the pinger's every
    round, the admin's for its pages), so that a service checking itself every few seconds does
    not open and close broker connections at that pace for months: its connection answers the
    ping and the depths, and its node probes (one connection per node, ``node_states``) stay
    open from check to check too. When none is held (the first check, one after a failure, or
    once the held one is old or idle: ``SharedTransport``) the check is made on new connections
    as without ``held``, and the transport that passed is kept: what a check says of a broker
    that is down does not depend on ``held``, and a broker that is down costs no more
    connection attempts with it than without.
    """
    queues = settings.worker.all_queues if queues is None else queues
    if held is not None and held.holding:
        try:
            held.ping()
            depths = held.depths(queues)
        except EnstratusError as exc:   # dropped by SharedTransport: checked anew below
            log.debug("health check: the held queue connection failed (%s); checking on new ones", exc)
        else:
            _judge_nodes(held.node_states(), h)   # some may be down: the held one is on a live one
            _record_depths(depths, h)
            return "ok"
    transport = None
    try:
        transport = held.open_new() if held is not None else \
            open_transport(settings.mq, layout, client_name="health-check")
        nobody = _judge_nodes(transport.node_states(), h)
        if nobody:
            return nobody
        transport.ping()
        depths = transport.depths(queues)
        if held is not None:
            held.adopt(transport)
            transport = None
        _record_depths(depths, h)
        return "ok"
    except EnstratusError as exc:
        h.worsen(CHECK_CRITICAL, f"queue ({settings.mq.transport}): {exc}")
        return str(exc)
    finally:
        if transport is not None:
            transport.close()


def _record_depths(depths, h: Health) -> None:
    for d in depths:
        h.perf[f"queue_{d.queue}_ready"] = d.ready
        if d.dead:
            h.perf[f"queue_{d.queue}_dead"] = d.dead


def _judge_nodes(states: list[NodeState], h: Health) -> str | None:
    """Which broker nodes answer (a cluster's, or the one node of ``host``): every one down is
    CRITICAL naming them, some down a WARNING naming those; the perfdata has how many answer,
    out of how many. Returns the problem when none answers (then there is nothing more to ask)."""
    if not states:           # the embedded queue is no cluster: ping tells
        return None
    down = [s for s in states if s.error]
    h.checks["mq_nodes"] = {s.node: s.error or "ok" for s in states}
    h.perf["mq_nodes_up"] = len(states) - len(down)
    h.perf_specs["mq_nodes_up"] = PerfSpec(min="0", max=str(len(states)))
    said = ", ".join(f"{s.node} ({s.error})" for s in down)
    if len(down) == len(states):
        problem = f"no broker node answers: {said}"
        h.worsen(CHECK_CRITICAL, f"queue (amqp): {problem}")
        return problem
    if down:
        h.worsen(CHECK_WARNING, f"broker node(s) down, {len(states) - len(down)} of {len(states)} answer: {said}")
    return None


def waiting_for_s(dbs: Databases) -> float:
    """The lag: seconds the longest-waiting job has waited for a worker, 0 if none waits.

    A pending job waits since it was submitted, or since its last attempt ended (a retry); a
    queued one since the publisher relayed it. A job its action deferred (``errors.Deferred``)
    waits on purpose until its ``not_before_ms``, and only from then on for a worker. A job of a
    paused queue or account waits for the operator, not for a worker: it is left out, so a pause
    does not set off the lag thresholds (a queue left paused by mistake shows in the pauses,
    ``enstratus-workers pauses``). Each reads the rows of its status (found by the (status,
    job_id) index): about 55 ms for 100,000 pending jobs on SQLite here, 13 ms for counts.
    """
    T, P = schema.jobs, schema.pauses
    not_paused = sa.and_(
        T.c.queue.not_in(sa.select(P.c.name).where(P.c.kind == "queue")),
        sa.or_(T.c.account.is_(None), T.c.account.not_in(sa.select(P.c.name).where(P.c.kind == "account"))))

    def held(since):   # the later of ``since`` and a deferral's end
        return sa.case((T.c.not_before_ms > since, T.c.not_before_ms), else_=since)

    pending_since = sa.select(sa.func.min(held(sa.func.coalesce(T.c.end_timestamp, T.c.created_timestamp)))
                              ).where(T.c.status == schema.PENDING, not_paused)
    queued_since = sa.select(sa.func.min(held(T.c.queued_timestamp))).where(T.c.status == schema.QUEUED, not_paused)
    with dbs.provisioning.connect() as conn:
        since = [ms for ms in (conn.execute(pending_since).scalar(), conn.execute(queued_since).scalar())
                 if ms is not None]
    return max(0.0, (now_ms() - min(since)) / 1000) if since else 0.0


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
            age = (hb.seen_ms - hb.beat_ms) / 1000   # on the clock it was written by
            h.worsen(CHECK_WARNING, f"{hb.daemon}@{hb.name} heartbeat expired {age:.0f}s ago")
        elif hb.status != "ok" and hb.daemon != "pinger":  # the pinger's status is this very report
            h.worsen(CHECK_WARNING, f"{hb.daemon}@{hb.name} reports {hb.status}")
    # a host's clock off the database server's: what it judges is on the server's clock, what
    # it stamps on jobs (their created, start and end times) on its own (db/heartbeats.py)
    off = {host: (ms, note) for host, ms in clock_offsets(beats).items() if (note := clock_note(ms))}
    if off:
        h.checks["clock_offsets_s"] = {host: round(ms / 1000, 3) for host, (ms, _note) in off.items()}
    for host, (_ms, note) in off.items():
        h.worsen(CHECK_WARNING, f"host {host}: {note}; the job times it stamps are off by as much")
