"""The action message on the queue: JSON ``{job_id, action, arguments, attempt}``.

Decoding is strict about what the subscriber needs to route and record (a job id, an action
name, an attempt number) and lenient about ``arguments``: arguments that are not a JSON object
still decode, so the job can be *failed* with the reason instead of dead-lettered unseen.

Numbers and names outside what the job table can hold (``job_id`` BIGINT, ``attempt`` and
``max_attempts`` INTEGER, ``action`` VARCHAR(MAX_ACTION_CHARS)) are refused here: such a message
can match no job row, and letting it through would only fail later, in a write that holds up
every outcome batched with it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from enstratus_workers.errors import EnstratusError

MAX_JOB_ID = 2**63 - 1        # BIGINT
MAX_ATTEMPT = 2**31 - 1       # INTEGER: attempts and max_attempts
MAX_ACTION_CHARS = 200        # the job table's action column


class MessageDecodeError(EnstratusError):
    """The body is not an action message; it goes to the dead-letter queue."""


@dataclass(frozen=True)
class ActionMessage:
    job_id: int
    action: str
    arguments: Any
    attempt: int
    max_attempts: int | None = None   # None: the subscriber's action.max_attempts

    def encode(self) -> bytes:
        doc = {"job_id": self.job_id, "action": self.action, "arguments": self.arguments,
               "attempt": self.attempt}
        if self.max_attempts is not None:
            doc["max_attempts"] = self.max_attempts
        return json.dumps(doc, separators=(",", ":")).encode()


def encode_job(job_id: int, action: str, arguments_json: str, attempt: int, max_attempts: int) -> bytes:
    """Encode straight from the job row's JSON text, without a parse/dump round trip."""
    return (b'{"job_id":%d,"action":%s,"arguments":%s,"attempt":%d,"max_attempts":%d}'
            % (job_id, json.dumps(action).encode(), arguments_json.encode(), attempt, max_attempts))


def _count(value, lo: int, hi: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi


def decode(body: bytes) -> ActionMessage:
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise MessageDecodeError(f"not JSON: {type(exc).__name__}") from None
    if not isinstance(doc, dict):
        raise MessageDecodeError("not a JSON object")
    job_id, action, attempt = doc.get("job_id"), doc.get("action"), doc.get("attempt", 1)
    if not _count(job_id, 1, MAX_JOB_ID):
        raise MessageDecodeError(f"job_id missing or not an integer from 1 to {MAX_JOB_ID}")
    if not isinstance(action, str) or not action:
        raise MessageDecodeError("action missing or not a string")
    if len(action) > MAX_ACTION_CHARS:
        raise MessageDecodeError(f"action longer than {MAX_ACTION_CHARS} characters")
    if not _count(attempt, 1, MAX_ATTEMPT):
        raise MessageDecodeError(f"attempt not an integer from 1 to {MAX_ATTEMPT}")
    max_attempts = doc.get("max_attempts")
    if max_attempts is not None and not _count(max_attempts, 1, MAX_ATTEMPT):
        raise MessageDecodeError(f"max_attempts not an integer from 1 to {MAX_ATTEMPT}")
    return ActionMessage(job_id, action, doc.get("arguments", {}), attempt, max_attempts)
