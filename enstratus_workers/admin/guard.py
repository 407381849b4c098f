"""An ASGI layer in front of the app: a cap on request bodies and the browser-hardening headers.

The cap is checked on the declared ``Content-Length`` before the app reads anything; a body sent
without one (chunked) is read here first, up to the cap, and handed on whole. So no request can
make the daemon buffer more than ``max_body`` bytes. The headers keep the pages from being framed
by another site (the start and stop buttons must not be click-jacked) and from running scripts
of any origin but ours. Every request that may change something (not GET or HEAD) is logged
with its answer, so the daemon's log says when a pool was scaled or a queue forgotten.
"""

from __future__ import annotations

import json
import logging

log = logging.getLogger(__name__)

HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),  # no-referrer would make forms send "Origin: null"
    (b"content-security-policy",
     b"default-src 'self'; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'; form-action 'self'"),
]


class BodyTooLarge(Exception):
    pass


async def read_body(receive, limit: int | None = None) -> bytes | None:
    """The whole request body (``BodyTooLarge`` past ``limit`` bytes); None if the client left."""
    chunks, total = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunk = message.get("body", b"")
        total += len(chunk)
        if limit is not None and total > limit:
            raise BodyTooLarge(limit)
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


def replaying(body: bytes, receive):
    """A ``receive`` that hands the app ``body`` (read already), then listens to the client again."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def replay():
        return pending.pop() if pending else await receive()
    return replay


class Guard:
    def __init__(self, app, max_body: int):
        self.app, self.max_body = app, max_body

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            if not declared.isdigit() or int(declared) > self.max_body:
                return await self._refuse(send)
        elif scope.get("method") in ("POST", "PUT", "PATCH", "DELETE"):
            receive = await self._buffered(receive, send)
            if receive is None:
                return

        async def hardened(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *HEADERS]}
                if scope.get("method") not in ("GET", "HEAD"):
                    client = (scope.get("client") or ("?",))[0]
                    log.info("%s %r from %s: %d", scope.get("method"), scope.get("path"), client,
                             message["status"])
            await send(message)

        await self.app(scope, receive, hardened)

    async def _buffered(self, receive, send):
        """Read a body of undeclared length, at most ``max_body``; a ``receive`` that replays it,
        or None once the request was refused (or the client left)."""
        try:
            body = await read_body(receive, self.max_body)
        except BodyTooLarge:
            await self._refuse(send)
            return None
        return None if body is None else replaying(body, receive)

    async def _refuse(self, send):
        body = json.dumps({"detail": f"request body larger than {self.max_body} bytes"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()), *HEADERS]})
        await send({"type": "http.response.body", "body": body})
