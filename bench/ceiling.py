"""The raw-pika ceiling on this machine's RabbitMQ: the most any Python service can get out of
the broker with the same guarantees as ours, measured beside our figures in the same run.

- **throughput**: N persistent messages published by one process (pika ``SelectConnection``,
  pipelined publisher confirms, at most ``--window`` unconfirmed), taken by another (blocking
  consumer, prefetch 500, manual ``multiple`` acks every 100); the clock runs from the first
  publish to the N-th delivery. The same definition as ``../shared/bench/ceiling.py``.
- **latency**: one persistent message at a time, published with a confirm, received by a
  consumer already waiting in another process; the figure is publish start -> receipt
  (``time.time()`` on both sides: one machine, one clock), p50/p99 over N after 5 warm-ups.

Each run declares its own queue ``ewbench.ceiling.<tag>`` and deletes it after, whatever happened.

usage: .venv/bin/python bench/ceiling.py [N] [--latency N] [--window 1000]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pika
from harness import AMQP_URL, BenchFailed, delete_amqp, figure, latency_text, new_tag, receipt, stop_process

BODY = b'{"action":"noop","id":0}'
PERSISTENT = pika.BasicProperties(delivery_mode=2, content_type="application/json")
LATENCY_WARM_UP = 5
_SPAWN = mp.get_context("spawn")   # the consumer inherits no socket or thread from the publisher


def _declare(queue: str) -> None:
    conn = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    try:
        conn.channel().queue_declare(queue, durable=True)
    finally:
        conn.close()


# -- throughput ---------------------------------------------------------------------------------
def _count_deliveries(queue: str, n: int, ready, done) -> None:
    """The consumer process: take N deliveries, ack every 100th (multiple), report the time."""
    conn = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    ch = conn.channel()
    ch.basic_qos(prefetch_count=500)
    ready.set()
    for got, (method, _props, _body) in enumerate(ch.consume(queue, auto_ack=False), start=1):
        if got % 100 == 0 or got == n:
            ch.basic_ack(method.delivery_tag, multiple=True)
        if got == n:
            break
    done.put(time.perf_counter())
    ch.cancel()
    conn.close()


class _PipelinedPublisher:
    """Publishes N messages keeping up to ``window`` unconfirmed, on pika's own I/O loop."""

    def __init__(self, queue: str, n: int, window: int):
        self.queue, self.n, self.window = queue, n, window
        self.sent = self.confirmed = 0
        self.t0 = self.t_confirmed = None
        self.conn = pika.SelectConnection(pika.URLParameters(AMQP_URL), on_open_callback=self._opened,
                                          on_open_error_callback=self._failed,
                                          on_close_callback=lambda *_a: self.conn.ioloop.stop())

    def run(self) -> None:
        self.conn.ioloop.start()
        if self.t_confirmed is None:
            raise BenchFailed(f"the ceiling's publisher stopped after {self.confirmed}/{self.n} confirms")

    def _failed(self, _conn, exc) -> None:
        self.conn.ioloop.stop()
        raise BenchFailed(f"cannot connect to RabbitMQ for the ceiling: {exc}")

    def _opened(self, conn) -> None:
        conn.channel(on_open_callback=self._channel_open)

    def _channel_open(self, ch) -> None:
        self.ch = ch
        ch.confirm_delivery(self._confirmed)
        self.t0 = time.perf_counter()
        self._pump()

    def _pump(self) -> None:
        while self.sent < self.n and self.sent - self.confirmed < self.window:
            self.ch.basic_publish("", self.queue, BODY, PERSISTENT)
            self.sent += 1

    def _confirmed(self, frame) -> None:
        m = frame.method
        self.confirmed = m.delivery_tag if m.multiple else self.confirmed + 1
        if self.confirmed >= self.n:
            self.t_confirmed = time.perf_counter()
            self.conn.close()
        else:
            self._pump()


def throughput(n: int, window: int = 1000) -> dict:
    """The ceiling's rate for N messages: ``{"rate", "end_to_end_s", "publish_confirmed_s"}``."""
    queue = f"ewbench.ceiling.{new_tag()}"
    try:
        _declare(queue)
        ready, done = _SPAWN.Event(), _SPAWN.Queue()
        consumer = _SPAWN.Process(target=_count_deliveries, args=(queue, n, ready, done))
        consumer.start()
        try:
            if not ready.wait(60):
                raise BenchFailed("the ceiling's consumer process did not start")
            pub = _PipelinedPublisher(queue, n, window)
            pub.run()
            end = done.get(timeout=600)
        finally:
            stop_process(consumer)
    finally:
        delete_amqp([], [queue])
    return {"rate": n / (end - pub.t0), "end_to_end_s": end - pub.t0, "publish_confirmed_s": pub.t_confirmed - pub.t0}


# -- latency ------------------------------------------------------------------------------------
def _stamp_receipts(queue: str, ready, receipts) -> None:
    """The waiting consumer process: for each delivery, send back when it arrived, then ack."""
    conn = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    ch = conn.channel()
    ch.basic_qos(prefetch_count=1)
    ready.set()
    for method, _props, body in ch.consume(queue, auto_ack=False):
        received = time.time()
        ch.basic_ack(method.delivery_tag)
        receipts.send((body, received))
        if body == b"stop":
            break
    ch.cancel()
    conn.close()


def latency(n: int) -> list[float]:
    """Publish -> receipt in ms for N one-at-a-time persistent, confirmed messages (warm-ups dropped)."""
    queue = f"ewbench.ceiling.{new_tag()}"
    samples: list[float] = []
    try:
        _declare(queue)
        ready = _SPAWN.Event()
        mine, theirs = _SPAWN.Pipe()
        consumer = _SPAWN.Process(target=_stamp_receipts, args=(queue, ready, theirs))
        consumer.start()
        try:
            if not ready.wait(60):
                raise BenchFailed("the latency ceiling's consumer process did not start")
            conn = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
            ch = conn.channel()
            ch.confirm_delivery()
            for i in range(n + LATENCY_WARM_UP):
                body = str(i).encode()
                t0 = time.time()
                ch.basic_publish("", queue, body, PERSISTENT)   # returns once confirmed
                received = receipt(mine, body, f"message {i} of the latency ceiling")
                if i >= LATENCY_WARM_UP:
                    samples.append((received - t0) * 1000)
            ch.basic_publish("", queue, b"stop", PERSISTENT)
            conn.close()
        finally:
            stop_process(consumer)
    finally:
        delete_amqp([], [queue])
    return samples


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("n", type=int, nargs="?", default=20000, help="messages for the throughput ceiling")
    ap.add_argument("--latency", type=int, default=200, metavar="N", help="messages for the latency ceiling")
    ap.add_argument("--window", type=int, default=1000, help="unconfirmed messages in flight")
    args = ap.parse_args(argv)
    if args.n < 1 or args.latency < 1 or args.window < 1:
        ap.error("N, --latency and --window must be at least 1")
    t = throughput(args.n, args.window)
    figure("ceiling throughput (raw pika)", f"rate={t['rate']:.0f}/s n={args.n} end_to_end_s={t['end_to_end_s']:.3f} "
           f"publish_confirmed_s={t['publish_confirmed_s']:.3f}")
    figure("ceiling idle latency publish->receive", latency_text(latency(args.latency)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
