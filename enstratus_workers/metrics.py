"""Prometheus metrics, read from the databases and the queue at scrape time.

The figures live in shared engines, not in one process: the analytics DB holds every attempt,
the heartbeat rows hold every subscriber's pool and every publisher's count, the broker holds
the queues. So the collector keeps no counters of its own; any process that can read those
engines (the admin daemon, a sidecar) serves the same numbers for a fleet of any size. A scrape
costs the same at any history size: attempts and durations come from the totals the recorder
keeps per (action, outcome) (``enstratus_action_total``, a row each), jobs by status from the
job totals plus the unfinished rows (``JobStore.counts``); no query groups the events, and
pruning old rows (``db/retention.py``) leaves every figure as it was.

The cloud API limits (``cloud/limiter.py``) are one row per (provider, account) key: each key's
current rate beside its configured one (a key slowed by throttles reads below it), and its calls,
throttles and deferrals since it was first used, fleet-wide.

Each source that cannot be read is reported as ``enstratus_workers_up{source=...} 0`` and its
metrics are left out of that scrape, rather than failing the whole scrape.
"""

from __future__ import annotations

import logging
from typing import Iterable, Sequence

from prometheus_client import CollectorRegistry, make_wsgi_app, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from .db import Databases, open_databases
from .db.analytics import ACTIONS_KEPT, OTHER_ACTIONS, ActionTotal, ranked_actions
from .db.cloud_rates import CloudRateStore
from .db.schema import DURATION_BUCKETS
from .monitor.stat import DEAD, DEGRADED, RUNNING, STOPPED, WORKER_STATES, SUBSCRIBER, Stat, TransportDepths

log = logging.getLogger(__name__)

PREFIX = "enstratus_workers"
# DURATION_BUCKETS (the histogram's bounds, s) is the schema's: the totals keep those columns
CLUSTER_STATUSES = (RUNNING, DEGRADED, DEAD, STOPPED)


def _err(exc: BaseException) -> str:
    inner = getattr(exc, "orig", None) or exc
    return f"{type(inner).__name__}: {str(inner).splitlines()[0][:200] if str(inner) else ''}"


#: most actions reported by name; the rest are summed under ``OTHER_ACTIONS``. Submitting takes
#: any well-formed action name (a plugin may be installed on the workers only): without a cap, a
#: client inventing names (``foo.v123``, one with an id in it) would add about 19 series per name
#: to every scrape, for ever. The stored totals keep as many (``db/analytics.py``, folded by
#: retention), so the scrape shows the same names as the table keeps.
METRIC_ACTIONS_MAX = ACTIONS_KEPT


def capped_actions(totals: Iterable[ActionTotal], most: int) -> list[ActionTotal]:
    """The totals of the ``most`` actions with the most attempts (by name on a tie) as they are,
    and the others' summed per outcome under the action ``OTHER_ACTIONS``, with the rows
    retention already summed under that name."""
    totals = list(totals)
    per_action: dict[str, int] = {}
    for t in totals:
        if t.action != OTHER_ACTIONS:
            per_action[t.action] = per_action.get(t.action, 0) + t.attempts
    if len(per_action) <= most:
        return totals
    kept = set(ranked_actions(per_action)[:most])
    out = [t for t in totals if t.action in kept]
    others: dict[str, list] = {}
    for t in totals:
        if t.action not in kept:
            o = others.setdefault(t.outcome, [0, 0, [0] * len(t.buckets)])
            o[0] += t.attempts
            o[1] += t.duration_ms
            o[2] = [a + b for a, b in zip(o[2], t.buckets)]
    out += [ActionTotal(OTHER_ACTIONS, outcome, n, ms, tuple(b)) for outcome, (n, ms, b) in sorted(others.items())]
    return out


def duration_histogram(totals: Iterable[ActionTotal], buckets: Sequence[float] = DURATION_BUCKETS) -> dict[str, dict]:
    """Per action: ``{"count", "sum_s", "buckets": [cumulative count per bound]}`` over every
    attempt ever recorded, from the action totals (``EventStore.totals``; outcomes summed).

    ``buckets`` must be bounds the totals keep (``DURATION_BUCKETS`` or some of them): the
    durations themselves may be pruned, so no other bound can be counted afterwards.
    """
    wanted = [DURATION_BUCKETS.index(b) for b in _kept_bounds(buckets)]
    out: dict[str, dict] = {}
    for t in totals:
        h = out.setdefault(t.action, {"count": 0, "sum_ms": 0, "per": [0] * len(DURATION_BUCKETS)})
        h["count"] += t.attempts
        h["sum_ms"] += t.duration_ms
        h["per"] = [a + b for a, b in zip(h["per"], t.buckets)]
    return {action: {"count": h["count"], "sum_s": h["sum_ms"] / 1000,
                     "buckets": [sum(h["per"][:i + 1]) for i in wanted]}
            for action, h in sorted(out.items())}


def attempts_by_outcome(totals: Iterable[ActionTotal]) -> dict[tuple[str, str], int]:
    """``{(action, outcome): attempts}`` over every attempt ever recorded (the action totals)."""
    return {(t.action, t.outcome): t.attempts for t in totals}


def _kept_bounds(buckets: Sequence[float]) -> tuple[float, ...]:
    bounds = tuple(sorted(float(b) for b in buckets))
    unknown = [b for b in bounds if b not in DURATION_BUCKETS]
    if unknown:
        raise ValueError(f"histogram bounds {unknown} are not kept in the totals (they keep {DURATION_BUCKETS})")
    return bounds


class ServiceCollector(Collector):
    """Collects the service's metrics on each scrape (see the module docstring for the names).

    ``dbs``: open databases to read (else opened on the first scrape and kept; ``close`` them).
    ``depths``: a ``depths(queues) -> [QueueDepth]`` callable (else the configured transport).
    """

    def __init__(self, settings, layout, *, dbs: Databases | None = None, depths=None,
                 buckets: Sequence[float] = DURATION_BUCKETS):
        self.settings, self.layout = settings, layout
        self._dbs, self._own_dbs = dbs, dbs is None
        self._depths = depths if depths is not None else TransportDepths(settings, layout, client_name="metrics")
        self._own_depths = depths is None
        self.buckets = _kept_bounds(buckets)

    def close(self) -> None:
        if self._own_depths:
            self._depths.close()
        if self._own_dbs and self._dbs is not None:
            self._dbs.close()
            self._dbs = None

    def describe(self) -> Iterable:
        return []  # no scrape at registration: the names depend on what the databases hold

    def collect(self) -> Iterable:
        up = GaugeMetricFamily(f"{PREFIX}_up", "1 if the source could be read during this scrape",
                               labels=["source"])
        families: list = []
        dbs = None
        try:
            dbs = self._databases()
        except Exception as exc:
            log.warning("metrics: cannot open the databases: %s", _err(exc))
        for source, part in (("provisioning", self._provisioning), ("analytics", self._analytics),
                             ("queue", self._queue)):
            try:
                if source != "queue" and dbs is None:
                    raise RuntimeError("databases not open")
                families.extend(part(dbs))
                up.add_metric([source], 1)
            except Exception as exc:  # one source down must not fail the whole scrape
                log.warning("metrics: cannot read %s: %s", source, _err(exc))
                up.add_metric([source], 0)
        yield up
        yield from families

    def _databases(self) -> Databases:
        if self._dbs is None:
            self._dbs = open_databases(self.settings.worker, self.layout, ensure=False)
        return self._dbs

    # -- sources -------------------------------------------------------------------------------
    def _provisioning(self, dbs: Databases) -> list:
        jobs = GaugeMetricFamily(f"{PREFIX}_jobs", "Jobs in the provisioning DB by status", labels=["status"])
        for status, n in dbs.jobs.counts().items():
            jobs.add_metric([status], n)
        beats = dbs.heartbeats.all()
        published = CounterMetricFamily(f"{PREFIX}_published", "Jobs relayed to the queue, per publisher "
                                        "(since that publisher started)", labels=["publisher"])
        for hb in beats:
            if hb.daemon == "publisher":
                published.add_metric([f"publisher@{hb.name}@{hb.host}"],
                                     float(hb.details.get("published") or 0))
        queues = dbs.desired.queues(self.settings.worker.all_queues)
        stats = [Stat.from_heartbeat(hb, queues) for hb in beats if hb.daemon == SUBSCRIBER]
        return [jobs, published, *self._clusters(stats), *self._cloud_limits(dbs)]

    def _cloud_limits(self, dbs: Databases) -> list:
        labels = ["provider", "account"]
        rate = GaugeMetricFamily(f"{PREFIX}_cloud_rate", "Requests per second a cloud API key may make "
                                 "now (below its configured rate while throttles slow it)", labels=labels)
        configured = GaugeMetricFamily(f"{PREFIX}_cloud_rate_configured", "Requests per second "
                                       "configured for a cloud API key (cloud.rate*)", labels=labels)
        counts = {name: CounterMetricFamily(f"{PREFIX}_cloud_{name}", help_text, labels=labels) for name, help_text in (
            ("requests", "Cloud API calls let through, per key, fleet-wide"),
            ("throttles", "Throttling answers (HTTP 429, Retry-After) from the provider, per key"),
            ("deferrals", "Jobs put back because their key's next turn was beyond cloud.max_wait"))}
        for k in CloudRateStore(dbs.provisioning).rates(self.settings.cloud):
            key = [k.provider, k.account]
            rate.add_metric(key, k.rate)
            configured.add_metric(key, k.configured)
            for name in counts:
                counts[name].add_metric(key, getattr(k, name))
        return [rate, configured, *counts.values()]

    def _clusters(self, stats: list[Stat]) -> list:
        labels = ["cluster"]
        status = GaugeMetricFamily(f"{PREFIX}_cluster_status", "1 for the cluster's current status",
                                   labels=labels + ["status"])
        consumed = CounterMetricFamily(f"{PREFIX}_consumed", "Messages taken off the queues, per "
                                       "subscriber (since it started)", labels=labels)
        workers = GaugeMetricFamily(f"{PREFIX}_workers", "Worker processes by state (working = busy); "
                                    "live clusters only", labels=labels + ["pool", "state"])
        reincarnations = CounterMetricFamily(f"{PREFIX}_worker_reincarnations", "Restarts of worker "
                                             "processes that died; live clusters only", labels=labels + ["pool"])
        task_q = GaugeMetricFamily(f"{PREFIX}_cluster_task_queue", "TQ: tasks waiting for or held by "
                                   "workers; live clusters only", labels=labels)
        done_q = GaugeMetricFamily(f"{PREFIX}_cluster_result_queue", "RQ: outcomes waiting to be "
                                   "recorded and acked; live clusters only", labels=labels)
        for s in stats:
            cid, current = s.cluster_id, s.status
            for st in CLUSTER_STATUSES:
                status.add_metric([cid, st], 1 if st == current else 0)
            consumed.add_metric([cid], float(s.stats.get("received", 0)))
            if current == DEAD:  # its last figures are stale: only its status and counters stand
                continue
            task_q.add_metric([cid], s.task_q_size)
            done_q.add_metric([cid], s.done_q_size)
            pools: dict[str, dict] = {}
            for w in s.worker_details:
                pool = pools.setdefault(w.get("type") or "?", {"rc": 0, **dict.fromkeys(WORKER_STATES, 0)})
                pool[w.get("state") or "stopped"] = pool.get(w.get("state") or "stopped", 0) + 1
                pool["rc"] += int(w.get("reincarnations") or 0)
            for pool, counts in sorted(pools.items()):
                for state in WORKER_STATES:
                    workers.add_metric([cid, pool, state], counts[state])
                reincarnations.add_metric([cid, pool], counts["rc"])
        return [status, consumed, workers, reincarnations, task_q, done_q]

    def _analytics(self, dbs: Databases) -> list:
        # one read of a row per (action, outcome) serves both; the series per action are capped
        totals = capped_actions(dbs.events.totals(), METRIC_ACTIONS_MAX)
        attempts = CounterMetricFamily(f"{PREFIX}_action_attempts", "Attempts of actions recorded in the "
                                       "analytics DB, by outcome", labels=["action", "outcome"])
        for (action, outcome), n in sorted(attempts_by_outcome(totals).items()):
            attempts.add_metric([action, outcome], n)
        duration = HistogramMetricFamily(f"{PREFIX}_action_duration_seconds", "Duration of action attempts",
                                         labels=["action"])
        for action, h in duration_histogram(totals, self.buckets).items():
            bounds = [(_le(b), c) for b, c in zip(self.buckets, h["buckets"])] + [("+Inf", h["count"])]
            duration.add_metric([action], bounds, sum_value=h["sum_s"])
        return [attempts, duration]

    def _queue(self, dbs) -> list:
        messages = GaugeMetricFamily(f"{PREFIX}_queue_messages", "Messages in each queue: ready to deliver, "
                                     "delivered and unacked, delayed (retries), dead-lettered",
                                     labels=["queue", "state"])
        consumers = GaugeMetricFamily(f"{PREFIX}_queue_consumers", "Consumers of each queue", labels=["queue"])
        # every queue of the desired state; the file's while the databases cannot be read
        fallback = self.settings.worker.all_queues
        for d in self._depths(dbs.desired.queues(fallback) if dbs is not None else fallback):
            messages.add_metric([d.queue, "ready"], d.ready)
            messages.add_metric([d.queue, "dead"], d.dead)
            if d.unacked is not None:
                messages.add_metric([d.queue, "unacked"], d.unacked)
            delayed = getattr(d, "delayed", None)  # retries held back by the broker, where it says
            if delayed is not None:
                messages.add_metric([d.queue, "delayed"], delayed)
            if d.consumers is not None:
                consumers.add_metric([d.queue], d.consumers)
        return [messages, consumers]


def _le(bound: float) -> str:
    return repr(float(bound))


def make_registry(settings, layout, *, dbs: Databases | None = None, depths=None,
                  buckets: Sequence[float] = DURATION_BUCKETS) -> CollectorRegistry:
    """A new registry (never the library's global one) holding a ``ServiceCollector``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServiceCollector(settings, layout, dbs=dbs, depths=depths, buckets=buckets))
    return registry


def wsgi_app(registry: CollectorRegistry):
    """A WSGI app serving ``registry`` in the exposition format (for the admin daemon to mount)."""
    return make_wsgi_app(registry)


def serve_metrics(port: int, host: str = "127.0.0.1", *, registry: CollectorRegistry | None = None,
                  settings=None, layout=None):
    """Serve ``/metrics`` on ``host:port`` in a daemon thread; return ``(server, thread)``.

    Pass a ``registry``, or ``settings`` and ``layout`` to build one. Listens on 127.0.0.1 by
    default: the figures name hosts and actions. Stop it with ``server.shutdown()`` and
    ``server.server_close()``. Port 0 picks a free port (``server.server_port``).
    """
    if registry is None:
        if settings is None or layout is None:
            raise ValueError("serve_metrics needs a registry, or settings and layout to build one")
        registry = make_registry(settings, layout)
    return start_http_server(port, addr=host, registry=registry)
