"""The audit log: every operator action, who took it, from where, and what it changed.

One row per action taken through the admin API, the pages or the CLI (table ``enstratus_audit``
in the provisioning database, Alembic chain "admin", revision ``admin_0003``): when
(``at_ms``), who (``actor``), through what (``via``: ``api``, ``page`` or ``cli``), from which
address (``client``; for the CLI, its ``host.name``), the action (``instance.start``,
``job.retry`` ...), its target, the answer (``status``: the HTTP status, or the CLI's exit
code; ``detail``: why it was refused) and the target's state before and after, as JSON, where
reading it is cheap.

Who the actor is:

- ``token:<fingerprint>``: a bearer of the admin token; the fingerprint is the first 8 hex
  digits of the token's SHA-256, so a row says which token (before or after a rotation)
  without holding anything that would let a reader use it;
- ``session:<id>``: a page session, by the first 8 hex digits of the SHA-256 of its id (the
  server keeps sessions by that digest); the session's own ``session.login`` row says when,
  and from which address, it was opened;
- ``cli:<unix user>``: the CLI, as the user it ran as, on the host in ``client``.

A row is written after the action, in its own transaction: an action whose row cannot be
written (the database went away between the two) is logged at ERROR by the admin daemon, and
still answered. Old rows are pruned by the pinger after ``retention.audit`` (365 days).
"""

from __future__ import annotations

import json
import os
import pwd
from dataclasses import dataclass, fields
from typing import Any

import sqlalchemy as sa

from ..clock import now_ms
from .admin_schema import audit_log
from .retry import retried

#: characters kept of a before/after state or a refusal's detail
STATE_MAX = 4000


@dataclass(frozen=True)
class AuditEntry:
    """One operator action as recorded; ``audit_id`` is None until it is written."""

    at_ms: int
    actor: str
    via: str                       # api | page | cli
    client: str | None
    action: str
    target: str | None
    status: int                    # HTTP status of the answer, or the CLI's exit code
    detail: str | None = None      # why it was refused
    before_state: str | None = None   # JSON
    after_state: str | None = None    # JSON
    audit_id: int | None = None

    def as_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        for key in ("before_state", "after_state"):
            out[key] = _loads(out[key])
        return out


def state_text(value: Any) -> str | None:
    """``value`` as the JSON a row keeps (None stays None), cut to ``STATE_MAX``."""
    if value is None:
        return None
    text = json.dumps(value, sort_keys=True, default=str, ensure_ascii=False)
    return text if len(text) <= STATE_MAX else json.dumps({"cut": text[:STATE_MAX]}, ensure_ascii=False)


def _loads(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def _cut(text: str | None, n: int) -> str | None:
    return text if text is None or len(text) <= n else text[:n - 1] + "…"


class AuditStore:
    """Writes and reads ``enstratus_audit``."""

    def __init__(self, engine: sa.Engine):
        self.engine = engine

    @retried()
    def record(self, entry: AuditEntry) -> AuditEntry:
        values = {f.name: getattr(entry, f.name) for f in fields(entry) if f.name != "audit_id"}
        values.update(actor=_cut(entry.actor, 200), client=_cut(entry.client, 200),
                      target=_cut(entry.target, 300), detail=_cut(entry.detail, STATE_MAX))
        with self.engine.begin() as conn:
            key = conn.execute(audit_log.insert().values(**values)).inserted_primary_key[0]
        return AuditEntry(**{**values, "audit_id": int(key)})

    @retried(idempotent=True)
    def page(self, *, action: str | None = None, before_id: int | None = None,
             limit: int = 50) -> list[AuditEntry]:
        """Newest first: at most ``limit`` rows older than ``before_id`` (the paging cursor),
        of one ``action`` if given."""
        q = sa.select(audit_log).order_by(audit_log.c.audit_id.desc()).limit(limit)
        if action:
            q = q.where(audit_log.c.action == action)
        if before_id is not None:
            q = q.where(audit_log.c.audit_id < before_id)
        with self.engine.connect() as conn:
            return [AuditEntry(**r) for r in conn.execute(q).mappings()]


def cli_actor() -> str:
    """``cli:<unix user>``: the user the CLI runs as (by uid, not the login that su'd to it)."""
    uid = os.geteuid()
    try:
        return f"cli:{pwd.getpwuid(uid).pw_name}"
    except KeyError:   # a uid without a passwd entry (a container's): the number says who
        return f"cli:{uid}"


def record_cli(engine: sa.Engine, host: str, action: str, target: str | None, status: int, *,
               before: Any = None, after: Any = None, detail: str | None = None) -> AuditEntry:
    """Record an action the CLI took, as ``cli_actor()`` on ``host`` (``host.name``)."""
    return AuditStore(engine).record(AuditEntry(
        now_ms(), cli_actor(), "cli", host, action, target, status, detail, state_text(before), state_text(after)))
