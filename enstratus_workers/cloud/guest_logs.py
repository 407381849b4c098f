"""``guest.collect_logs``: fetch what a guest agent logged since last time and store it.

Chunks go to bucket ``guest_log`` under ``<server_id>:<chunk number, 8 digits>`` (so a key
listing is in order), indexed by ``server_bin``; the server object keeps the byte offset to
resume from and the next chunk number. Chunk keys follow from the stored offset, so a
redelivered collection that crashed before advancing the offset rewrites the same chunks with
the same lines instead of adding duplicates.
"""

from __future__ import annotations

from enstratus_workers.cloud import servers as s
from enstratus_workers.errors import ActionError
from enstratus_workers.guest import client
from enstratus_workers.guest.protocol import ProtocolError

LOG_BUCKET = "guest_log"
#: chunks (of up to 64 KiB) fetched per run: bounds one action's time and memory
MAX_CHUNKS = 16
TIMEOUT = 5.0


def chunk_key(server_id: str, number: int) -> str:
    return f"{server_id}:{number:08d}"


def collect_logs(arguments: dict, context) -> dict:
    """Fetch new log lines of ``server_id``'s agent; returns counts and the new offset."""
    store = s.store_of(context)
    record = s.get_server(store, arguments.get("server_id"))
    server_id = record["server_id"]
    if record["state"] == s.TERMINATED:
        raise ActionError(f"server {server_id} is terminated: its agent is gone")
    host, port = record.get("public_ip"), record.get("agent_port")
    if not host or not port:
        raise ActionError(f"server {server_id} has no agent address yet")
    offset, number = int(record.get("log_offset") or 0), int(record.get("log_chunks") or 0)
    try:
        chunks = client.fetch_log(host, int(port), offset, max_chunks=MAX_CHUNKS, timeout=TIMEOUT)
    except (OSError, ProtocolError) as exc:
        raise ActionError(f"the agent of server {server_id} at {host}:{port} did not serve "
                          f"its log: {exc}") from None
    lines = 0
    for chunk in chunks:
        reset = chunk.start != offset  # the log was truncated or replaced: the agent restarted at 0
        offset = chunk.end
        if not chunk.data:
            continue
        text = chunk.data.decode("utf-8", "replace").splitlines()
        store.put(LOG_BUCKET, chunk_key(server_id, number),
                  {"server_id": server_id, "chunk": number, "start": chunk.start, "end": chunk.end,
                   "reset": reset, "lines": text, "collected_ms": s.now_ms()},
                  {"server_bin": server_id})
        number += 1
        lines += len(text)

    def advance(cur):
        if cur is None:
            return None
        # a concurrent collector may have got further: never move the offset backwards
        if int(cur.get("log_chunks") or 0) > number:
            return None
        return dict(cur, log_offset=offset, log_chunks=number)

    s.update_server(store, server_id, advance)
    return {"server_id": server_id, "chunks": len([c for c in chunks if c.data]),
            "lines": lines, "log_offset": offset}
