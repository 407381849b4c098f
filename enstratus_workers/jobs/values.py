"""The values a job's attempt is made of as it crosses threads, processes and databases.

A :class:`Task` is what a worker process is handed (built from the job *row*, never from the
message); a :class:`Started` marks an attempt running; an :class:`Outcome` is the recorded end of
one attempt, built by the worker that ran it (``Task.outcome``) or, when its worker died under it,
by the subscriber from the same Task. They are frozen, and serialize themselves for the worker
socket (``to_frame`` / ``from_frame``: plain dicts of JSON types), so the same value the worker
produced is the one the recorder writes. ``from_frame`` checks every field's type and raises
``ValueError`` for a frame that is not such a value.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, fields
from typing import Any

from enstratus_workers.jobs.lifecycle import CANCELLED, PENDING, after_deferral, attempts_after, job_status_after

_KINDS = {"int": (int,), "str": (str,), "bool": (bool,), "str | None": (str, type(None)),
          "int | None": (int, type(None))}


def _from(cls, frame):
    """``cls`` from a frame, each field of the JSON type its annotation names (unknown keys ignored)."""
    if not isinstance(frame, dict):
        raise ValueError(f"a {cls.__name__} frame is not an object")
    values = {}
    for name, required, kinds, no_bool, type_name in _spec(cls):
        if name not in frame:
            if required:
                raise ValueError(f"a {cls.__name__} frame without {name}")
            continue
        value = frame[name]
        if kinds and (not isinstance(value, kinds) or (no_bool and isinstance(value, bool))):
            raise ValueError(f"a {cls.__name__} frame whose {name} is not {type_name}")
        values[name] = value
    return cls(**values)


_SPECS: dict = {}


def _spec(cls) -> list:
    """``cls``'s fields as ``_from`` checks them: (name, required, JSON kinds, whether a bool is
    refused, annotation), read once per class (``asdict`` and ``fields()`` on every frame were
    a third of a worker's CPU per no-op)."""
    spec = _SPECS.get(cls)
    if spec is None:
        spec = _SPECS[cls] = [(f.name, f.default is MISSING, _KINDS.get(f.type),
                               bool not in _KINDS.get(f.type, (bool,)), f.type) for f in fields(cls)]
    return spec


def _to(value) -> dict:
    """A frozen value's fields as a frame: ``asdict`` without its recursive deep copy (the frame
    is encoded at once; a task's arguments are plain JSON values). Its ``__dict__`` holds its
    fields and nothing else: frozen, it takes no other attribute."""
    return dict(value.__dict__)


@dataclass(frozen=True)
class Task:
    """One attempt of a job, as a worker process runs it: all it needs to run the action and to
    decide, when it ends, the job's status after it."""

    job_id: int
    action: str
    arguments: Any            # the row's arguments, parsed (a JSON object for a runnable job)
    attempt: int
    max_attempts: int
    queue: str
    owner: str = ""           # the subscriber process that holds the attempt (db/jobs.py)
    compensate: bool = False  # a cancel stopped the action elsewhere: run only its compensation
    account: str | None = None   # the tenant the job is for (pauses, fair shares)

    @property
    def key(self) -> tuple[int, int]:
        return self.job_id, self.attempt

    def outcome(self, attempt_status: str, *, retryable: bool, worker: str, start_ms: int, end_ms: int,
                result: str | None = None, error: str | None = None) -> "Outcome":
        """The end of this attempt: the job's status after it by ``jobs/lifecycle.py``, and a
        dead job's error saying it ran out of attempts."""
        status = job_status_after(attempt_status, retryable, self.attempt, self.max_attempts)
        if status == "dead":
            error = f"{error} (attempt {self.attempt} of {self.max_attempts}; dead)"
        return Outcome(self.job_id, self.attempt, status, worker, start_ms, end_ms, result, error,
                       self.owner, retryable)

    def cancelled(self, *, worker: str, start_ms: int, end_ms: int, result: str | None = None,
                  error: str | None = None) -> "Outcome":
        """The end of this attempt when a cancel stopped it: the job ends ``cancelled``, with what
        its compensation cleaned up as the result (or the compensation's error)."""
        return Outcome(self.job_id, self.attempt, CANCELLED, worker, start_ms, end_ms, result, error, self.owner)

    def deferred(self, *, worker: str, start_ms: int, end_ms: int, delay_ms: int, reason: str) -> "Outcome":
        """The end of this attempt when its action said "not now" (``errors.Deferred``): the job
        goes back to pending, the attempt not counted, held for ``delay_ms``."""
        deferral = after_deferral(self.attempt, delay_ms, end_ms)
        return Outcome(self.job_id, self.attempt, PENDING, worker, start_ms, end_ms, None, reason,
                       self.owner, False, deferral.not_before_ms)

    def to_frame(self) -> dict:
        return _to(self)

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
    status: str               # the job's status after it: succeeded | failed | pending | dead | cancelled
    worker: str
    start_ms: int
    end_ms: int
    result: str | None        # JSON text
    error: str | None
    owner: str = ""           # the subscriber process that ran the attempt (db/jobs.py)
    retryable: bool = False   # the attempt failed in a way that may be transient
    not_before_ms: int | None = None   # set: the action deferred the job until then (not counted)

    @property
    def deferred(self) -> bool:
        return self.not_before_ms is not None

    @property
    def attempts(self) -> int:
        """The row's attempts once this is recorded (a deferred attempt does not count)."""
        return attempts_after(self.attempt, self.deferred)

    def to_frame(self) -> dict:
        return _to(self)

    @classmethod
    def from_frame(cls, frame: dict) -> "Outcome":
        return _from(cls, frame)
