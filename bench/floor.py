"""The outbox floor: the least idle latency a service with this one's guarantees can have here.

The raw-pika ceiling (``ceiling.py``) is one message from a publisher to a consumer. This
service promises more on a job's way from a submit to its action's start, and each promise is a
step the ceiling does not take:

1. the job is a committed row in MariaDB before any message exists (the submit's INSERT and
   COMMIT, then a ring on a Unix datagram socket, as ``jobs/wakeup.py`` rings);
2. a relay process, woken by the ring, reads the pending row locked (``FOR UPDATE SKIP
   LOCKED``), publishes it persistent with a publisher confirm, marks it queued and commits;
3. the consumer reads the job's row before it runs the delivery (a delivery runs only if it
   matches an unfinished job), and hands it to a worker process (a pipe), whose start is the
   action's start;
4. (after the start, not timed here) the outcome is written, then the delivery is acked.

With ``direct`` (``--direct``), step 2 is the submitter's own: it publishes the job right after
its commit and marks it queued once confirmed, with no relay process and no ring (what a design
without the outbox's relay hop could reach; the job is still in the database before its message).

Here each step is done with raw PyMySQL and raw pika in straight-line code: no framework, no
threads, no fair share, no batching, no retries, no health checks. What it measures is the
floor of that design on this machine's MariaDB and RabbitMQ, in Python: the service's latency
divided by it is what the service's own code adds; the floor divided by Celery's (or the
ceiling's) is what the guarantees cost before any of the service's code runs.

**Bulk** (``--bulk N``): the same steps, each batched as far as the guarantees allow: the
submitter stores the N jobs in transactions of 500 rows (one multi-row INSERT each) and rings;
the relay (pika's own I/O loop) takes up to 500 pending rows per locked read, publishes them
with pipelined confirms, and marks them queued in one UPDATE and commit once all are confirmed;
the consumer takes what has arrived (prefetch 500), checks the rows in one SELECT, hands the
runnable ones to the worker process in one message, records their outcomes (one UPDATE) and
events (one multi-row INSERT) in one transaction, then acks them all with one ``multiple`` ack.
The clock runs from the first submit to the N-th outcome committed, as ``throughput.py`` times
the service (which runs it beside the ceiling). It has no fair share, no relay window, no
per-job result and no totals: it is what the bulk path costs with these guarantees and nothing
else, in Python, on this machine's servers.

**API** (``api_floor``, driven by ``throughput.py --single``): one ``POST /jobs`` per job to
uvicorn with httptools around a bare ASGI callable, whose one writer thread group-commits the
jobs that came while it wrote and rings; behind it the bulk floor's relay and consumer. The
clock runs from the first request to the N-th outcome committed.

usage: .venv/bin/python bench/floor.py [-n 200] [--direct] [--gap S]     (``latency.py`` runs it beside the service)
       .venv/bin/python bench/floor.py --bulk N                          (``throughput.py`` runs it beside the service)
Needs MariaDB on 127.0.0.1:3306 (root) and RabbitMQ on 127.0.0.1:5672 (guest/guest); it makes
the database ``ewbench_<tag>`` and the queue ``ewbench.floor.<tag>`` and removes both.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import select
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (AMQP_URL, MYSQL, BenchFailed, _drop_database, delete_amqp, figure, latency_text, new_tag,
                     receipt, stop_process)

WARM_UP = 20
_SPAWN = mp.get_context("spawn")
PENDING, QUEUED, SUCCEEDED = "pending", "queued", "succeeded"


def _db(database: str, autocommit: bool):
    import pymysql

    conn = pymysql.connect(**MYSQL, database=database, autocommit=autocommit)
    # the service's isolation level: SKIP LOCKED without gap locks (db/engine.py)
    conn.cursor().execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
    return conn


def _relay(database: str, queue: str, bell: bytes, stop, ready) -> None:
    """Step 2: on each ring, one locked read of the pending rows, a confirmed publish of each,
    the queued mark, one commit."""
    import pika

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(bell)
    sock.setblocking(False)
    db = _db(database, autocommit=False)
    cur = db.cursor()
    conn = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    ch = conn.channel()
    ch.confirm_delivery()
    persistent = _persistent()
    ready.set()
    while not stop.is_set():
        if not select.select([sock], [], [], 0.2)[0]:
            continue
        while True:
            try:
                sock.recv(64)
            except BlockingIOError:
                break
        cur.execute(f"SELECT id, action, arguments FROM job WHERE status = '{PENDING}' "
                    "ORDER BY id LIMIT 100 FOR UPDATE SKIP LOCKED")
        rows = cur.fetchall()
        for job_id, action, arguments in rows:
            ch.basic_publish("", queue, f'{{"id":{job_id},"action":"{action}","arguments":{arguments}}}'.encode(),
                             persistent)   # returns once confirmed
        if rows:
            cur.execute(f"UPDATE job SET status = '{QUEUED}' WHERE id IN ({', '.join(str(r[0]) for r in rows)})")
        db.commit()
    conn.close()
    db.close()


def _persistent():
    """The properties of a job's message: persistent JSON, as the service publishes it."""
    import pika

    return pika.BasicProperties(delivery_mode=2, content_type="application/json")


def _write(cur, sql: str) -> None:
    """An autocommitted write, tried again after a deadlock: the direct floor's queued mark and
    the consumer's outcome can meet on one row (InnoDB picks a victim)."""
    import pymysql

    for tries_left in (2, 1, 0):
        try:
            cur.execute(sql)
            return
        except pymysql.err.OperationalError as exc:
            if exc.args[0] != 1213 or not tries_left:
                raise


def _mark_queued(db, job_id: int) -> None:
    """The direct floor's mark after the confirm; a deadlock with the consumer's outcome (which
    then wins: the mark only moves a pending row) rolls it back."""
    import pymysql

    try:
        db.cursor().execute(f"UPDATE job SET status = '{QUEUED}' WHERE id = {int(job_id)} AND status = '{PENDING}'")
        db.commit()
    except pymysql.err.OperationalError as exc:
        if exc.args[0] != 1213:
            raise
        db.rollback()


def _worker(conn) -> None:
    """The worker process of step 3: stamp the action's start, answer."""
    while True:
        job_id = conn.recv()
        if job_id is None:
            return
        conn.send((job_id, time.time()))


def _consume(database: str, queue: str, starts, ready) -> None:
    """Step 3 and 4: the row check, the hand to the worker process, the outcome, the ack."""
    import json

    import pika

    mine, theirs = _SPAWN.Pipe()
    worker = _SPAWN.Process(target=_worker, args=(theirs,))
    worker.start()
    db = _db(database, autocommit=True)
    cur = db.cursor()
    conn = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    ch = conn.channel()
    ch.basic_qos(prefetch_count=10)
    ready.set()
    try:
        for method, _props, body in ch.consume(queue, auto_ack=False):
            if body == b"stop":
                ch.basic_ack(method.delivery_tag)
                break
            job_id = json.loads(body)["id"]
            cur.execute(f"SELECT status FROM job WHERE id = {int(job_id)}")
            row = cur.fetchone()
            if row is None or row[0] not in (PENDING, QUEUED):
                ch.basic_ack(method.delivery_tag)   # a stranger or a finished job: never run
                continue
            mine.send(job_id)
            done = mine.recv()
            _write(cur, f"UPDATE job SET status = '{SUCCEEDED}' WHERE id = {int(job_id)}")
            ch.basic_ack(method.delivery_tag)
            starts.send(done)
        ch.cancel()
    finally:
        mine.send(None)
        worker.join(10)
        conn.close()
        db.close()


def _create(admin, database: str, queue: str) -> None:
    """The floor's database (the jobs and, for the bulk floor, their events) and its queue."""
    import pika

    admin.cursor().execute(f"CREATE DATABASE `{database}`")
    admin.cursor().execute(
        f"CREATE TABLE `{database}`.job (id BIGINT AUTO_INCREMENT PRIMARY KEY, action VARCHAR(200) NOT NULL, "
        "arguments MEDIUMTEXT NOT NULL, status VARCHAR(16) NOT NULL, created_ms BIGINT NOT NULL, "
        "KEY ix_status (status, id)) ENGINE=InnoDB")
    admin.cursor().execute(
        f"CREATE TABLE `{database}`.event (id BIGINT AUTO_INCREMENT PRIMARY KEY, job_id BIGINT NOT NULL, "
        "status VARCHAR(16) NOT NULL, at_ms BIGINT NOT NULL, KEY ix_job (job_id)) ENGINE=InnoDB")
    broker = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    broker.channel().queue_declare(queue, durable=True)
    broker.close()


@contextlib.contextmanager
def _scratch():
    """``(database, queue, bell)`` of the floor's own, made here and removed after, whatever happened."""
    import pymysql

    tag = new_tag()
    database, queue = f"ewbench_{tag}", f"ewbench.floor.{tag}"
    admin = pymysql.connect(**MYSQL, autocommit=True)
    try:
        _create(admin, database, queue)
        yield database, queue, f"\0ewbench-floor-{tag}".encode()
    finally:
        admin.close()
        _drop_database(database)
        delete_amqp([], [queue])


@contextlib.contextmanager
def _processes(what: str):
    """``start(target, *args)``: starts ``target(*args, ready)`` in a process of its own and
    returns once it has set ``ready``; every process started is stopped on the way out."""
    procs = []

    def start(target, *args) -> None:
        ready = _SPAWN.Event()
        proc = _SPAWN.Process(target=target, args=(*args, ready))
        procs.append(proc)
        proc.start()
        if not ready.wait(60):
            raise BenchFailed(f"{what}'s {target.__name__.strip('_')} process did not start")

    def terminate_all() -> None:
        """SIGTERM to each process still running (a server that runs until told), before the joins."""
        for proc in procs:
            if proc.pid is not None and proc.is_alive():
                proc.terminate()

    start.terminate_all = terminate_all
    try:
        yield start
    finally:
        for proc in procs:
            stop_process(proc, 10)


def latency(n: int, direct: bool = False, gap: float = 0.0) -> list[float]:
    """Submit -> action start in ms for N jobs one at a time (warm-ups dropped), ``gap`` seconds
    apart; with ``direct`` the submitter publishes (module docstring)."""
    import pika

    with _scratch() as (database, queue, bell), _processes("the floor") as start:
        stop = _SPAWN.Event()
        mine, theirs = _SPAWN.Pipe()
        start(_consume, database, queue, theirs)
        if not direct:
            start(_relay, database, queue, bell, stop)
        client = _db(database, autocommit=False)
        cur = client.cursor()
        ring = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        channel = None
        if direct:
            own = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
            channel = own.channel()
            channel.confirm_delivery()
            persistent = _persistent()
        samples = []
        for i in range(n + WARM_UP):
            t0 = time.time()
            cur.execute("INSERT INTO job (action, arguments, status, created_ms) VALUES (%s, %s, %s, %s)",
                        ("bench.stamp", "{}", PENDING, int(t0 * 1000)))
            job_id = cur.lastrowid
            client.commit()
            if direct:
                channel.basic_publish("", queue, f'{{"id":{job_id},"action":"bench.stamp","arguments":{{}}}}'.encode(),
                                      persistent)   # returns once confirmed
                _mark_queued(client, job_id)
            else:
                ring.sendto(b"!", bell)
            started = receipt(mine, job_id, f"the start of job {i} of the floor")
            if i >= WARM_UP:
                samples.append((started - t0) * 1000)
            if gap:
                time.sleep(gap)
        ring.close()
        client.close()
        if channel is not None:
            own.close()
        stop.set()
        broker = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
        broker.channel().basic_publish("", queue, b"stop")
        broker.close()
        return samples


# -- bulk ---------------------------------------------------------------------------------------
BULK_BATCH = 500       # the submitter's rows per transaction, the relay's per locked read, the prefetch


class _BulkRelay:
    """Step 2 in bulk, on pika's I/O loop: each ring (a datagram on ``bell``) starts locked reads
    of up to ``BULK_BATCH`` pending rows; a read's rows are published with pipelined confirms,
    marked queued in one UPDATE and committed once all are confirmed, then the next read
    follows, until one finds nothing. ``b"stop"`` on the bell ends it."""

    def __init__(self, database: str, queue: str, bell: bytes, ready):
        import pika
        from pika.adapters.select_connection import PollEvents

        self.queue, self.ready, self.read_event = queue, ready, PollEvents.READ
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(bell)
        self.sock.setblocking(False)
        self.db = _db(database, autocommit=False)
        self.cur = self.db.cursor()
        self.persistent = _persistent()
        self.published = self.confirmed = 0
        self.batch: list[int] | None = None      # the ids in flight, published, not all confirmed
        self.batch_end = 0                       # the delivery tag of the batch's last message
        self.conn = pika.SelectConnection(pika.URLParameters(AMQP_URL), on_open_callback=self._opened,
                                          on_close_callback=lambda *_a: self.conn.ioloop.stop())

    def run(self) -> None:
        self.conn.ioloop.start()
        self.db.close()

    def _opened(self, conn) -> None:
        conn.channel(on_open_callback=self._channel_open)

    def _channel_open(self, ch) -> None:
        self.ch = ch
        ch.confirm_delivery(self._confirmed)
        self.conn.ioloop.add_handler(self.sock.fileno(), self._rung, self.read_event)
        self.ready.set()

    def _rung(self, _fd, _events) -> None:
        stop = False
        while True:
            try:
                stop |= self.sock.recv(64) == b"stop"
            except BlockingIOError:
                break
        if stop:
            self.conn.close()
        elif self.batch is None:
            self._next()

    def _next(self) -> None:
        self.cur.execute(f"SELECT id, action, arguments FROM job WHERE status = '{PENDING}' "
                         f"ORDER BY id LIMIT {BULK_BATCH} FOR UPDATE SKIP LOCKED")
        rows = self.cur.fetchall()
        if not rows:
            self.db.commit()
            self.batch = None
            return
        self.batch = [r[0] for r in rows]
        for job_id, action, arguments in rows:
            self.ch.basic_publish("", self.queue, f'{{"id":{job_id},"action":"{action}","arguments":{arguments}}}'
                                  .encode(), self.persistent)
        self.published += len(rows)
        self.batch_end = self.published

    def _confirmed(self, frame) -> None:
        m = frame.method
        if type(m).__name__ != "Ack":
            raise BenchFailed(f"the bulk floor's relay got a {type(m).__name__} from the broker")
        self.confirmed = m.delivery_tag if m.multiple else self.confirmed + 1
        if self.batch is not None and self.confirmed >= self.batch_end:
            self.cur.execute(f"UPDATE job SET status = '{QUEUED}' WHERE id IN ({', '.join(map(str, self.batch))})")
            self.db.commit()
            self._next()


def _bulk_relay(database: str, queue: str, bell: bytes, ready) -> None:
    _BulkRelay(database, queue, bell, ready).run()


def _bulk_worker(conn) -> None:
    """The worker process in bulk: a list of ids in, each one's start time out."""
    while True:
        ids = conn.recv()
        if ids is None:
            return
        conn.send([(job_id, time.time()) for job_id in ids])


def _bulk_consume(database: str, queue: str, n: int, done, ready) -> None:
    """Steps 3 and 4 in bulk: what has arrived, checked in one read, run in one hand to the
    worker process, recorded in one transaction (outcomes and events), acked at once."""
    import json

    import pika

    mine, theirs = _SPAWN.Pipe()
    worker = _SPAWN.Process(target=_bulk_worker, args=(theirs,))
    worker.start()
    db = _db(database, autocommit=False)
    cur = db.cursor()
    conn = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    ch = conn.channel()
    ch.basic_qos(prefetch_count=BULK_BATCH)
    arrived: list[tuple[int, bytes]] = []
    ch.basic_consume(queue, lambda _ch, method, _props, body: arrived.append((method.delivery_tag, body)))
    ready.set()
    recorded = 0
    try:
        while recorded < n:
            conn.process_data_events(time_limit=None)   # blocks until something arrives
            conn.process_data_events(time_limit=0)      # and takes what came with it
            if not arrived:
                continue
            batch, arrived[:] = list(arrived), []
            ids = [json.loads(body)["id"] for _tag, body in batch]
            cur.execute(f"SELECT id FROM job WHERE id IN ({', '.join(map(str, ids))}) "
                        f"AND status IN ('{PENDING}', '{QUEUED}')")
            runnable = [row[0] for row in cur.fetchall()]   # strangers and finished jobs never run
            if runnable:
                mine.send(runnable)
                starts = mine.recv()
                cur.execute(f"UPDATE job SET status = '{SUCCEEDED}' WHERE id IN ({', '.join(map(str, runnable))})")
                cur.executemany("INSERT INTO event (job_id, status, at_ms) VALUES (%s, %s, %s)",
                                [(job_id, SUCCEEDED, int(start * 1000)) for job_id, start in starts])
            db.commit()
            ch.basic_ack(batch[-1][0], multiple=True)       # after the outcomes are committed
            recorded += len(runnable)
        done.put(time.perf_counter())
    finally:
        mine.send(None)
        worker.join(10)
        conn.close()
        db.close()


def throughput(n: int) -> float:
    """The bulk floor's rate for N jobs (module docstring): first submit to N-th outcome committed."""
    with _scratch() as (database, queue, bell), _processes("the bulk floor") as start:
        done = _SPAWN.Queue()
        start(_bulk_consume, database, queue, n, done)
        start(_bulk_relay, database, queue, bell)
        client = _db(database, autocommit=False)
        cur = client.cursor()
        ring = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        t0 = time.perf_counter()
        for i in range(0, n, BULK_BATCH):
            now_ms = int(time.time() * 1000)
            cur.executemany("INSERT INTO job (action, arguments, status, created_ms) VALUES (%s, %s, %s, %s)",
                            [("noop", "{}", PENDING, now_ms)] * min(BULK_BATCH, n - i))
            client.commit()
            ring.sendto(b"!", bell)
        try:
            end = done.get(timeout=600)
        except Exception as exc:
            raise BenchFailed(f"the bulk floor did not record {n} outcomes in 600 s") from exc
        ring.sendto(b"stop", bell)
        ring.close()
        client.close()
        return n / (end - t0)



# -- one POST /jobs per job ------------------------------------------------------------------------
def _api_server(database: str, bell: bytes, port_out, ready) -> None:
    """The API floor's HTTP side: uvicorn with httptools (the admin daemon's server and parser)
    around a bare ASGI callable, no framework. Each ``POST /jobs`` is parsed on the event loop
    and handed to one writer thread, which stores every job that came while it wrote in one
    transaction (group commit, as the admin daemon's submitter does), rings the relay, and
    answers each request 201 with its job's id. No authentication, no validation beyond JSON.
    (Each request its own transaction on the loop ran at 1.1x the service's rate here: a floor
    without group commit is no floor.)"""
    import asyncio
    import json
    import threading

    import uvicorn

    db = _db(database, autocommit=False)
    cur = db.cursor()
    ring = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    waiting: list = []                 # (job, future, loop) not yet stored
    arrived = threading.Condition()

    def writer() -> None:
        while True:
            with arrived:
                while not waiting:
                    arrived.wait()
                batch, waiting[:] = list(waiting), []
            now_ms = int(time.time() * 1000)
            cur.executemany("INSERT INTO job (action, arguments, status, created_ms) VALUES (%s, %s, %s, %s)",
                            [(job["action"], json.dumps(job.get("arguments", {})), PENDING, now_ms)
                             for job, _f, _l in batch])
            first = cur.lastrowid       # a multi-row INSERT's ids are consecutive from its first
            db.commit()
            ring.sendto(b"!", bell)
            for i, (_job, future, loop) in enumerate(batch):
                loop.call_soon_threadsafe(future.set_result, first + i)

    threading.Thread(target=writer, daemon=True).start()

    async def app(scope, receive, send) -> None:
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        with arrived:
            waiting.append((json.loads(body), future, loop))
            arrived.notify()
        out = b'{"job_id":%d}' % await future
        await send({"type": "http.response.start", "status": 201,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(out))]})
        await send({"type": "http.response.body", "body": out})

    listening = socket.socket()
    # a response is two writes (its start, its body): with Nagle on, the body waits for the
    # client's delayed ACK, 40 ms (the admin daemon turns it off too); accepted sockets inherit it
    listening.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    listening.bind(("127.0.0.1", 0))
    listening.listen(128)
    port_out.put(listening.getsockname()[1])
    ready.set()   # connections wait in the backlog until the server takes them
    config = uvicorn.Config(app, http="httptools", loop="asyncio", lifespan="off", log_level="warning",
                            access_log=False)
    uvicorn.Server(config).run(sockets=[listening])


@contextlib.contextmanager
def api_floor(n: int):
    """The API floor for N jobs (``throughput.py --single`` drives it): yields ``(port,
    finished)``, where ``finished()`` blocks until N outcomes are committed and returns that
    moment (``perf_counter``). Behind the HTTP side, the bulk floor's relay and consumer: woken
    by each ring, they batch whatever has come meanwhile, as this service's relay and recorder
    do under load."""
    with _scratch() as (database, queue, bell), _processes("the API floor") as start:
        done, port = _SPAWN.Queue(), _SPAWN.Queue()
        start(_bulk_consume, database, queue, n, done)
        start(_bulk_relay, database, queue, bell)
        start(_api_server, database, bell, port)

        def finished() -> float:
            try:
                return done.get(timeout=600)
            except Exception as exc:
                raise BenchFailed(f"the API floor did not record {n} outcomes in 600 s") from exc

        try:
            yield port.get(timeout=60), finished
        finally:
            ring = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            ring.sendto(b"stop", bell)
            ring.close()
            start.terminate_all()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=200, help="jobs (after 20 warm-ups)")
    ap.add_argument("--direct", action="store_true", help="the submitter publishes: no relay hop")
    ap.add_argument("--gap", type=float, default=0.0, help="seconds between jobs")
    ap.add_argument("--bulk", type=int, metavar="N", help="the bulk floor for N jobs instead (module docstring)")
    args = ap.parse_args(argv)
    if args.bulk is not None:
        if not 1 <= args.bulk <= 1_000_000:
            ap.error("--bulk 1..1000000")
        figure("bulk floor: first submit->last outcome", f"rate={throughput(args.bulk):.0f}/s n={args.bulk}")
        return 0
    if not 1 <= args.n <= 100_000:
        ap.error("-n 1..100000")
    what = "direct floor" if args.direct else "outbox floor"
    figure(f"{what}: submit->action start", latency_text(latency(args.n, args.direct, args.gap)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
