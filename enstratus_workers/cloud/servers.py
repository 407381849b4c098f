"""Server objects in the persistence layer, written read-modify-write with optimistic concurrency.

Bucket ``server``, key = the platform's server id, indexed by account (``account_bin``) and
state (``state_bin``). Every change goes through ``update_server``: read, change, write only if
nobody wrote in between (``expected=<version>``, or ``ABSENT`` to create), else read again.
So a sync and a launch touching the same server never silently drop each other's fields.
"""

from __future__ import annotations

import copy
import re
import secrets
from typing import Callable

from enstratus_workers.clock import now_ms
from enstratus_workers.errors import ActionError
from enstratus_workers.persist import ABSENT, NotFound, StaleWriteError, values

SERVER_BUCKET = "server"
INTENT_BUCKET = "server_intent"
SCHEMA = 1
MAX_WRITE_ATTEMPTS = 8

LAUNCHING = "launching"     # the platform's own state: recorded, not yet known to the cloud
TERMINATED = "terminated"   # libcloud's NodeState.TERMINATED, and "gone from the cloud"

#: tags the platform puts on the nodes it launches, where the provider supports tags
TAG_SERVER = "enstratus-server"
TAG_JOB = "enstratus-job"

_SERVER_ID_IN_NAME = re.compile(r"(srv-[0-9a-f]{12})$")


def new_server_id() -> str:
    return "srv-" + secrets.token_hex(6)


def node_name(name: str, server_id: str) -> str:
    """The node's name at the provider: deterministic, so a retried launch finds its node by
    name even on a provider without tags."""
    return f"{name}-{server_id}"


def server_id_in_name(name: str | None) -> str | None:
    match = _SERVER_ID_IN_NAME.search(name or "")
    return match.group(1) if match else None


def store_of(context):
    if getattr(context, "persistence", None) is None:
        raise ActionError("no persistence layer is configured for cloud actions")
    return context.persistence


def account_of(arguments: dict) -> str:
    """The ``account`` argument as the string the index holds; ``ActionError`` if unusable."""
    account = arguments.get("account")
    if isinstance(account, bool) or not isinstance(account, (str, int)):
        raise ActionError("'account' (a string or an integer) is required")
    account = str(account)
    try:
        values.check_index_value("account_bin", account)
    except (TypeError, ValueError):
        raise ActionError(f"'account' {account!r} is not a usable account id") from None
    return account


def indexes(data: dict) -> dict:
    return {"account_bin": str(data["account"]), "state_bin": str(data["state"])}


def get_server(store, server_id) -> dict:
    if not isinstance(server_id, str) or not server_id:
        raise ActionError("'server_id' (a string) is required")
    try:
        return dict(store.get(SERVER_BUCKET, server_id).data)
    except NotFound:
        raise ActionError(f"no server {server_id!r}") from None


def update_server(store, server_id: str, change: Callable[[dict | None], dict | None]) -> tuple[dict | None, bool]:
    """Apply ``change`` (current data or None -> new data, or None for "leave it") until the write
    lands; returns ``(data now stored, whether this call wrote)``. ``change`` may run several
    times, on fresher data each time, so it must not have side effects.
    """
    for _ in range(MAX_WRITE_ATTEMPTS):
        try:
            stored = store.get(SERVER_BUCKET, server_id)
            current, expected = dict(stored.data), stored.version
        except NotFound:
            current, expected = None, ABSENT
        new = change(copy.deepcopy(current))
        if new is None or new == current:
            return current, False
        new["updated_ms"] = now_ms()
        try:
            store.put(SERVER_BUCKET, server_id, new, indexes(new), expected=expected, schema=SCHEMA)
            return new, True
        except StaleWriteError:
            continue  # somebody wrote in between: read their version and apply ours to it
    raise StaleWriteError(SERVER_BUCKET, server_id, f"still contended after {MAX_WRITE_ATTEMPTS} attempts")


def node_fields(node) -> dict:
    """What a server object records of a libcloud node."""
    extra = node.extra or {}
    return {"provider_node_id": str(node.id), "node_name": node.name, "state": str(node.state),
            "public_ip": (node.public_ips or [None])[0], "agent_port": extra.get("agent_port")}


def find_node(nodes, server_id: str, name: str | None = None, node_id: str | None = None):
    """The live (not terminated) node of ``server_id`` among ``nodes``: by provider id, tag or name."""
    for node in nodes:
        if str(node.state) == TERMINATED:
            continue
        tags = (node.extra or {}).get("tags") or (node.extra or {}).get("metadata") or {}
        if ((node_id is not None and str(node.id) == node_id)
                or (isinstance(tags, dict) and tags.get(TAG_SERVER) == server_id)
                or (name is not None and node.name == name)):
            return node
    return None


def summary(data: dict) -> dict:
    """The result of a server action: what a user may see (no credentials are ever in ``data``)."""
    keys = ("server_id", "account", "provider", "provider_node_id", "name", "state", "public_ip",
            "agent_port", "firewall")
    return {k: data.get(k) for k in keys}
