"""Idle latency of the running service on RabbitMQ + MariaDB: what one user submitting one job feels.

The service is started with its init script in a scratch install root (as ``throughput.py``
does). Then one job at a time — submit it, wait for its outcome, submit the next — N jobs
(plus 5 warm-ups) of ``bench.stamp`` (``bench/plugin``: returns ``time.time()`` at its start),
through the Python ``submit()`` API, each in its own transaction. Per job:

- **submit -> action start, client clock**: from just before the ``submit()`` call to the action's
  own ``time.time()`` (microseconds; same machine, same clock);
- **submit -> action start, row**: ``start_timestamp - created_timestamp`` of the job row (whole ms,
  stamped by the service itself);
- **submit -> outcome visible**: until a reader polling the row every 1 ms sees it succeeded;
- **submit -> wait_for()**: the same through the project's own wait as ``submit --wait`` waits
  (``jobs.submit.outcome_bell`` announced before the submit, then ``wait_for``: woken when this
  host's recorder writes outcomes, with a ``WAIT_SAFETY_NET_S`` re-read in case another host
  does), back to back only.

Back to back (gap 0) and with 0.5 s between jobs (an idle service between them: caches cool,
the publisher sleeps in its poll), N each, unless ``--gap`` chooses; a series with a gap is
held against the outbox floor with the same gap (the peers' anchors measure back to back only).
Beside it in the same run: the raw-pika latency ceiling (``ceiling.py``: one persistent
confirmed message at a time), the outbox floor and the direct floor (``floor.py``: this service's
guarantees in straight-line raw PyMySQL and pika, with the relay's hop and with the submitter
publishing: the least a design with them costs here) and, with ``--peers``, Celery's and
Dramatiq's idle enqueue -> start (``../shared/bench/latency.py``).

usage: .venv/bin/python bench/latency.py [-n 200] [--gap SECONDS ...] [--rounds R] [--peers] [--anchors DIR]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import ceiling
import floor
import peers
from harness import (
    BenchFailed,
    figure,
    latency_text,
    percentile,
    ratios,
    started_service,
    wait_terminal,
)

from enstratus_workers.jobs.submit import WAIT_SAFETY_NET_S, outcome_bell, submit, wait_for

WARM_UP = 5
ACTION = "bench.stamp"


def one_job(service, *, use_wait_for: bool = False) -> dict[str, float]:
    """Submit one job, wait for its outcome; its latencies in ms. ``use_wait_for`` waits as
    ``submit --wait`` does: its bell announced before the submit, then ``wait_for``."""
    bell = outcome_bell(service.layout.run_dir) if use_wait_for else None
    t0 = time.time()
    job, _created = submit(service.settings, service.dbs, ACTION, "{}")
    if use_wait_for:
        done = wait_for(service.dbs, job.job_id, timeout=60, bell=bell)
        seen = time.time()
        if done is None or done.status != "succeeded":
            raise BenchFailed(f"job {job.job_id} ended {done and done.status}: {done and done.error}")
    else:
        done, seen = wait_terminal(service.dbs, job.job_id)
    started = done.as_dict()["result"]["started"]
    return {"start_client": (started - t0) * 1000,
            "start_row": float(done.start_timestamp - done.created_timestamp),
            "visible": (seen - t0) * 1000}


def series(service, n: int, gap: float, *, use_wait_for: bool = False) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {}
    for i in range(n + WARM_UP):
        one = one_job(service, use_wait_for=use_wait_for)
        if i >= WARM_UP:
            for k, v in one.items():
                samples.setdefault(k, []).append(v)
        if gap:
            time.sleep(gap)
    return samples


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=200, help="jobs per series (after 5 warm-ups)")
    ap.add_argument("--gap", type=float, action="append", metavar="SECONDS",
                    help="pause between jobs; repeatable (default: 0 and 0.5)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="alternate the back-to-back series (client in wait_for()) with the floor, "
                         "the ceiling and the peers R times, the service started once; per round "
                         "and the median of each ratio over the rounds")
    peers.add_arguments(ap)
    args = ap.parse_args(argv)
    gaps = args.gap if args.gap is not None else [0.0, 0.5]
    if not 1 <= args.n <= 100_000 or any(not 0 <= g <= 60 for g in gaps) or not 1 <= args.rounds <= 50:
        ap.error("-n 1..100000, --gap 0..60, --rounds 1..50")
    if args.rounds > 1:
        return alternated(args)

    with started_service() as service:
        results = {gap: series(service, args.n, gap) for gap in gaps}
        waited = series(service, args.n, 0.0, use_wait_for=True)
    kinds = _peer_kinds(args)
    ref, ref99, measured = _references(args, kinds)
    # an idle machine costs every design more (a process woken after half a second of sleep):
    # each gap's series is held against the floor at the same gap
    gap_floors = {gap: floor.latency(args.n, gap=gap) for gap in gaps if gap}

    figure("ceiling: raw pika publish->receive", latency_text(measured["ceiling"]))
    figure("outbox floor: submit->action start (floor.py)", latency_text(measured["floor"]), ref["floor"],
           {"ceiling": ref["ceiling"]}, who="floor")
    figure("direct floor: the submitter publishes (floor.py)", latency_text(measured["direct"]), ref["direct"],
           {"ceiling": ref["ceiling"]}, who="direct")
    for kind in kinds:
        figure(f"peer {kind}: enqueue->task start", f"p50={ref[kind]:.2f}ms p99={ref99[kind]:.2f}ms n={args.n}",
               ref[kind], {k: ref[k] for k in ("ceiling", "floor", "direct")}, who=kind)
    for gap, fl in gap_floors.items():
        figure(f"outbox floor, gap {gap:g}s", latency_text(fl))
    for gap, s in results.items():
        where = f"gap {gap:g}s" if gap else "back to back"
        at, at99 = ref, ref99
        if gap:
            at = {"floor": percentile(gap_floors[gap], 50)}
            at99 = {"floor": percentile(gap_floors[gap], 99)}
        for key, label in (("start_client", "submit->action start (client clock)"),
                           ("start_row", "submit->action start (row, whole ms)"),
                           ("visible", "submit->outcome visible (1 ms poll)")):
            _ours(f"{label}, {where}", s[key], at, at99)
    # the client waiting as the peers' clients do, without loading the path it measures (their
    # clients stat a file every 5 ms; the 1 ms row poll above is a query a millisecond)
    for key, label in (("start_client", "submit->action start (client clock)"),
                       ("start_row", "submit->action start (row, whole ms)")):
        _ours(f"{label}, back to back, client in wait_for()", waited[key], ref, ref99)
    _ours(f"submit->wait_for() returns (woken by the recorder; {WAIT_SAFETY_NET_S * 1000:g} ms safety net), "
          "back to back", waited["visible"], ref, ref99)
    return 0


def alternated(args) -> int:
    """``--rounds``: on this machine the peers' and our latencies moved up to 2x between runs
    minutes apart, so one run's ratio of figures taken minutes apart says little. Here each round
    takes every figure within a minute or so of the others, and the ratios are taken per round."""
    kinds = _peer_kinds(args)
    per_round: dict[str, list[float]] = {}
    with started_service() as service:
        for r in range(1, args.rounds + 1):
            ours = series(service, args.n, 0.0, use_wait_for=True)["start_client"]
            ref, ref99, _measured = _references(args, kinds)
            p50, p99 = percentile(ours, 50), percentile(ours, 99)
            line = " ".join(f"{k}={v:.2f}/{ref99[k]:.2f}" for k, v in ref.items())
            figure(f"round {r}: p50/p99 ms", f"ours={p50:.2f}/{p99:.2f} {line}")
            for k in ref:
                per_round.setdefault(f"p50 ours/{k}", []).append(p50 / ref[k])
                per_round.setdefault(f"p99 ours/{k}", []).append(p99 / ref99[k])
            for kind in kinds:
                for f in ("floor", "direct"):
                    per_round.setdefault(f"p50 {f}/{kind}", []).append(ref[f] / ref[kind])
                    per_round.setdefault(f"p99 {f}/{kind}", []).append(ref99[f] / ref99[kind])
    for name, values in per_round.items():
        figure(f"{name}, submit->action start, back to back",
               f"median={percentile(values, 50):.3g}x rounds: " + " ".join(f"{v:.3g}x" for v in values))
    return 0


def _peer_kinds(args) -> tuple[str, ...]:
    """The peers to measure: Celery and Dramatiq with ``--peers`` and the anchors (else none, said)."""
    if not args.peers:
        return ()
    if not peers.available(args.anchors):
        print(peers.absent_line(args.anchors))
        return ()
    return ("celery", "dramatiq")


def _references(args, kinds) -> tuple[dict, dict, dict]:
    """The ceiling, the two floors (back to back) and the peers ``kinds``: their p50s and p99s by
    name, and the samples of the ceiling and the floors."""
    measured = {"ceiling": ceiling.latency(args.n), "floor": floor.latency(args.n),
                "direct": floor.latency(args.n, direct=True)}
    ref = {k: percentile(v, 50) for k, v in measured.items()}
    ref99 = {k: percentile(v, 99) for k, v in measured.items()}
    if kinds:
        with peers.Anchors(args.anchors) as anchors:
            for kind in kinds:
                ref[kind], ref99[kind] = anchors.latency(kind, args.n)
    return ref, ref99, measured


def _ours(label: str, samples: list[float], ref: dict, ref99: dict) -> None:
    """p50 ratios against the references' p50, p99 against their p99."""
    p50, p99 = percentile(samples, 50), percentile(samples, 99)
    figure(label, f"{latency_text(samples)}  p50 {ratios(p50, ref)}  p99 {ratios(p99, ref99)}")


if __name__ == "__main__":
    sys.exit(main())
