"""The action message on the queue: JSON ``{job_id, action, arguments, attempt}``.

Decoding is strict about what the subscriber needs to route and record (a job id, an action
name, an attempt number) and lenient about ``arguments``: arguments that are not a JSON object
still decode, so the job can be *failed* with the reason instead of dead-lettered unseen.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .errors import EnstratusError


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


def decode(body: bytes) -> ActionMessage:
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise MessageDecodeError(f"not JSON: {type(exc).__name__}") from None
    if not isinstance(doc, dict):
        raise MessageDecodeError("not a JSON object")
    job_id, action, attempt = doc.get("job_id"), doc.get("action"), doc.get("attempt", 1)
    if not isinstance(job_id, int) or isinstance(job_id, bool) or job_id <= 0:
        raise MessageDecodeError("job_id missing or not a positive integer")
    if not isinstance(action, str) or not action:
        raise MessageDecodeError("action missing or not a string")
    if not isinstance(attempt, int) or isinstance(attempt, bool) or attempt < 1:
        raise MessageDecodeError("attempt not a positive integer")
    max_attempts = doc.get("max_attempts")
    if max_attempts is not None and (not isinstance(max_attempts, int) or isinstance(max_attempts, bool)
                                     or max_attempts < 1):
        raise MessageDecodeError("max_attempts not a positive integer")
    return ActionMessage(job_id, action, doc.get("arguments", {}), attempt, max_attempts)
