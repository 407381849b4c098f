"""How long one heartbeat round over 5,000 guests takes, and what share of a core the pinger uses.

5,000 guest agents listen on loopback, served by a few multi-agent processes
(``enstratus_workers.guest.multi``: one event loop, one listening socket per agent, ports picked
by the kernel from the ephemeral range). The heartbeat engine then PINGs all of them, ``--rounds``
times, and the bench prints per round the wall time (the shortest interval the pinger could run
at) and the pinger's CPU share (its CPU time / wall time; the agents are other processes).
Goal: 5,000 guests in under 5 s on one core.

The agents stop by themselves: at the end of the bench (their stdin closes), if the bench dies
(same), or after ``--lifetime`` seconds at the latest.

usage: .venv/bin/python bench/pinger.py [--guests 5000] [--processes 4] [--rounds 3]
                                        [--concurrency 500] [--timeout 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from enstratus_workers.daemons.pinger.guest_beats import Target, beat_all

HOST = "127.0.0.1"


def raise_nofile_to_hard() -> tuple[int, int]:
    """5,000 sockets need more than the usual soft limit of 1,024 descriptors."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return soft, resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def start_agents(guests: int, processes: int, lifetime: float):
    per = math.ceil(guests / processes)
    procs, targets = [], []
    try:
        for k in range(processes):
            count = min(per, guests - k * per)
            if count <= 0:
                break
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "enstratus_workers.guest.multi", "--count", str(count),
                 "--id-prefix", f"bench{k}-", "--lifetime", str(lifetime)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=REPO))
        for proc in procs:
            line = proc.stdout.readline()
            if not line:
                raise SystemExit(f"agent process {proc.pid} exited before listening")
            targets.extend(Target(sid, HOST, port) for sid, port in json.loads(line)["agents"])
    except BaseException:
        stop_agents(procs)
        raise
    return procs, targets


def stop_agents(procs) -> None:
    for proc in procs:
        proc.stdin.close()  # end-of-file on stdin: the agents close every socket and exit
    for proc in procs:
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()


def one_round(targets, timeout: float, concurrency: int):
    wall0, cpu0 = time.perf_counter(), time.process_time()
    results = asyncio.run(beat_all(targets, timeout=timeout, concurrency=concurrency))
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    return results, wall, cpu


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--guests", type=int, default=5000)
    ap.add_argument("--processes", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=500)
    ap.add_argument("--timeout", type=float, default=2.0)
    ap.add_argument("--lifetime", type=float, default=300.0)
    args = ap.parse_args(argv)
    if not 1 <= args.guests <= 20000 or not 1 <= args.processes <= 16 or not 1 <= args.rounds <= 20:
        ap.error("--guests 1..20000, --processes 1..16, --rounds 1..20")

    before, after = raise_nofile_to_hard()
    print(f"open files (ulimit -n): soft {before} -> {after}")
    if after < args.concurrency + 256:
        raise SystemExit(f"open-files limit {after} too low for concurrency {args.concurrency}")

    started = time.perf_counter()
    procs, targets = start_agents(args.guests, args.processes, args.lifetime)
    print(f"{len(targets)} agents listening in {len(procs)} processes "
          f"({time.perf_counter() - started:.1f}s to start)")
    walls = []
    try:
        for n in range(1, args.rounds + 1):
            results, wall, cpu = one_round(targets, args.timeout, args.concurrency)
            up = sum(r.up for r in results)
            lat = sorted(r.latency_ms for r in results if r.up)
            p50 = statistics.median(lat) if lat else float("nan")
            p99 = lat[int(len(lat) * 0.99) - 1] if lat else float("nan")
            walls.append(wall)
            print(f"round {n}: {up}/{len(results)} up in {wall:.2f}s "
                  f"({len(results) / wall:,.0f} beats/s), pinger CPU {cpu:.2f}s = {cpu / wall:.0%} "
                  f"of one core, latency p50 {p50:.1f} ms p99 {p99:.1f} ms")
            errors = {r.error for r in results if not r.up}
            if errors:
                print(f"  failures: {sorted(errors)[:5]}")
    finally:
        stop_agents(procs)
    agents_cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(f"interval needed for {len(targets)} guests: {max(walls):.2f}s (best round {min(walls):.2f}s; "
          f"concurrency {args.concurrency}, timeout {args.timeout:g}s)")
    print(f"agent processes' CPU over the whole bench: {agents_cpu.ru_utime + agents_cpu.ru_stime:.2f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
