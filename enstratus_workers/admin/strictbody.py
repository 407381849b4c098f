"""Every JSON request body is strict JSON before any route sees it; every answer can be sent.

**In** (ASGI middleware ``StrictBody``): a body FastAPI would parse as JSON (no content type, or
``application/json`` / ``application/*+json``) must be UTF-8 text whose strings are all UTF-8
(no lone surrogates such as ``"\\ud800"``) and whose numbers are all finite (no ``NaN``,
``Infinity``, nor ``1e400``, which Python reads as infinity); ``strictjson`` judges. Anything
else is answered 422 in FastAPI's shape, naming the field, before a route runs, so nothing is
stored. Malformed JSON is left to FastAPI, which says where it broke. The body was capped by
``Guard`` already, so reading it whole here is bounded.

**Out** (``printable`` and ``SafeJSONResponse``): rows stored before this check existed, or
written by other tools, may hold such text; they are shown with U+FFFD for what cannot be
UTF-8 and ``"NaN"``/``"Infinity"`` as strings, so one bad row never turns a listing into a 500.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from fastapi.responses import JSONResponse

from .. import strictjson
from .gate import SAFE_METHODS
from .guard import read_body, replaying

_SURROGATE = re.compile("[\ud800-\udfff]")


def printable(value: Any) -> Any:
    """``value`` with every str made UTF-8-encodable and every non-finite float a string."""
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value)
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {printable(k) if isinstance(k, str) else k: printable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [printable(v) for v in value]
    return value


class SafeJSONResponse(JSONResponse):
    """The app's JSON answers: standard JSON even for content that holds bad text."""

    def render(self, content: Any) -> bytes:
        try:  # nearly always: nothing to replace (``printable`` leaves such content as it is)
            return _dumps(content)
        except (ValueError, UnicodeEncodeError):   # a non-finite float; a lone surrogate
            return _dumps(printable(content))


def _dumps(content: Any) -> bytes:
    return json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")


def _error(loc: list, msg: str) -> dict:
    return {"loc": loc, "msg": msg, "type": "value_error"}


def problems(raw: bytes) -> list[dict]:
    """Why ``raw`` is not a strict JSON body, one entry per field at fault; [] if it is (or if it
    is not JSON at all: FastAPI answers that itself)."""
    if not raw.strip():
        return []
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return [_error(["body"], f"the body is not UTF-8 text (byte {exc.start})")]
    try:
        strictjson.loads(text)
        return []
    except strictjson.NotStrictJSON as exc:
        refusal = str(exc)
    try:  # read it leniently, only to say which field is at fault
        value = json.loads(text, parse_constant=float)
    except RecursionError:
        return [_error(["body"], f"nested deeper than {strictjson.MAX_DEPTH}")]
    except ValueError:
        return []
    found = []
    fields = value.items() if isinstance(value, dict) else [("body", value)]
    for name, item in fields:
        try:
            strictjson.check({name: None})
            strictjson.check(item, str(name))
        except strictjson.NotStrictJSON as exc:
            found.append(_error(["body", printable(name)], printable(str(exc))))
    return found or [_error(["body"], refusal)]


def is_json(content_type: bytes | None) -> bool:
    if content_type is None:
        return True
    kind = content_type.split(b";")[0].strip().lower()
    return kind == b"application/json" or (kind.startswith(b"application/") and kind.endswith(b"+json"))


class StrictBody:
    """ASGI middleware: 422 for a JSON body that is not strict JSON; the rest passes unchanged."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("method") in SAFE_METHODS:
            return await self.app(scope, receive, send)
        if not is_json(dict(scope.get("headers") or []).get(b"content-type")):
            return await self.app(scope, receive, send)
        body = await read_body(receive)  # Guard, outside, has capped it
        if body is None:
            return  # the client left
        found = problems(body)
        if found:
            return await SafeJSONResponse({"detail": found}, status_code=422)(scope, receive, send)
        await self.app(scope, replaying(body, receive), send)
