"""Throughput of the queue transports, next to the raw-pika ceiling measured in the same run.

One process publishes N small persistent messages through ``Transport.publish`` in batches (each
call returns once its batch is confirmed); a second process takes them with ``Consumer.poll`` and
acks every polled batch. The clock runs from the first publish to the last ack, as in
``bench/ceiling.py`` (raw pika: pipelined confirms, manual multiple acks), which is
run as a subprocess with this interpreter so the ratio compares like with like on this machine.

usage: .venv/bin/python bench/transport.py [N] [--batch 500] [--repeat 3] [--ceiling PATH]
Needs RabbitMQ on 127.0.0.1:5672 (guest/guest) for the AMQP figures; the embedded one needs nothing.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import delete_amqp, new_tag

from enstratus_workers.config.settings import MQSettings
from enstratus_workers.errors import ConnectionClosed
from enstratus_workers.layout import Layout
from enstratus_workers.mq import OutgoingMessage, open_transport

QUEUE = "transport"
DEFAULT_CEILING = Path(__file__).resolve().parent / "ceiling.py"


def consume(mq: MQSettings, home: str, n: int, prefetch: int, ready, out) -> None:
    """The second process: poll, ack each polled batch, report when the N-th is acked."""
    with open_transport(mq, Layout(Path(home)), client_name="bench consumer") as transport:
        consumer = transport.consumer([QUEUE], prefetch=prefetch)
        ready.set()
        seen: set[str] = set()
        got = 0
        while got < n:
            batch = consumer.poll(1.0, prefetch)
            consumer.ack(batch)
            got += len(batch)
            seen.update(d.message_id for d in batch)
        end = time.perf_counter()
        consumer.close()
    out.put((end, got - len(seen)))


def drain_leftovers(transport) -> int:
    """Ack whatever an aborted earlier run left in the bench queue."""
    consumer, left = transport.consumer([QUEUE], prefetch=500), 0
    while batch := consumer.poll(0.3, 500):
        consumer.ack(batch)
        left += len(batch)
    consumer.close()
    return left


def run_transport(mq: MQSettings, home: str, n: int, batch: int) -> dict:
    ctx = mp.get_context("spawn")  # no threads or sockets inherited from the publisher
    with open_transport(mq, Layout(Path(home)), client_name="bench publisher") as transport:
        transport.declare([QUEUE])
        drain_leftovers(transport)
        body = b'{"action":"noop","id":0}'
        batches = [[OutgoingMessage(QUEUE, body, f"m{i}") for i in range(start, min(n, start + batch))]
                   for start in range(0, n, batch)]
        ready, out = ctx.Event(), ctx.Queue()
        proc = ctx.Process(target=consume, args=(mq, home, n + 1, 500, ready, out))  # + the warm-up
        proc.start()
        try:
            if not ready.wait(60):
                raise RuntimeError("consumer process did not start")
            transport.publish([OutgoingMessage(QUEUE, body, "warm-up")])  # connect outside the clock
            t0 = time.perf_counter()
            for messages in batches:
                transport.publish(messages)
            t_pub = time.perf_counter()
            end, dups = out.get(timeout=600)
        finally:
            proc.join(60)
            if proc.is_alive():
                proc.kill()
                proc.join()
            out.close()
            out.join_thread()
    return {"n": n, "publish_s": t_pub - t0, "end_to_end_s": end - t0, "rate": n / (end - t0),
            "duplicates": dups}


def run_ceiling(path: Path, n: int) -> float | None:
    if not path.exists():
        return None
    res = subprocess.run([sys.executable, str(path), str(n)], check=False, capture_output=True, text=True,
                         timeout=600)
    m = re.search(r"rate=(\d+)/s", res.stdout)
    if not m:
        print(f"ceiling failed: {res.stdout}{res.stderr}", file=sys.stderr)
        return None
    return float(m.group(1))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("n", type=int, nargs="?", default=20000)
    ap.add_argument("--batch", type=int, default=500, help="messages per Transport.publish call")
    ap.add_argument("--repeat", type=int, default=3, help="rounds; the median of each figure is reported")
    ap.add_argument("--ceiling", type=Path, default=DEFAULT_CEILING, help="raw-pika ceiling script")
    ap.add_argument("--json", action="store_true", help="print the medians as one JSON object")
    args = ap.parse_args(argv)

    tag = new_tag()   # this run's own exchange and queues, deleted at the end
    amqp = MQSettings(transport="amqp", exchange=f"ewbench.{tag}", queue_prefix=f"ewbench.{tag}.")
    try:
        rounds = run_rounds(args, amqp)
    finally:
        try:
            delete_amqp([amqp.exchange, amqp.exchange + ".dead"],
                        [amqp.queue_prefix + QUEUE, amqp.queue_prefix + QUEUE + ".dead"])
        except Exception as exc:  # noqa: BLE001 - the broker may be the reason the run failed
            print(f"could not delete the run's queues: {exc}", file=sys.stderr)
    report(args, rounds)
    return 0


def run_rounds(args, amqp: MQSettings) -> dict[str, list[float]]:
    rounds: dict[str, list[float]] = {"ceiling": [], "amqp": [], "embedded": []}
    with tempfile.TemporaryDirectory(prefix="ewbench-") as home:
        embedded = MQSettings(transport="embedded", embedded_path=Path(home) / "queue.sqlite")
        for r in range(args.repeat):
            ceiling = run_ceiling(args.ceiling, args.n)
            if ceiling is not None:
                rounds["ceiling"].append(ceiling)
            try:
                res = run_transport(amqp, home, args.n, args.batch)
                rounds["amqp"].append(res["rate"])
                print(f"round {r + 1}: amqp     {res['rate']:8.0f}/s publish_confirmed_s={res['publish_s']:.3f} "
                      f"end_to_end_s={res['end_to_end_s']:.3f} duplicates={res['duplicates']}"
                      + (f"  ceiling {ceiling:.0f}/s ratio {res['rate'] / ceiling:.2f}" if ceiling else ""))
            except ConnectionClosed as exc:
                print(f"round {r + 1}: amqp skipped: {exc}")
            res = run_transport(embedded, home, args.n, args.batch)
            rounds["embedded"].append(res["rate"])
            print(f"round {r + 1}: embedded {res['rate']:8.0f}/s publish_confirmed_s={res['publish_s']:.3f} "
                  f"end_to_end_s={res['end_to_end_s']:.3f} duplicates={res['duplicates']}")
    return rounds


def report(args, rounds: dict[str, list[float]]) -> None:
    med = {k: statistics.median(v) for k, v in rounds.items() if v}
    c = med.get("ceiling")
    print(f"\nmedian of {args.repeat}, n={args.n}, publish batch={args.batch}:")
    for k in ("ceiling", "amqp", "embedded"):
        if k in med:
            print(f"  {k:9s} {med[k]:8.0f} msgs/s" + (f"   {med[k] / c:.2f} x ceiling" if c and k != "ceiling" else ""))
    if args.json:
        print(json.dumps({**{f"{k}_rate": round(v) for k, v in med.items()},
                          **({f"{k}_ratio": round(med[k] / c, 3) for k in ("amqp", "embedded") if k in med}
                             if c else {})}))


if __name__ == "__main__":
    sys.exit(main())
