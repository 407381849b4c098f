"""An EMULATOR of the Riak KV HTTP API, for tests only: in-process, in-memory, on 127.0.0.1.

It lets the Riak backend's HTTP code run in every test run, on a machine without Riak. It
answers the subset ``enstratus_workers.persist.riak`` uses, the way Riak 2.x (riak_kv_wm_object
on webmachine) does:

* ``GET|HEAD|PUT|DELETE /buckets/B/keys/K`` and ``/types/T/buckets/B/keys/K``: ``X-Riak-Vclock``
  and a quoted ``ETag`` (the object's vtag) on reads and on ``PUT ?returnbody=true``;
  ``x-riak-index-*`` headers stored on PUT (values split on ", " as Riak does, names checked for
  ``_bin``/``_int``, ints parsed: else 400) and returned on GET; conditional requests with
  webmachine's rules: ``If-None-Match: *`` on an existing object -> 412, ``If-Match`` with an
  etag that is not current -> 412, ``If-Match`` on a missing object creates it on PUT (only
  ``If-Match: *`` is refused) and 404s on DELETE; 404 ``not found`` for missing objects; a PUT
  without Content-Type -> 400.
* With ``allow_mult=True``, a PUT whose vclock is not the current one adds a sibling: GET/HEAD
  then answer ``300`` with ``Siblings:`` and the vtags, as Riak does; a PUT carrying the
  current vclock replaces all siblings.
* ``GET /buckets/B/keys?keys=true``, ``GET /buckets/B/index/NAME/VALUE`` and
  ``/index/NAME/LO/HI`` (inclusive; ``_int`` numerically, ``_bin`` by bytes) -> ``{"keys": [...]}``.
* ``GET /ping`` -> ``OK``.

Not emulated: vclock semantics beyond "is it the current one", tombstones (a delete removes the
key at once), If-Modified-Since/If-Unmodified-Since, links, bucket properties, key streaming,
2i pagination, and the race between Riak's condition check and its write.
Test hooks: ``allow_mult``, ``stall`` (seconds to sleep before answering), ``connections``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote_to_bytes, urlsplit

_INDEX_PREFIX = "x-riak-index-"
_SPLIT = re.compile(rb",\s")


def _token() -> str:
    return base64.b64encode(os.urandom(12)).decode("ascii").replace("/", "_").replace("+", "-")


@dataclass
class _Sibling:
    value: bytes
    content_type: str
    vtag: str
    indexes: list[tuple[str, bytes]]
    modified: float


@dataclass
class _Object:
    vclock: str
    siblings: list[_Sibling] = field(default_factory=list)

    @property
    def etag(self) -> str:
        if len(self.siblings) == 1:
            return self.siblings[0].vtag
        return hashlib.md5(self.vclock.encode()).hexdigest()  # Riak: derived from the vclock


class RiakEmulator:
    """Start with ``with RiakEmulator() as riak:``; ``riak.url`` is ``http://127.0.0.1:<port>``."""

    def __init__(self, allow_mult: bool = False):
        self.allow_mult = allow_mult
        self.stall = 0.0
        self.connections = 0
        self.lock = threading.Lock()
        self.objects: dict[tuple[bytes, bytes, bytes], _Object] = {}
        self._released = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.emulator = self
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc_info):
        self._released.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def wait_stall(self) -> None:
        if self.stall:
            self._released.wait(self.stall)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"   # keep-alive, as Riak's mochiweb does
    timeout = 10                    # an idle kept-alive connection is dropped eventually

    @property
    def emu(self) -> RiakEmulator:
        return self.server.emulator

    def setup(self):
        super().setup()
        # Headers and body go out in separate writes: without this, Nagle's algorithm and the
        # client's delayed ACK hold every response back ~40 ms.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.emu.lock:
            self.emu.connections += 1

    def log_message(self, format, *args):  # keep test output quiet
        pass

    # -- plumbing -------------------------------------------------------------------------------

    def _send(self, status: int, body: bytes = b"", headers=(), content_type="text/plain"):
        self.send_response(status)
        self.send_header("Server", "MochiWeb/1.1 WebMachine/1.10.9 (riak emulator)")
        if status not in (204, 304):
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD" and status not in (204, 304):
            self.wfile.write(body)

    def _route(self):
        parts = urlsplit(self.path)
        segments = [unquote_to_bytes(s) for s in parts.path.split("/")[1:]]
        query = parse_qs(parts.query)
        btype = b"default"
        if len(segments) >= 2 and segments[0] == b"types":
            btype, segments = segments[1], segments[2:]
        return btype, segments, query

    def _dispatch(self):
        self.emu.wait_stall()
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        btype, seg, query = self._route()
        if seg == [b"ping"] and self.command == "GET":
            return self._send(200, b"OK")
        if len(seg) >= 3 and seg[0] == b"buckets":
            bucket = seg[1]
            if seg[2] == b"keys" and len(seg) == 4:
                return self._object(self.command, (btype, bucket, seg[3]), query, body)
            if seg[2] == b"keys" and len(seg) == 3 and self.command == "GET":
                return self._list_keys(btype, bucket, query)
            if seg[2] == b"index" and len(seg) in (5, 6) and self.command == "GET":
                return self._index(btype, bucket, seg[3].decode(), seg[4], seg[-1])
        return self._send(404, b"not found\n")

    do_GET = do_HEAD = do_PUT = do_DELETE = lambda self: self._dispatch()

    # -- objects --------------------------------------------------------------------------------

    def _object(self, method, path, query, body):
        with self.emu.lock:
            obj = self.emu.objects.get(path)
            failed = self._precondition_failed(obj)
            if failed:
                return self._send(failed)
            if method in ("GET", "HEAD"):
                return self._send(404, b"not found\n") if obj is None else self._reply(obj)
            if method == "DELETE":
                if obj is None:
                    return self._send(404, b"not found\n")
                del self.emu.objects[path]
                return self._send(204)
            return self._put(path, obj, query, body)

    def _precondition_failed(self, obj: _Object | None) -> int:
        """Webmachine's decisions G7-K13 for If-Match / If-None-Match."""
        if_match = self.headers.get("If-Match")
        if_none = self.headers.get("If-None-Match")
        if obj is None:
            return 412 if if_match is not None and if_match.strip() == "*" else 0
        if if_match is not None and if_match.strip() != "*":
            if obj.etag not in [t.strip().strip('"') for t in if_match.split(",")]:
                return 412
        if if_none is not None:
            tags = [t.strip().strip('"') for t in if_none.split(",")]
            if if_none.strip() == "*" or obj.etag in tags:
                return 304 if self.command in ("GET", "HEAD") else 412
        return 0

    def _put(self, path, obj: _Object | None, query, body):
        ctype = self.headers.get("Content-Type")
        if not ctype:
            return self._send(400, b"Missing Content-Type request header\n")
        indexes = []
        for name, raw in self.headers.items():
            if name.lower().startswith(_INDEX_PREFIX):
                field_name = name[len(_INDEX_PREFIX):].lower()
                for value in _SPLIT.split(raw.encode("latin-1")):
                    if not field_name.endswith(("_bin", "_int")):
                        return self._send(400, f"Field '{field_name}' has invalid type\n".encode())
                    if field_name.endswith("_int") and not re.fullmatch(rb"-?\d+", value):
                        return self._send(400, b"Could not parse field '"
                                          + field_name.encode() + b"', value '" + value + b"'.\n")
                    indexes.append((field_name, value))
        sibling = _Sibling(body, ctype.split(";")[0].strip(), _token(), indexes, time.time())
        vclock = self.headers.get("X-Riak-Vclock")
        if obj is None:
            obj = self.emu.objects[path] = _Object(_token(), [sibling])
        elif self.emu.allow_mult and vclock != obj.vclock:
            obj.siblings.append(sibling)
        else:
            obj.siblings = [sibling]
        obj.vclock = _token()
        if query.get("returnbody") == ["true"]:
            return self._reply(obj)
        return self._send(204)

    def _reply(self, obj: _Object):
        headers = [("X-Riak-Vclock", obj.vclock), ("ETag", f'"{obj.etag}"')]
        if len(obj.siblings) > 1:
            body = b"Siblings:\n" + b"".join(s.vtag.encode() + b"\n" for s in obj.siblings)
            return self._send(300, body, headers)
        s = obj.siblings[0]
        headers.append(("Last-Modified", formatdate(s.modified, usegmt=True)))
        by_name: dict[str, list[bytes]] = {}
        for name, value in s.indexes:
            by_name.setdefault(name, []).append(value)
        for name, vals in sorted(by_name.items()):
            headers.append((_INDEX_PREFIX + name, b", ".join(vals).decode("latin-1")))
        return self._send(200, s.value, headers, content_type=s.content_type)

    # -- listings -------------------------------------------------------------------------------

    def _keys_reply(self, keys):
        body = json.dumps({"keys": [k.decode("utf-8") for k in keys]}).encode()
        return self._send(200, body, content_type="application/json")

    def _list_keys(self, btype, bucket, query):
        if query.get("keys") != ["true"]:
            return self._send(400, b"emulator: only keys=true is supported\n")
        with self.emu.lock:
            keys = [k for (t, b, k) in self.emu.objects if (t, b) == (btype, bucket)]
        return self._keys_reply(keys)

    def _index(self, btype, bucket, name, lo, hi):
        if name.endswith("_int"):
            try:
                lo_v, hi_v = int(lo), int(hi)
            except ValueError:
                return self._send(400, b"Could not parse index query\n")
            convert = int
        elif name.endswith("_bin"):
            lo_v, hi_v, convert = lo, hi, bytes
        else:
            return self._send(400, f"Unknown field type for field: '{name}'.\n".encode())
        with self.emu.lock:
            keys = [k for (t, b, k), obj in sorted(self.emu.objects.items())
                    if (t, b) == (btype, bucket) and len(obj.siblings) >= 1
                    and any(n == name and lo_v <= convert(v) <= hi_v
                            for s in obj.siblings for n, v in s.indexes)]
        return self._keys_reply(keys)
