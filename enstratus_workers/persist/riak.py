"""The Riak backend: Riak KV's HTTP API, spoken with ``requests``.

Calls (``/types/T`` is prefixed to ``/buckets/B`` for a bucket named ``T/B``):

* ``GET|HEAD /buckets/B/keys/K`` -- read; the version is the pair (``X-Riak-Vclock``, ``ETag``).
* ``PUT /buckets/B/keys/K?returnbody=true`` with ``x-riak-index-NAME_bin|_int`` headers;
  create-only sends ``If-None-Match: *``, an update sends the vclock it read (so Riak records the
  causality) and ``If-Match: <etag>``; Riak answers ``412`` when the object moved on.
* ``DELETE /buckets/B/keys/K`` (conditional the same way), ``GET /buckets/B/keys?keys=true``,
  ``GET /buckets/B/index/NAME/VALUE`` and ``.../NAME/LO/HI``, ``GET /ping``.

An unconditional put first reads the current vclock (``HEAD``) and sends it, so that even in an
``allow_mult=true`` bucket it replaces the object instead of adding a sibling.

Limits. Riak checks a condition and then writes, not atomically (Basho's docs say so): two
conditional writes racing within milliseconds on different nodes can both pass; only a strongly
consistent bucket type closes that. ``If-Match`` on a key that is gone creates it again
(webmachine refuses only ``If-Match: *`` there). Secondary indexes need the leveldb or memory
backend. A key list may show a just-deleted key until Riak reaps its tombstone. Buckets are
expected to have ``allow_mult=false`` (Riak's default for untyped buckets); if siblings appear
anyway, reads raise ``SiblingsError`` rather than choose one and silently lose the others.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from typing import Any, Mapping
from urllib.parse import quote

import requests
from requests.adapters import HTTPAdapter

from enstratus_workers.persist import values
from enstratus_workers.persist.base import (ABSENT, ANY, NotFound, SiblingsError, StaleWriteError,
                                            Store, StoredObject, StoreError, StoreUnavailable)

log = logging.getLogger(__name__)

_INDEX_PREFIX = "x-riak-index-"
_SPLIT = re.compile(r",\s")


@dataclass(frozen=True)
class RiakVersion:
    """What a conditional write needs: the vclock to send back and the ETag to match."""

    vclock: str
    etag: str


@dataclass(frozen=True)
class _Reply:
    status: int
    headers: Mapping[str, str]
    body: bytes


def _q(text: str) -> str:
    return quote(text.encode("utf-8"), safe="")


def _header_text(value: str) -> str:
    # http.client decodes header bytes as Latin-1; Riak sends back the UTF-8 bytes it was given.
    return value.encode("latin-1").decode("utf-8")


class RiakStore(Store):
    """Objects in Riak at ``base_url`` (``http(s)://host:8098``).

    One ``requests.Session`` is shared by every thread: its urllib3 pool is thread-safe and keeps
    connections alive between calls, and Riak sets no cookies (the Session's one shared mutable
    state). Every call has a timeout; connection errors become ``StoreUnavailable``.
    """

    name = "riak"

    def __init__(self, base_url: str, *, connect_timeout: float = 5.0, read_timeout: float = 30.0,
                 pool_size: int = 16):
        self.base_url = base_url.rstrip("/")
        self._timeout = (connect_timeout, read_timeout)
        self._session = requests.Session()
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=pool_size, max_retries=0)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)

    # -- HTTP -----------------------------------------------------------------------------------

    def _call(self, method: str, path: str, *, headers=None, params=None, body=None) -> _Reply:
        url = self.base_url + path
        try:
            with self._session.request(method, url, headers=headers, params=params, data=body,
                                       timeout=self._timeout, allow_redirects=False) as r:
                reply = _Reply(r.status_code, r.headers, r.content)
        except (requests.ConnectionError, requests.Timeout) as e:
            raise StoreUnavailable(f"Riak at {self.base_url} unreachable: {method} {path}: {e}") from e
        except requests.RequestException as e:
            raise StoreError(f"Riak {method} {path} failed: {e}") from e
        if reply.status == 503:
            raise StoreUnavailable(f"Riak {method} {path}: 503 {self._excerpt(reply)}")
        return reply

    def _unexpected(self, method: str, path: str, reply: _Reply) -> StoreError:
        return StoreError(f"Riak {method} {path}: unexpected {reply.status} {self._excerpt(reply)}")

    @staticmethod
    def _excerpt(reply: _Reply) -> str:
        return reply.body[:200].decode("utf-8", "replace").strip()

    @staticmethod
    def _bucket_path(bucket: str) -> str:
        if "/" in bucket:
            btype, name = bucket.split("/")
            return f"/types/{_q(btype)}/buckets/{_q(name)}"
        return f"/buckets/{_q(bucket)}"

    def _key_path(self, bucket: str, key: str) -> str:
        return f"{self._bucket_path(bucket)}/keys/{_q(key)}"

    def _keys(self, method: str, path: str, params=None) -> list[str]:
        reply = self._call("GET", path, params=params)
        if reply.status != 200:
            raise self._unexpected(method, path, reply)
        return list(json.loads(reply.body)["keys"])

    # -- objects --------------------------------------------------------------------------------

    def _object(self, bucket: str, key: str, reply: _Reply) -> StoredObject:
        vclock, etag = reply.headers.get("X-Riak-Vclock"), reply.headers.get("ETag")
        if not (vclock and etag):
            raise StoreError(f"Riak sent {bucket!r}/{key!r} without X-Riak-Vclock or ETag")
        try:
            data, schema = values.decode(reply.body)
        except ValueError as e:
            raise StoreError(f"{bucket!r}/{key!r} in Riak does not hold JSON: {e}") from None
        indexes: dict[str, str | int] = {}
        for header, raw in reply.headers.items():
            if header.lower().startswith(_INDEX_PREFIX):
                name = header[len(_INDEX_PREFIX):].lower()
                # Our objects hold one value per index; another client's may hold several.
                first = sorted(_SPLIT.split(_header_text(raw)))[0]
                indexes[name] = int(first) if name.endswith("_int") else first
        return StoredObject(bucket, key, data, indexes, RiakVersion(vclock, etag), schema)

    def _siblings(self, bucket: str, key: str) -> SiblingsError:
        log.warning("riak: %r/%r has siblings; is allow_mult=true on the bucket?", bucket, key)
        return SiblingsError(f"{bucket!r}/{key!r} has siblings (is allow_mult=true on the bucket?); "
                             "an unconditional put replaces them")

    def _get(self, bucket, key) -> StoredObject:
        path = self._key_path(bucket, key)
        reply = self._call("GET", path)
        if reply.status == 404:
            raise NotFound(bucket, key)
        if reply.status == 300:
            raise self._siblings(bucket, key)
        if reply.status != 200:
            raise self._unexpected("GET", path, reply)
        return self._object(bucket, key, reply)

    def _check_version(self, expected: Any) -> None:
        if expected is not ANY and expected is not ABSENT and not isinstance(expected, RiakVersion):
            raise TypeError(f"riak: a version is a RiakVersion from this store, not {expected!r}")

    def _current_vclock(self, path: str) -> str | None:
        """The vclock now stored (also of siblings), so an overwrite descends from it."""
        reply = self._call("HEAD", path)
        if reply.status in (200, 300):
            return reply.headers.get("X-Riak-Vclock")
        if reply.status == 404:
            return None
        raise self._unexpected("HEAD", path, reply)

    def _put(self, bucket, key, data, text, schema, indexes, expected) -> StoredObject:
        self._check_version(expected)
        path = self._key_path(bucket, key)
        headers = {"Content-Type": "application/json"}
        for name, value in indexes.items():
            headers[_INDEX_PREFIX + name] = str(value).encode("utf-8")
        if expected is ABSENT:
            headers["If-None-Match"] = "*"
        elif expected is ANY:
            vclock = self._current_vclock(path)
            if vclock:
                headers["X-Riak-Vclock"] = vclock
        else:
            headers["X-Riak-Vclock"] = expected.vclock
            headers["If-Match"] = expected.etag
        reply = self._call("PUT", path, headers=headers, params={"returnbody": "true"},
                           body=text.encode("utf-8"))
        if reply.status == 412:
            reason = ("create-only write, but the object exists" if expected is ABSENT
                      else "the object changed since it was read")
            raise StaleWriteError(bucket, key, reason)
        if reply.status == 300:
            raise self._siblings(bucket, key)
        if reply.status != 200:
            raise self._unexpected("PUT", path, reply)
        return self._object(bucket, key, reply)

    def _delete(self, bucket, key, expected) -> None:
        self._check_version(expected)
        path = self._key_path(bucket, key)
        headers = {}
        if expected is not ANY:
            headers = {"X-Riak-Vclock": expected.vclock, "If-Match": expected.etag}
        reply = self._call("DELETE", path, headers=headers)
        if reply.status in (204, 200):
            return
        if reply.status == 404 and expected is ANY:
            return
        if reply.status in (404, 412):
            raise StaleWriteError(bucket, key, "the object changed or was deleted since it was read")
        raise self._unexpected("DELETE", path, reply)

    def _list_keys(self, bucket) -> list[str]:
        return self._keys("GET", self._bucket_path(bucket) + "/keys", params={"keys": "true"})

    def _query(self, bucket, index, lo, hi) -> list[str]:
        path = f"{self._bucket_path(bucket)}/index/{_q(index)}/{_q(str(lo))}"
        if lo != hi:
            path += f"/{_q(str(hi))}"
        return self._keys("GET", path)

    def ping(self) -> None:
        reply = self._call("GET", "/ping")
        if reply.status != 200:
            raise StoreUnavailable(f"Riak at {self.base_url} answers /ping with {reply.status}")

    def close(self) -> None:
        self._session.close()
