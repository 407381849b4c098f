"""Stamps along one job's path, for finding where its milliseconds go (``bench/jobpath.py``).

Off unless a daemon is started with ``ENSTRATUS_PATH_TRACE`` naming a directory: each daemon
reads it once in its ``run()`` (``from_environment``), never at import, and then appends one
line per job and stage, ``<time.time_ns()> <job id> <stage>``, to ``<dir>/<daemon>.<pid>.trace``.
Off, a stamp costs one test of a module global, so the stamps stay in the hot path for good.

The stages, in the order a job meets them (the module and function that stamps each):

    publisher.read       outbox.relay: the pending rows read and locked
    publisher.confirmed  outbox.relay: the broker confirmed the messages
    publisher.marked     outbox.relay: the queued mark committed
    intake.received      subscriber intake: the delivery left the consumer
    subscriber.taken     subscriber: decoded on the main loop
    subscriber.checked   subscriber: its row read and found open
    subscriber.sent      pool.dispatch: the run frame sent to a worker
    worker.start         worker: the action is about to run
    worker.end           worker: the action returned
    subscriber.outcome   subscriber: the outcome read from the worker
    recorder.written     recorder: the outcome committed
    recorder.event       recorder: its event committed
    recorder.acked       recorder: its delivery handed to the intake to ack

plus ``publisher.woken`` (job id 0: the bell or the safety net ended a wait), which the bench
matches with the job committed just before it. The bench stamps ``client.submit`` and
``client.returned`` around ``submit()`` itself.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Iterable

ENV = "ENSTRATUS_PATH_TRACE"

_out = None


def enable(directory: Path, who: str) -> None:
    """Append this process's stamps to ``directory/<who>.<pid>.trace`` from now on."""
    global _out
    path = Path(directory) / f"{who}.{os.getpid()}.trace"
    _out = open(path, "a", buffering=1 << 16)


def from_environment(who: str) -> None:
    """``enable`` if ``ENSTRATUS_PATH_TRACE`` names a directory (read when a daemon starts)."""
    directory = os.environ.get(ENV)
    if directory and Path(directory).is_dir():
        enable(Path(directory), who)


def on() -> bool:
    return _out is not None


def stamp(stage: str, job_ids: Iterable[int]) -> None:
    """One line per job: this moment, the job, the stage; written through at once (a daemon
    may be killed rather than stopped, and the bench reads the files while it runs)."""
    out = _out
    if out is None:
        return
    t = time.time_ns()
    out.write("".join(f"{t} {int(i)} {stage}\n" for i in job_ids))
    out.flush()


def read(directory: Path) -> dict[int, dict[str, int]]:
    """Every job's stamps from the files in ``directory``: ``{job id: {stage: first ns}}``,
    with the unattributed ones (job id 0) under ``0`` as ``{stage#n: ns}``."""
    jobs: dict[int, dict[str, int]] = {}
    loose: dict[str, int] = {}
    for path in sorted(Path(directory).glob("*.trace")):
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) != 3:
                continue   # a line cut by a kill
            t, job, stage = int(parts[0]), int(parts[1]), parts[2]
            if job == 0:
                loose[f"{stage}#{len(loose)}"] = t
            else:
                stages = jobs.setdefault(job, {})
                stages[stage] = min(t, stages.get(stage, t))
    if loose:
        jobs[0] = loose
    return jobs
