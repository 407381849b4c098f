"""The values a job's attempt is made of as it crosses threads, processes and databases.

A :class:`Task` is what a worker process is handed (built from the job *row*, never from the
message); a :class:`Started` marks an attempt running; an :class:`Outcome` is the recorded end of
one attempt. They are frozen, and serialize themselves for the worker socket (``to_frame`` /
``from_frame``: plain dicts of JSON types), so the same value the worker produced is the one the
recorder writes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any


def _from(cls, frame: dict):
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in frame.items() if k in names})


@dataclass(frozen=True)
class Task:
    """One attempt of a job, as a worker process runs it."""

    job_id: int
    action: str
    arguments: Any            # the row's arguments, parsed (a JSON object for a runnable job)
    attempt: int
    max_attempts: int
    queue: str
    owner: str = ""           # the subscriber process that holds the attempt (db/jobs.py)

    def to_frame(self) -> dict:
        return asdict(self)

    @classmethod
    def from_frame(cls, frame: dict) -> "Task":
        return _from(cls, frame)


@dataclass(frozen=True)
class Started:
    """An attempt marked running, with its worker, owner and start time."""

    job_id: int
    attempt: int
    worker: str
    start_ms: int
    owner: str = ""           # the subscriber process taking the attempt (db/jobs.py)


@dataclass(frozen=True)
class Outcome:
    """The recorded end of one attempt."""

    job_id: int
    attempt: int
    status: str               # the job's status after it: succeeded | failed | pending | dead
    worker: str
    start_ms: int
    end_ms: int
    result: str | None        # JSON text
    error: str | None
    owner: str = ""           # the subscriber process that ran the attempt (db/jobs.py)

    def to_frame(self) -> dict:
        return asdict(self)

    @classmethod
    def from_frame(cls, frame: dict) -> "Outcome":
        return _from(cls, frame)
