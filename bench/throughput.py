"""Throughput of the running service on RabbitMQ + MariaDB, beside the raw-pika ceiling of the same run.

Bulk (the default): N ``noop`` jobs are submitted in batches of 500 through the bulk submit API
(as an API server would) to a service started with the init script in a scratch install root;
the clock runs from the first submit to the last recorded outcome. ``ceiling.py`` then measures
raw pika on the same broker (N messages) and ``floor.py --bulk`` the same N jobs through this service's
guarantees in straight-line code (the least they cost), and with ``--peers`` Celery and Dramatiq are measured
too (``../shared/bench``: ``drive.py`` into an idle worker, as ``anchors.sh`` runs it).

``--single``: the one-at-a-time path, each job its own call and its own transaction:

- ``--python-jobs`` (2,000) jobs through the Python ``submit()`` API from 4 threads;
- ``--admin-jobs`` (3,000) jobs through the admin API, one ``POST /jobs`` each, from 8 concurrent
  clients, each on its own keep-alive connection (with the admin daemon's CPU per request);
- as many again as ``POST /jobs`` lists of 100 from one client (what a client with many jobs does);

each end to end (first submit to last recorded outcome), and before them the API floor
(``floor.api_floor``: one ``POST /jobs`` per job from 8 clients to a bare ASGI app on uvicorn
that stores each job in its own transaction, behind it the bulk floor's relay and consumer);
then the latency of one admin API
request (``GET /jobs/{id}``) on a reused keep-alive connection: the first (with the connect)
and p50/p99 over 200. Beside the ceiling (``--admin-jobs`` messages) and, with ``--peers``,
Celery's one-by-one ``.delay()`` rate (``drive.py``) for as many tasks, both measured right
before ours in each of ``--rounds`` rounds (the service started once, idle meanwhile).

usage: .venv/bin/python bench/throughput.py [N] [--peers] [--anchors DIR] [--embedded]
       .venv/bin/python bench/throughput.py --single [--python-jobs 2000] [--admin-jobs 3000] [--rounds R] [--peers]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

import ceiling
import floor
import peers
from harness import (
    BenchFailed,
    figure,
    latency_text,
    started_service,
    wait_succeeded,
)

from enstratus_workers.db import NewJob
from enstratus_workers.jobs.submit import submit

BULK_BATCH = 500
PYTHON_THREADS = 4
ADMIN_CLIENTS = 8
ADMIN_GETS = 200
ADMIN_LIST = 100


# -- bulk -------------------------------------------------------------------------------------
def run_bulk(n: int, embedded: bool, window: int | None = None) -> float:
    props = {"publisher.window": window} if window else None
    with started_service(embedded=embedded, worker_props=props) as service:
        base = service.dbs.jobs.counts()["succeeded"]
        queue = service.settings.worker.default_queue
        t0 = time.perf_counter()
        for i in range(0, n, BULK_BATCH):
            service.dbs.jobs.submit_many([NewJob("noop", "{}", queue, 1)] * min(BULK_BATCH, n - i))
        return wait_succeeded(service.dbs, base + n) - t0


def bulk(args) -> None:
    elapsed = run_bulk(args.n, embedded=False)
    ours = args.n / elapsed
    ceil = ceiling.throughput(args.n)["rate"]
    least = floor.throughput(args.n)
    print(f"enstratus-workers (amqp+mariadb) n={args.n} end_to_end_s={elapsed:.2f} rate={ours:.0f}/s")
    print(f"ceiling (raw pika, same run)        rate={ceil:.0f}/s")
    print(f"bulk floor (floor.py --bulk)        rate={least:.0f}/s = {least / ceil:.1%} of ceiling")
    print(f"ratio to ceiling: {ours / ceil:.1%}  ours/floor={ours / least:.2f}x")
    for window in args.window:
        w = args.n / run_bulk(args.n, embedded=False, window=window)
        print(f"enstratus-workers publisher.window={window} rate={w:.0f}/s ({w / ceil:.1%} of ceiling, "
              f"{w / ours:.2f}x the shipped window's)")
    if args.embedded:
        e = run_bulk(args.n, embedded=True)
        print(f"enstratus-workers (embedded sqlite) n={args.n} rate={args.n / e:.0f}/s ({args.n / e / ceil:.1%} of ceiling)")
    if args.peers:
        if not peers.available(args.anchors):
            print(peers.absent_line(args.anchors))
            return
        with peers.Anchors(args.anchors) as anchors:
            rates = {"celery": anchors.rate("celery", args.n)}
            for confirm in (True, False):
                rates[f"dramatiq_confirm_delivery={int(confirm)}"] = anchors.rate("dramatiq", args.n, confirm=confirm)
        for name, rate in rates.items():
            print(f"peer {name:<32} rate={rate:.0f}/s  ours/peer={ours / rate:.2f}x  peer/ceiling={rate / ceil:.1%}")


# -- one at a time ----------------------------------------------------------------------------
def _calls_in_threads(threads: int, n: int, call) -> list[float]:
    """N calls of ``call(k)`` shared out over ``threads`` threads (``k`` is the thread's number);
    each call's duration in ms. The first exception of any thread fails the bench."""
    errors: list[BaseException] = []
    durations: list[list[float]] = [[] for _ in range(threads)]

    def client(k: int) -> None:
        try:
            for _ in range(k, n, threads):
                t0 = time.perf_counter()
                call(k)
                durations[k].append((time.perf_counter() - t0) * 1000)
        except BaseException as exc:  # noqa: BLE001 - BenchFailed is a SystemExit, which a thread would swallow
            errors.append(exc)

    workers = [threading.Thread(target=client, args=(k,)) for k in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    if errors:
        raise BenchFailed(f"a client thread failed: {errors[0]!r}")
    return [d for per_thread in durations for d in per_thread]


def python_one_by_one(service, n: int, threads: int = PYTHON_THREADS) -> tuple[float, list[float]]:
    """N ``submit()`` calls (one transaction each) from ``threads`` threads: seconds end to end,
    and each call's ms."""
    base = service.dbs.jobs.counts()["succeeded"]
    t0 = time.perf_counter()
    calls = _calls_in_threads(threads, n, lambda _k: submit(service.settings, service.dbs, "noop", "{}"))
    return wait_succeeded(service.dbs, base + n) - t0, calls


class _NoDelayConnection(http.client.HTTPConnection):
    """``http.client`` sends a request's headers and its body in two writes, and keeps Nagle's
    algorithm on: the body can wait for the server's delayed ACK (40 ms on Linux) before it
    leaves. curl and urllib3 (so ``requests``) turn Nagle off on every connection; so does this
    client, to measure the daemon rather than that interaction."""

    def connect(self):
        super().connect()
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class AdminClient:
    """One keep-alive connection to the admin API, with the daemon's own token."""

    def __init__(self, service):
        url = urlsplit(service.admin_url())
        self.conn = _NoDelayConnection(url.hostname, url.port, timeout=30)
        self.headers = {"Authorization": f"Bearer {service.admin_token()}", "Accept": "application/json"}

    def request(self, method: str, path: str, body: dict | list | None = None, expect: int = 200):
        headers = dict(self.headers)
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        self.conn.request(method, path, body=data, headers=headers)
        resp = self.conn.getresponse()
        payload = resp.read()   # read to the end: the connection is reused
        if resp.status != expect:
            raise BenchFailed(f"{method} {path} answered {resp.status}: {payload[:300]!r}")
        if resp.getheader("connection", "").lower() == "close":
            raise BenchFailed(f"{method} {path}: the admin daemon closed the keep-alive connection")
        return json.loads(payload)

    def close(self) -> None:
        self.conn.close()


def admin_cpu_s(service) -> float:
    """CPU seconds the admin daemon has used so far: its cost per request, which the machine's
    load does not stretch as it stretches the wall clock."""
    pid = int(next(service.run_dir.glob("admin@*.pid")).read_text().split()[0])
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def admin_one_by_one(service, n: int, clients: int = ADMIN_CLIENTS) -> tuple[float, list[float], float]:
    """N ``POST /jobs`` from ``clients`` concurrent keep-alive connections: seconds end to end,
    each request's ms, and the admin daemon's CPU ms per request (until the last answer)."""
    base = service.dbs.jobs.counts()["succeeded"]
    connections = [AdminClient(service) for _ in range(clients)]
    try:
        for c in connections:  # connect (and check the token) outside the clock
            c.request("GET", "/jobs/stats")
        body = {"action": "noop", "arguments": {}}
        cpu0 = admin_cpu_s(service)
        t0 = time.perf_counter()
        calls = _calls_in_threads(clients, n, lambda k: connections[k].request("POST", "/jobs", body, expect=201))
        cpu_ms = (admin_cpu_s(service) - cpu0) / n * 1000
        return wait_succeeded(service.dbs, base + n) - t0, calls, cpu_ms
    finally:
        for c in connections:
            c.close()


def api_floor_one_by_one(n: int, clients: int = ADMIN_CLIENTS) -> tuple[float, list[float]]:
    """The API floor (``floor.api_floor``: the guarantees behind a bare ASGI app on uvicorn)
    driven as ``admin_one_by_one`` drives the admin API: seconds end to end, each request's ms."""
    body = json.dumps({"action": "noop", "arguments": {}}).encode()
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    with floor.api_floor(n + clients) as (port, finished):
        connections = [_NoDelayConnection("127.0.0.1", port, timeout=30) for _ in range(clients)]

        def post(k: int) -> None:
            connections[k].request("POST", "/jobs", body=body, headers=headers)
            resp = connections[k].getresponse()
            payload = resp.read()
            if resp.status != 201:
                raise BenchFailed(f"the API floor answered {resp.status}: {payload[:300]!r}")

        try:
            for k in range(clients):   # connect outside the clock (one job each, counted by the floor)
                post(k)
            t0 = time.perf_counter()
            calls = _calls_in_threads(clients, n, post)
            return finished() - t0, calls
        finally:
            for c in connections:
                c.close()


def admin_lists(service, n: int, per: int = ADMIN_LIST) -> float:
    """N jobs through ``POST /jobs`` as lists of ``per`` from one keep-alive client (what a
    client with many jobs should do): seconds end to end."""
    base = service.dbs.jobs.counts()["succeeded"]
    client = AdminClient(service)
    try:
        client.request("GET", "/jobs/stats")
        t0 = time.perf_counter()
        for i in range(0, n, per):
            client.request("POST", "/jobs", [{"action": "noop", "arguments": {}}] * min(per, n - i), expect=201)
        return wait_succeeded(service.dbs, base + n) - t0
    finally:
        client.close()


def admin_request_latency(service, n: int = ADMIN_GETS) -> tuple[float, list[float]]:
    """``GET /jobs/{id}`` on one keep-alive connection: the first request (connect included)
    and the next ``n``, in ms."""
    job_id = service.dbs.jobs.list(limit=1)[0].job_id
    client = AdminClient(service)
    try:
        samples = []
        for _ in range(n + 1):
            t0 = time.perf_counter()
            client.request("GET", f"/jobs/{job_id}")
            samples.append((time.perf_counter() - t0) * 1000)
    finally:
        client.close()
    return samples[0], samples[1:]


def single(args) -> None:
    """Each round: the ceiling and Celery's one-by-one rate (with ``--peers``), then ours, back to
    back while our service idles, so a ratio compares runs a minute apart, not the start and the
    end of the invocation (on a shared machine the load moves more than the figures do)."""
    anchors = peers.opened(args)
    try:
        with started_service() as service:
            for r in range(1, args.rounds + 1):
                tag = f"round {r}: " if args.rounds > 1 else ""
                ceil = ceiling.throughput(args.admin_jobs)["rate"]
                ref = {"ceiling": ceil}
                figure(f"{tag}ceiling (raw pika)", f"rate={ceil:.0f}/s n={args.admin_jobs}")
                if anchors is not None:
                    celery = ref["celery"] = anchors.rate("celery", args.admin_jobs)
                    figure(f"{tag}peer celery: one .delay() per task", f"rate={celery:.0f}/s n={args.admin_jobs}",
                           celery, {"ceiling": ceil}, who="celery")
                floor_s, floor_calls = api_floor_one_by_one(args.admin_jobs)
                floor_rate = args.admin_jobs / floor_s
                figure(f"{tag}API floor: one POST /jobs per job, {ADMIN_CLIENTS} clients (floor.py)",
                       f"rate={floor_rate:.0f}/s n={args.admin_jobs}", floor_rate, ref, who="floor")
                figure(f"  each POST /jobs to the API floor, {ADMIN_CLIENTS} clients", latency_text(floor_calls))
                py_s, py_calls = python_one_by_one(service, args.python_jobs)
                admin_s, admin_calls, admin_cpu_ms = admin_one_by_one(service, args.admin_jobs)
                py_rate, admin_rate = args.python_jobs / py_s, args.admin_jobs / admin_s
                figure(f"{tag}one submit() per job, {PYTHON_THREADS} threads",
                       f"rate={py_rate:.0f}/s n={args.python_jobs} end_to_end_s={py_s:.2f}", py_rate, ref)
                figure(f"  each submit() call, {PYTHON_THREADS} threads", latency_text(py_calls))
                figure(f"{tag}one POST /jobs per job, {ADMIN_CLIENTS} keep-alive clients",
                       f"rate={admin_rate:.0f}/s n={args.admin_jobs} end_to_end_s={admin_s:.2f}", admin_rate,
                       {**ref, "API floor": floor_rate})
                figure(f"  each POST /jobs, {ADMIN_CLIENTS} clients", latency_text(admin_calls))
                figure("  the admin daemon's CPU per POST /jobs", f"{admin_cpu_ms:.2f}ms")
                lists_rate = args.admin_jobs / admin_lists(service, args.admin_jobs)
                figure(f"{tag}POST /jobs with lists of {ADMIN_LIST}, one client",
                       f"rate={lists_rate:.0f}/s n={args.admin_jobs}", lists_rate, ref)
                print(f"  load: {' '.join(f'{v:.1f}' for v in os.getloadavg())}", flush=True)
            first_ms, gets_ms = admin_request_latency(service)
        figure("admin GET /jobs/{id}, first on a new connection", f"{first_ms:.2f}ms")
        figure("admin GET /jobs/{id}, reused keep-alive connection", latency_text(gets_ms))
    finally:
        if anchors is not None:
            anchors.close()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("n", type=int, nargs="?", default=10000, help="bulk: jobs (batches of 500)")
    ap.add_argument("--single", action="store_true", help="the one-at-a-time path instead of bulk")
    ap.add_argument("--python-jobs", type=int, default=2000, help="--single: jobs through submit()")
    ap.add_argument("--admin-jobs", type=int, default=3000, help="--single: jobs through POST /jobs")
    ap.add_argument("--rounds", type=int, default=1, help="--single: rounds of Celery then ours, back to back")
    peers.add_arguments(ap, "also Celery (and Dramatiq in bulk), from the anchors")
    ap.add_argument("--embedded", action="store_true", help="bulk: also measure the embedded default")
    ap.add_argument("--window", type=int, action="append", default=[],
                    help="bulk: also measure with this publisher.window (repeatable)")
    args = ap.parse_args(argv)
    if not all(1 <= v <= 1_000_000 for v in (args.n, args.python_jobs, args.admin_jobs, args.rounds)):
        ap.error("N, --python-jobs and --admin-jobs must be 1..1000000")
    single(args) if args.single else bulk(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
