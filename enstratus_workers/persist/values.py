"""What every backend accepts: bucket, key and index rules, and the JSON envelope of a value.

The rules are the intersection of what Riak's HTTP API and the SQL tables can hold unchanged,
so an object written through one backend can move to another: names fit the SQL columns
(measured in UTF-8 bytes), index names end in ``_bin`` or ``_int`` as Riak requires, and a
``_bin`` value never contains what Riak's index header parsing would split or trim.
"""

from __future__ import annotations

import json
import re
from typing import Any, Mapping

MAX_BUCKET_BYTES = 200
MAX_KEY_BYTES = 512
MAX_INDEX_NAME_BYTES = 128
MAX_BIN_VALUE_BYTES = 1024
INT_MIN, INT_MAX = -(2 ** 63), 2 ** 63 - 1   # BIGINT in MySQL and SQLite

# Lower case only: HTTP header names are case-insensitive and Riak hands them back lowered.
_INDEX_NAME = re.compile(r"[a-z0-9][a-z0-9_.\-]*_(bin|int)")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# Riak splits an x-riak-index-* header into several values on a comma followed by whitespace.
_RIAK_SPLIT = re.compile(r",\s")


def _utf8_len(text: str, what: str) -> int:
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise ValueError(f"{what} {text!r} is not valid Unicode text: {exc}") from None


def check_bucket(bucket: str) -> None:
    """A non-empty name; ``type/bucket`` selects a Riak bucket type (one slash at most)."""
    if not isinstance(bucket, str) or not bucket:
        raise TypeError(f"bucket must be a non-empty string, not {bucket!r}")
    if _utf8_len(bucket, "bucket") > MAX_BUCKET_BYTES:
        raise ValueError(f"bucket {bucket!r} is longer than {MAX_BUCKET_BYTES} UTF-8 bytes")
    if _CONTROL.search(bucket):
        raise ValueError(f"bucket {bucket!r} contains a control character")
    parts = bucket.split("/")
    if len(parts) > 2 or not all(parts):
        raise ValueError(f"bucket {bucket!r}: use 'bucket' or 'type/bucket'")


def check_key(key: str) -> None:
    if not isinstance(key, str) or not key:
        raise TypeError(f"key must be a non-empty string, not {key!r}")
    if _utf8_len(key, "key") > MAX_KEY_BYTES:
        raise ValueError(f"key {key!r} is longer than {MAX_KEY_BYTES} UTF-8 bytes")


def index_kind(name: str) -> str:
    """``"bin"`` or ``"int"``, from the index name's suffix; raises ``ValueError`` for a bad name."""
    if not isinstance(name, str) or not _INDEX_NAME.fullmatch(name):
        raise ValueError(f"index name {name!r} must be lower-case letters, digits, '_', '.', '-' "
                         "and end in _bin (strings) or _int (integers)")
    if len(name) > MAX_INDEX_NAME_BYTES:
        raise ValueError(f"index name {name!r} is longer than {MAX_INDEX_NAME_BYTES} bytes")
    return name[-3:]


def check_index_value(name: str, value: Any) -> None:
    if index_kind(name) == "int":
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"index {name}: an _int index takes an int, not {value!r}")
        if not INT_MIN <= value <= INT_MAX:
            raise ValueError(f"index {name}: {value} does not fit in 64 bits")
        return
    if not isinstance(value, str) or not value:
        raise TypeError(f"index {name}: a _bin index takes a non-empty string, not {value!r}")
    if _utf8_len(value, f"index {name} value") > MAX_BIN_VALUE_BYTES:
        raise ValueError(f"index {name}: value longer than {MAX_BIN_VALUE_BYTES} UTF-8 bytes")
    if _CONTROL.search(value) or _RIAK_SPLIT.search(value) or value != value.strip():
        raise ValueError(f"index {name}: value {value!r} holds a control character, "
                         "', ' or surrounding whitespace, which Riak's index headers cannot carry")


def check_indexes(indexes: Mapping[str, Any]) -> dict[str, str | int]:
    """A validated copy: one value per index name."""
    if not isinstance(indexes, Mapping):
        raise TypeError(f"indexes must be a mapping of name to value, not {indexes!r}")
    for name, value in indexes.items():
        check_index_value(name, value)
    return dict(indexes)


def encode(data: Any, schema: int) -> str:
    """The stored text: ``{"schema": N, "data": ...}`` as strict JSON (no NaN), UTF-8 friendly."""
    try:
        return json.dumps({"schema": schema, "data": data}, ensure_ascii=False,
                          allow_nan=False, separators=(",", ":"))
    except ValueError as exc:
        raise ValueError(f"data is not strict JSON: {exc}") from None


def decode(text: str | bytes) -> tuple[Any, int]:
    """``(data, schema)`` from stored text; a value without the envelope is schema 0, as is."""
    value = json.loads(text)
    if (isinstance(value, dict) and value.keys() == {"schema", "data"}
            and isinstance(value["schema"], int) and not isinstance(value["schema"], bool)):
        return value["data"], value["schema"]
    return value, 0
