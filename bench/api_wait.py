"""Waiting for a job's outcome through the admin API: ``GET /jobs/{id}?wait=S`` beside polling.

The service is started with its init script in a scratch install root (as ``latency.py``
does). One keep-alive client submits one job at a time (``POST /jobs``: ``bench.stamp``, or with
``--seconds S`` the built-in ``sleep`` for S seconds, as a cloud call takes), then waits for its
outcome in one of three ways, the ways taken in turn job after job so that each sees the same
machine:

- **wait**: one ``GET /jobs/{id}?wait=30``, answered when the recorder's ring wakes it;
- **poll 10 ms** and **poll 100 ms**: ``GET /jobs/{id}`` again every 10 or 100 ms until the job
  has ended, as a client without the wait does.

Per way: submit -> outcome seen (p50, p99), requests per job, and the admin daemon's CPU per
job (``/proc`` of its pid, over that way's jobs alone); the polls' figures as ratios to the
wait's of the same run.

usage: .venv/bin/python bench/api_wait.py [-n 100] [--seconds S]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import BenchFailed, figure, latency_text, percentile, started_service
from throughput import AdminClient, admin_cpu_s

WARM_UP = 5
ACTION = "bench.stamp"
WAYS = ("wait", "poll 10 ms", "poll 100 ms")
POLL_S = {"poll 10 ms": 0.01, "poll 100 ms": 0.1}


def one_job(client: AdminClient, way: str, job_body: dict) -> tuple[float, int]:
    """Submit one job and wait for its outcome ``way``: (ms from submit to the outcome seen,
    requests made after the submit)."""
    t0 = time.perf_counter()
    job = client.request("POST", "/jobs", job_body, expect=201)["job"]
    requests = 0
    while True:
        requests += 1
        if way == "wait":
            seen = client.request("GET", f"/jobs/{job['job_id']}?wait=30")
        else:
            seen = client.request("GET", f"/jobs/{job['job_id']}")
        if seen["status"] in ("succeeded", "failed", "dead", "cancelled"):
            if seen["status"] != "succeeded":
                raise BenchFailed(f"job {job['job_id']} ended {seen['status']}: {seen.get('error')}")
            return (time.perf_counter() - t0) * 1000, requests
        if way != "wait":
            time.sleep(POLL_S[way])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=100, help="jobs per way (after 5 warm-ups each)")
    ap.add_argument("--seconds", type=float, default=0.0,
                    help="each job the built-in sleep for this long (default: bench.stamp, at once)")
    args = ap.parse_args(argv)
    if not 1 <= args.n <= 10_000 or not 0 <= args.seconds <= 20:
        ap.error("-n 1..10000, --seconds 0..20")
    job_body = ({"action": "sleep", "arguments": {"seconds": args.seconds}} if args.seconds
                else {"action": ACTION, "arguments": {}})
    samples = {w: [] for w in WAYS}
    requests = dict.fromkeys(WAYS, 0)
    cpu_s = dict.fromkeys(WAYS, 0.0)
    print(f"jobs: {job_body['action']} {json.dumps(job_body['arguments'])}, {args.n} per way")
    with started_service() as service:
        client = AdminClient(service)
        try:
            client.request("GET", "/jobs/stats")
            for i in range(args.n + WARM_UP):
                for way in WAYS:
                    cpu0 = admin_cpu_s(service)
                    ms, asked = one_job(client, way, job_body)
                    if i >= WARM_UP:
                        cpu_s[way] += admin_cpu_s(service) - cpu0
                        samples[way].append(ms)
                        requests[way] += asked
        finally:
            client.close()
    wait50, wait99 = percentile(samples["wait"], 50), percentile(samples["wait"], 99)
    wait_cpu = cpu_s["wait"] / args.n * 1000
    for way in WAYS:
        cpu = cpu_s[way] / args.n * 1000
        figure(f"{way}: submit -> outcome seen", latency_text(samples[way]), percentile(samples[way], 50),
               None if way == "wait" else {"wait p50": wait50}, who=way)
        if way != "wait":
            figure(f"  {way}: p99", f"{percentile(samples[way], 99):.2f}ms", percentile(samples[way], 99),
                   {"wait p99": wait99}, who=way)
        figure(f"  {way}: requests per job after the submit", f"{requests[way] / args.n:.2f}")
        figure(f"  {way}: the admin daemon's CPU per job", f"{cpu:.2f}ms", cpu,
               None if way == "wait" else {"wait": wait_cpu}, who=way)
    return 0


if __name__ == "__main__":
    sys.exit(main())
