"""The server actions: launch, terminate, reboot and sync servers on an account's cloud.

Each is an action (``fn(arguments, context) -> JSON-able``). The account's provider and
credentials come from the KM (``credentials.py``), never from the arguments; every state change
is written to the persistence layer (``servers.py``) before the action returns.

Delivery is at least once, so every action can run twice. ``server.launch`` is made idempotent
by an intent object keyed by the job id, written (create-only) *before* the provider is called:
it fixes the server id, hence the node's name and tags, so a redelivered launch finds the node
its first attempt created instead of creating another. It waits while its node boots (reads
PENDING), looking at ``ctx.cancelled()``; cancelled, it stops, and its compensation
(``undo_launch``) terminates the server it was building, found by that same intent.

Every provider call waits for its turn of the account's cloud API budget (``limiter.py``); a turn
too far off, or a throttling answer, puts the job back (``errors.Deferred``) from wherever it is.
That is safe for the same reason a redelivery is: a deferred launch comes back to its intent.
"""

from __future__ import annotations

import hashlib
import re
import time

from enstratus_workers.actions.options import action
from enstratus_workers.clock import now_ms
from enstratus_workers.cloud import servers as s
from enstratus_workers.cloud.guest_logs import collect_logs
from enstratus_workers.errors import ActionError
from enstratus_workers.guest.protocol import DEFAULT_AGENT_PORT
from enstratus_workers.persist import ABSENT, NotFound, StaleWriteError


# Libcloud (with requests under it) is a third of a worker's memory, so it is imported when a
# cloud action first runs, not when the worker registers the actions: a worker that only runs
# other actions never loads it.
def open_driver(context, account, patient=False):
    from enstratus_workers.cloud.drivers import open_driver as _open

    return _open(context, account, patient)


def refused_as_action_error(provider, account):
    from enstratus_workers.cloud.drivers import refused_as_action_error as _refused

    return _refused(provider, account)

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")

#: how each provider takes tags at create_node; a provider not listed is matched by name only
TAG_OPTION = {"local": "ex_tags", "ec2": "ex_metadata", "openstack": "ex_metadata"}
#: longest a launch waits for its node to leave PENDING (booting), then records what it has;
#: well under action.time_limit's default (300 s)
BOOT_WAIT_S = 120.0
BOOT_POLL_S = 0.5
PENDING = "pending"   # libcloud's NodeState.PENDING


def _text(arguments: dict, key: str) -> str:
    value = arguments.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ActionError(f"'{key}' (a non-empty string) is required")
    return value.strip()


def _name(arguments: dict) -> str:
    name = _text(arguments, "name")
    if not _NAME.fullmatch(name):
        raise ActionError(f"'name' {name!r} must be 1-63 letters, digits, '.', '_' or '-'")
    return name


def _pick(choices, wanted: str, what: str):
    for choice in choices:
        if str(choice.id) == wanted:
            return choice
    known = ", ".join(sorted(str(c.id) for c in choices)) or "none"
    raise ActionError(f"unknown {what} {wanted!r} (available: {known})")


def _claim_intent(store, context, account: str, name: str, image: str, size: str) -> dict:
    """The launch intent of this job: created by its first attempt, read back by later ones."""
    key = f"job-{context.job_id}"
    draft = {"job_id": context.job_id, "server_id": s.new_server_id(), "account": account,
             "name": name, "image": image, "size": size, "created_ms": now_ms()}
    try:
        store.put(s.INTENT_BUCKET, key, draft, {"account_bin": account}, expected=ABSENT)
        return draft
    except StaleWriteError:
        intent = dict(store.get(s.INTENT_BUCKET, key).data)
    if intent.get("account") != account:
        raise ActionError(f"job {context.job_id} already launched a server for another account")
    return intent


def _source_cidrs(context) -> list[str]:
    provisioning = getattr(getattr(context, "settings", None), "provisioning", None)
    return [str(c) for c in getattr(provisioning, "source_cidrs", ()) or ()]


def _open_agent_port(driver, node, context) -> list | None:
    """Allow the workers' SOURCE_CIDRs to the guest agent's port; None if the provider has no
    firewall support through this driver, [] if no SOURCE_CIDR is configured."""
    port = int((node.extra or {}).get("agent_port") or DEFAULT_AGENT_PORT)
    cidrs = _source_cidrs(context)
    if not hasattr(driver, "ex_authorize_ingress"):
        context.logger.warning("provider %s has no firewall support here: agent port of node %s "
                               "not opened", driver.type, node.id)
        return None
    if not cidrs:
        context.logger.warning("no SOURCE_CIDR configured: agent port of node %s left closed", node.id)
        return []
    driver.ex_authorize_ingress(node, port, cidrs)
    return [{"protocol": "tcp", "port": port, "cidrs": cidrs}]


def _wait_booted(driver, node, server_id: str, wanted: str, context):
    """The node once it left PENDING (or after BOOT_WAIT_S, or once the job was cancelled)."""
    deadline = time.monotonic() + BOOT_WAIT_S
    while str(node.state) == PENDING and time.monotonic() < deadline and not context.cancelled():
        time.sleep(BOOT_POLL_S)
        node = s.find_node(driver.list_nodes(), server_id, wanted, str(node.id)) or node
    return node


def _destroy(context, record: dict, patient: bool = False) -> str | None:
    """Destroy the live node of a server record, found by id, tag or name; its id, or None if
    there was none (never created, or gone already). ``patient``: a compensation's, whose calls
    wait out the cloud API limits rather than defer (``limiter.py``)."""
    driver, provider = open_driver(context, record["account"], patient)
    with refused_as_action_error(provider, record["account"]):
        node = s.find_node(driver.list_nodes(), record["server_id"], record.get("node_name"),
                           record.get("provider_node_id"))
        if node is None:
            return None
        driver.destroy_node(node)
    context.logger.info("terminated server %s (node %s)", record["server_id"], node.id)
    return str(node.id)


def undo_launch(arguments: dict, context) -> dict:
    """The compensation of ``server.launch``: terminate the server this job was building.

    Found the way a redelivered launch finds it: the job's launch intent fixes the server id and
    the node's name and tags, so a node created by any attempt, even one whose worker was killed
    before it recorded anything, is found. Nothing to do if no intent was written."""
    store = s.store_of(context)
    try:
        intent = dict(store.get(s.INTENT_BUCKET, f"job-{context.job_id}").data)
    except NotFound:
        return {"terminated": None, "reason": "no server was launched"}
    server_id = intent["server_id"]
    try:
        record = s.get_server(store, server_id)
    except ActionError:   # the intent was written, the server object not yet
        record = {"server_id": server_id, "account": intent["account"], "provider_node_id": None,
                  "node_name": s.node_name(intent["name"], server_id)}
    node_id = _destroy(context, record, patient=True)
    s.update_server(store, server_id, lambda cur: cur and dict(cur, state=s.TERMINATED, public_ip=None))
    return {"terminated": server_id, "node": node_id}


@action(compensate=undo_launch)
def launch_server(arguments: dict, context) -> dict:
    """``server.launch`` {account, image, size, name}: one server per job, however often it runs."""
    account = s.account_of(arguments)
    name, image_id, size_id = _name(arguments), _text(arguments, "image"), _text(arguments, "size")
    store = s.store_of(context)
    driver, provider = open_driver(context, account)
    with refused_as_action_error(provider, account):
        image = _pick(driver.list_images(), image_id, "image")
        size = _pick(driver.list_sizes(), size_id, "size")
        intent = _claim_intent(store, context, account, name, image_id, size_id)
        server_id = intent["server_id"]
        wanted = s.node_name(intent["name"], server_id)
        initial = {"server_id": server_id, "account": account, "provider": provider,
                   "provider_node_id": None, "name": intent["name"], "node_name": wanted,
                   "image": intent["image"], "size": intent["size"], "state": s.LAUNCHING,
                   "public_ip": None, "agent_port": None, "firewall": None,
                   "launched_by_job": context.job_id, "created_ms": now_ms(),
                   "log_offset": 0, "log_chunks": 0}
        record, _ = s.update_server(store, server_id, lambda cur: cur if cur is not None else initial)
        if record["state"] == s.TERMINATED:
            # launched by an earlier attempt and terminated since: a redelivery must not revive it
            return s.summary(record)
        node = s.find_node(driver.list_nodes(), server_id, wanted, record.get("provider_node_id"))
        if node is None:
            options = {}
            if provider in TAG_OPTION:
                options[TAG_OPTION[provider]] = {s.TAG_SERVER: server_id, s.TAG_JOB: str(context.job_id)}
            node = driver.create_node(wanted, size, image, **options)
            context.logger.info("launched server %s as node %s of account %s on %s",
                                server_id, node.id, account, provider)
        else:
            context.logger.info("server %s: found node %s of an earlier attempt", server_id, node.id)
        node = _wait_booted(driver, node, server_id, wanted, context)
        cancelled = context.cancelled()   # stop here: the compensation terminates the node
        fields = dict(s.node_fields(node), firewall=None if cancelled else _open_agent_port(driver, node, context))
    record, _ = s.update_server(store, server_id, lambda cur: {**(cur or initial), **fields})
    return s.summary(record)


def terminate_server(arguments: dict, context) -> dict:
    """``server.terminate`` {server_id}: destroy the node (if still there) and record it."""
    store = s.store_of(context)
    record = s.get_server(store, arguments.get("server_id"))
    server_id = record["server_id"]
    if record["state"] != s.TERMINATED:
        _destroy(context, record)
    record, _ = s.update_server(store, server_id, lambda cur: cur and dict(cur, state=s.TERMINATED,
                                                                          public_ip=None))
    return s.summary(record)


def reboot_server(arguments: dict, context) -> dict:
    """``server.reboot`` {server_id}: reboot the node and record its state afterwards."""
    store = s.store_of(context)
    record = s.get_server(store, arguments.get("server_id"))
    server_id = record["server_id"]
    if record["state"] == s.TERMINATED:
        raise ActionError(f"server {server_id} is terminated")
    driver, provider = open_driver(context, record["account"])
    with refused_as_action_error(provider, record["account"]):
        args = (server_id, record.get("node_name"), record.get("provider_node_id"))
        node = s.find_node(driver.list_nodes(), *args)
        if node is None:
            raise ActionError(f"server {server_id} has no node at {provider}: sync the account")
        driver.reboot_node(node)
        node = s.find_node(driver.list_nodes(), *args) or node
    fields = s.node_fields(node)
    record, _ = s.update_server(store, server_id, lambda cur: cur and dict(cur, **fields))
    return s.summary(record)


def _discovered_id(account: str, provider: str, node_id: str) -> str:
    """A node nobody launched through us gets an id derived from it, so two concurrent syncs
    create one server object, not two."""
    digest = hashlib.sha256(f"{account}\0{provider}\0{node_id}".encode("utf-8")).hexdigest()
    return "srv-" + digest[:12]


def sync_account(arguments: dict, context) -> dict:
    """``server.sync`` {account}: reconcile the account's server objects with its cloud's nodes.

    A node nobody knows becomes a server (created); a known one gets its state, address and port
    refreshed (updated); a server whose node is gone or terminated is marked terminated. A server
    still ``launching`` without a node is left to its launch.
    """
    account = s.account_of(arguments)
    store = s.store_of(context)
    driver, provider = open_driver(context, account)
    with refused_as_action_error(provider, account):
        nodes = driver.list_nodes()
    records = {}
    for key in store.query(s.SERVER_BUCKET, "account_bin", account):
        try:
            data = s.get_server(store, key)
        except ActionError:  # deleted since the query
            continue
        if data.get("provider") == provider:
            records[key] = data
    by_node = {r["provider_node_id"]: sid for sid, r in records.items() if r.get("provider_node_id")}
    counts = {"created": 0, "updated": 0, "terminated": 0, "unchanged": 0}
    seen = set()
    for node in nodes:
        tags = (node.extra or {}).get("tags") or {}
        sid = (by_node.get(str(node.id)) or _known(tags.get(s.TAG_SERVER), records)
               or _known(s.server_id_in_name(node.name), records))
        fields = s.node_fields(node)
        if str(node.state) == s.TERMINATED:
            fields["public_ip"] = None
        if sid is None:
            if str(node.state) == s.TERMINATED:
                continue  # never known and already gone: nothing to record
            sid = _discovered_id(account, provider, str(node.id))
            new = {"server_id": sid, "account": account, "provider": provider, "name": node.name,
                   "image": _id(node.image), "size": _id(node.size), "firewall": None,
                   "launched_by_job": None, "discovered_by_job": context.job_id,
                   "created_ms": now_ms(), "log_offset": 0, "log_chunks": 0, **fields}
            _, wrote = s.update_server(store, sid, lambda cur: cur if cur is not None else new)
            counts["created" if wrote else "unchanged"] += 1
        else:
            before = records[sid]["state"]
            _, wrote = s.update_server(store, sid, lambda cur: cur and dict(cur, **fields))
            if wrote and fields["state"] == s.TERMINATED and before != s.TERMINATED:
                counts["terminated"] += 1
            else:
                counts["updated" if wrote else "unchanged"] += 1
        seen.add(sid)
    for sid, record in records.items():
        if sid in seen or record["state"] in (s.TERMINATED, s.LAUNCHING):
            continue
        _, wrote = s.update_server(store, sid, lambda cur: cur and (
            None if cur["state"] == s.TERMINATED else dict(cur, state=s.TERMINATED, public_ip=None)))
        counts["terminated" if wrote else "unchanged"] += 1
    context.logger.info("synced account %s on %s: %s", account, provider, counts)
    return {"account": account, "provider": provider, "nodes": len(nodes), **counts}


def _known(server_id: str | None, records: dict) -> str | None:
    return server_id if server_id in records else None


def _id(thing) -> str | None:
    return None if thing is None else str(getattr(thing, "id", thing))


def register_cloud_actions(registry) -> None:
    """Add the server actions and ``guest.collect_logs`` to ``registry``."""
    for name, action in (("server.launch", launch_server), ("server.terminate", terminate_server),
                         ("server.reboot", reboot_server), ("server.sync", sync_account),
                         ("guest.collect_logs", collect_logs)):
        registry.register(name, action)
