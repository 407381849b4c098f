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

usage: .venv/bin/python bench/floor.py [-n 200] [--direct] [--gap S]     (``latency.py`` runs it beside the service)
Needs MariaDB on 127.0.0.1:3306 (root) and RabbitMQ on 127.0.0.1:5672 (guest/guest); it makes
the database ``ewbench_<tag>`` and the queue ``ewbench.floor.<tag>`` and removes both.
"""

from __future__ import annotations

import argparse
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


def _relay(database: str, queue: str, bell: bytes, ready, stop) -> None:
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


def _consume(database: str, queue: str, ready, starts) -> None:
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


def latency(n: int, direct: bool = False, gap: float = 0.0) -> list[float]:
    """Submit -> action start in ms for N jobs one at a time (warm-ups dropped), ``gap`` seconds
    apart; with ``direct`` the submitter publishes (module docstring)."""
    tag = new_tag()
    database, queue = f"ewbench_{tag}", f"ewbench.floor.{tag}"
    bell = f"\0ewbench-floor-{tag}".encode()
    import pika
    import pymysql

    admin = pymysql.connect(**MYSQL, autocommit=True)
    procs = []
    try:
        admin.cursor().execute(f"CREATE DATABASE `{database}`")
        admin.cursor().execute(
            f"CREATE TABLE `{database}`.job (id BIGINT AUTO_INCREMENT PRIMARY KEY, action VARCHAR(200) NOT NULL, "
            "arguments MEDIUMTEXT NOT NULL, status VARCHAR(16) NOT NULL, created_ms BIGINT NOT NULL, "
            "KEY ix_status (status, id)) ENGINE=InnoDB")
        broker = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
        broker.channel().queue_declare(queue, durable=True)
        broker.close()
        stop = _SPAWN.Event()
        relay_ready, consumer_ready = _SPAWN.Event(), _SPAWN.Event()
        mine, theirs = _SPAWN.Pipe()
        procs = [_SPAWN.Process(target=_consume, args=(database, queue, consumer_ready, theirs))]
        if direct:
            relay_ready.set()
        else:
            procs.append(_SPAWN.Process(target=_relay, args=(database, queue, bell, relay_ready, stop)))
        for p in procs:
            p.start()
        if not (relay_ready.wait(60) and consumer_ready.wait(60)):
            raise BenchFailed("the floor's relay or consumer process did not start")
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
    finally:
        for p in procs:
            stop_process(p, 10)
        admin.close()
        _drop_database(database)
        delete_amqp([], [queue])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=200, help="jobs (after 20 warm-ups)")
    ap.add_argument("--direct", action="store_true", help="the submitter publishes: no relay hop")
    ap.add_argument("--gap", type=float, default=0.0, help="seconds between jobs")
    args = ap.parse_args(argv)
    if not 1 <= args.n <= 100_000:
        ap.error("-n 1..100000")
    what = "direct floor" if args.direct else "outbox floor"
    figure(f"{what}: submit->action start", latency_text(latency(args.n, args.direct, args.gap)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
