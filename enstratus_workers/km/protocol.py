"""The KM wire protocol: length-prefixed frames and the JSON inside the sealed envelope.

On the socket every frame is ``length (4 bytes, big-endian) | frame``. A frame is either

* a sealed envelope (first byte 1, see ``envelope.py``) holding a request or a response, or
* an **unauthenticated error frame**: ``0x00 | JSON {"error": code, "message": text}``. The
  server sends one when it cannot (or must not) answer under the client's key: wrong key,
  tampered, stale or replayed frame, garbage, oversized frame, too many connections. It then
  closes the connection. Anyone on the path could forge such a frame, so a client only ever
  turns it into an error (``KMRefused``), never into data.

Request payload (UTF-8 JSON)::

    {"op": "ping"}
    {"op": "put", "account": "42", "name": "aws", "kind": "api_key",
     "secret": "<base64>", "metadata": {...}}
    {"op": "get" | "delete", "account": "42", "name": "aws"}
    {"op": "list", "account": "42"}

Response payload: ``{"ok": true, "result": ...}`` or
``{"ok": false, "error": {"code": "not_found" | "bad_request" | "conflict" | "unavailable" | "internal",
"message": "..."}}``; a ``"forbidden"`` error (access list, TLS only) also carries ``"account"`` and
``"client"``.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import socket
import struct
import time
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

from enstratus_workers.config.settings import Secret
from enstratus_workers.km import (
    KMConflict,
    KMError,
    KMForbidden,
    KMNotFound,
    KMRefused,
    KMUnavailable,
)

LENGTH = struct.Struct(">I")
MAX_FRAME = 1 << 20                 # default cap on one frame, both directions
ERROR_MARKER = 0x00
MAX_SECRET = 256 * 1024             # a certificate chain fits; a disk image does not
MAX_METADATA = 16 * 1024            # bytes of JSON
MAX_ACCOUNT = 128
MAX_NAME = 191                      # (account, name) stays a MySQL utf8mb4 primary key
OPS = ("ping", "put", "get", "list", "delete")
_KIND = re.compile(r"[a-z][a-z0-9_]{0,31}\Z")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class FrameError(KMError):
    """The byte stream is not a sequence of frames (truncated, oversized)."""

    code = "bad_frame"


class FrameTooLarge(FrameError):
    code = "frame_too_large"


class BadRequest(KMRefused):
    """A request that authenticated but does not follow the schema."""

    code = "bad_request"


@dataclass(frozen=True)
class CredentialInfo:
    """What ``list`` shows of a credential: everything but the secret."""

    account: str
    name: str
    kind: str
    metadata: Mapping[str, Any]
    version: int
    updated_ms: int


@dataclass(frozen=True)
class Credential:
    """A credential with its secret, as ``get`` returns it.

    ``secret`` is a ``Secret`` wrapping the raw bytes, so printing or logging a credential
    shows ``***``; ``secret.reveal()`` gives the bytes (``text()`` decodes them as UTF-8).
    """

    account: str
    name: str
    kind: str
    secret: Secret
    metadata: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    version: int = 1
    updated_ms: int = 0

    def text(self) -> str:
        return self.secret.reveal().decode("utf-8")


# -- framing ---------------------------------------------------------------------------------

def write_frame(sock: socket.socket, frame: bytes) -> None:
    sock.sendall(LENGTH.pack(len(frame)) + frame)


def read_frame(sock: socket.socket, max_size: int = MAX_FRAME, deadline: float | None = None) -> bytes | None:
    """One frame, or ``None`` when the peer closed cleanly between frames.

    ``deadline`` (``time.monotonic()`` value) bounds the whole frame, so a peer trickling one
    byte at a time cannot hold a connection longer than that. Raises ``FrameTooLarge`` before
    reading the body of an oversized frame, ``FrameError`` on EOF inside a frame and
    ``TimeoutError`` past the deadline.
    """
    head = _read_exact(sock, LENGTH.size, deadline, eof_ok=True)
    if head is None:
        return None
    (size,) = LENGTH.unpack(head)
    if size > max_size:
        raise FrameTooLarge(f"frame of {size} bytes exceeds the {max_size}-byte limit")
    return _read_exact(sock, size, deadline, eof_ok=False)


def _read_exact(sock, n, deadline, eof_ok):
    chunks, got = [], 0
    while got < n:
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("frame not received in time")
            sock.settimeout(remaining)
        chunk = sock.recv(min(n - got, 65536))
        if not chunk:
            if eof_ok and got == 0:
                return None
            raise FrameError(f"connection closed after {got} of {n} bytes")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def error_frame(code: str, message: str) -> bytes:
    return bytes([ERROR_MARKER]) + json.dumps({"error": code, "message": message}).encode()


def parse_error_frame(frame: bytes) -> tuple[str, str] | None:
    """``(code, message)`` if ``frame`` is an unauthenticated error frame, else ``None``.

    The text comes from an unauthenticated source: it is cut short and stripped of control
    characters before anyone logs or shows it.
    """
    if not frame or frame[0] != ERROR_MARKER:
        return None
    try:
        doc = json.loads(frame[1:4097].decode("utf-8", "replace"))
        code, message = str(doc.get("error", "refused")), str(doc.get("message", ""))
    except (ValueError, AttributeError):
        code, message = "refused", "unreadable error frame"
    return _clean(code, 40), _clean(message, 300)


def _clean(text: str, limit: int) -> str:
    return _CONTROL.sub("?", text)[:limit]


# -- requests --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Request:
    op: str
    account: str = ""
    name: str = ""
    kind: str = "api_key"
    secret: Secret = Secret(b"")
    metadata: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    def describe(self) -> str:
        """For logs: the op and the credential it is about, never the secret."""
        return " ".join(x for x in (self.op, self.account, self.name) if x)


def encode_request(op: str, account: str = "", name: str = "", *, kind: str = "api_key",
                   secret: bytes = b"", metadata: Mapping[str, Any] | None = None) -> bytes:
    """Validate (as the server will) and encode a request, so a bad call fails before sending."""
    req = _validated(op, account, name, kind, secret, dict(metadata or {}))
    doc: dict[str, Any] = {"op": req.op}
    if op != "ping":
        doc["account"] = req.account
    if op in ("put", "get", "delete"):
        doc["name"] = req.name
    if op == "put":
        doc.update(kind=req.kind, secret=base64.b64encode(req.secret.reveal()).decode("ascii"),
                   metadata=dict(req.metadata))
    return json.dumps(doc, separators=(",", ":")).encode("utf-8")


def decode_request(payload: bytes) -> Request:
    try:
        doc = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise BadRequest("request is not UTF-8 JSON") from None
    if not isinstance(doc, dict):
        raise BadRequest("request is not a JSON object")
    secret = b""
    if doc.get("op") == "put":
        try:
            secret = base64.b64decode(str(doc.get("secret", "")), validate=True)
        except (binascii.Error, ValueError):
            raise BadRequest("secret is not base64") from None
    return _validated(doc.get("op"), doc.get("account", ""), doc.get("name", ""),
                      doc.get("kind", "api_key"), secret, doc.get("metadata", {}))


def _validated(op, account, name, kind, secret, metadata) -> Request:
    if op not in OPS:
        raise BadRequest(f"unknown op {str(op)[:20]!r}; expected one of {', '.join(OPS)}")
    if op == "ping":
        return Request(op)
    account = _identifier("account", account, MAX_ACCOUNT)
    if op == "list":
        return Request(op, account)
    name = _identifier("name", name, MAX_NAME)
    if op != "put":
        return Request(op, account, name)
    if not isinstance(kind, str) or not _KIND.match(kind):
        raise BadRequest("kind must be a lower-case identifier (api_key, ssh_key, certificate, ...)")
    if not isinstance(secret, (bytes, bytearray)):
        raise BadRequest("secret must be bytes or str")
    if not secret:
        raise BadRequest("secret is empty")
    if len(secret) > MAX_SECRET:
        raise BadRequest(f"secret of {len(secret)} bytes exceeds {MAX_SECRET}")
    if not isinstance(metadata, dict):
        raise BadRequest("metadata must be a JSON object")
    try:
        size = len(json.dumps(metadata, separators=(",", ":")))
    except (TypeError, ValueError):
        raise BadRequest("metadata must be JSON-serializable") from None
    if size > MAX_METADATA:
        raise BadRequest(f"metadata of {size} bytes exceeds {MAX_METADATA}")
    return Request(op, account, name, kind, Secret(bytes(secret)), MappingProxyType(dict(metadata)))


def _identifier(what: str, value, limit: int) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value:
        raise BadRequest(f"{what} must be a non-empty string")
    if len(value) > limit or _CONTROL.search(value):
        raise BadRequest(f"{what} must be at most {limit} printable characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:   # a lone surrogate from JSON: no database can store it
        raise BadRequest(f"{what} is not valid Unicode text") from None
    return value


# -- responses -------------------------------------------------------------------------------

def encode_ok(result: Any) -> bytes:
    return json.dumps({"ok": True, "result": result}, separators=(",", ":")).encode("utf-8")


def encode_error(code: str, message: str, **details: str) -> bytes:
    return json.dumps({"ok": False, "error": {"code": code, "message": message, **details}},
                      separators=(",", ":")).encode("utf-8")


def decode_response(payload: bytes) -> Any:
    """The ``result`` of an authenticated response, or the ``KMError`` its error maps to."""
    try:
        doc = json.loads(payload.decode("utf-8"))
        ok = doc["ok"]
    except (UnicodeDecodeError, ValueError, KeyError, TypeError):
        raise KMRefused("KM response is not a protocol document", "bad_response") from None
    if ok is True:
        return doc.get("result")
    err = doc.get("error") if isinstance(doc.get("error"), dict) else {}
    code = _clean(str(err.get("code", "internal")), 40)
    message = _clean(str(err.get("message", "")), 300)
    if code == "not_found":
        raise KMNotFound(message or "credential not found")
    if code == "unavailable":
        raise KMUnavailable(f"KM unavailable: {message}")
    if code == "conflict":
        raise KMConflict(f"KM refused the request (conflict): {message}")
    if code == "forbidden":
        raise KMForbidden(f"KM refused the request (forbidden): {message}",
                          _clean(str(err.get("account", "")), MAX_ACCOUNT), _clean(str(err.get("client", "")), 253))
    raise KMRefused(f"KM refused the request ({code}): {message}", code)


def credential_to_wire(c: Credential) -> dict:
    return {"account": c.account, "name": c.name, "kind": c.kind,
            "secret": base64.b64encode(c.secret.reveal()).decode("ascii"),
            "metadata": dict(c.metadata), "version": c.version, "updated_ms": c.updated_ms}


def credential_from_wire(doc: Any) -> Credential:
    try:
        return Credential(str(doc["account"]), str(doc["name"]), str(doc["kind"]),
                          Secret(base64.b64decode(doc["secret"], validate=True)),
                          MappingProxyType(dict(doc["metadata"])), int(doc["version"]),
                          int(doc["updated_ms"]))
    except (KeyError, TypeError, ValueError, binascii.Error):
        raise KMRefused("KM response does not describe a credential", "bad_response") from None


def info_to_wire(i: CredentialInfo) -> dict:
    return {"account": i.account, "name": i.name, "kind": i.kind, "metadata": dict(i.metadata),
            "version": i.version, "updated_ms": i.updated_ms}


def info_from_wire(doc: Any) -> CredentialInfo:
    try:
        return CredentialInfo(str(doc["account"]), str(doc["name"]), str(doc["kind"]),
                              MappingProxyType(dict(doc["metadata"])), int(doc["version"]),
                              int(doc["updated_ms"]))
    except (KeyError, TypeError, ValueError):
        raise KMRefused("KM response does not describe a credential", "bad_response") from None
