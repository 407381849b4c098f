"""Sealing KM messages: AES-256-GCM under ENCRYPTION_KEY, with replay protection.

A sealed frame (what goes inside the length prefix of ``protocol.py``)::

    offset  size  field
    0       1     version (1)
    1       1     direction: b"Q" request, b"R" response
    2       8     key id: SHA-256(b"enstratus-km key id\\0" + key)[:8]
    10      12    nonce, fresh from os.urandom for every message
    22      n+16  AES-256-GCM ciphertext of the plaintext, with its 16-byte tag

The associated data is bytes 0..10 (version, direction, key id), so a request cannot be turned
into a response, re-labelled with another key id or another version without failing the tag.
The key id lets the receiver pick the key (current or, during a rotation, the old one) without
trial decryption; it is a truncated hash of a random 256-bit key and reveals nothing usable.

The plaintext is ``timestamp_ms (8, big-endian) | request_id (16) | payload``. The server
refuses a request whose timestamp is further than the replay window from its clock, that was
sealed before the KM started, or whose request id it has seen (``ReplayGuard``); the response
carries the request's id back, so a client cannot be handed a recorded response to some earlier
request.
"""

from __future__ import annotations

import hashlib
import heapq
import os
import struct
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from enstratus_workers.clock import now_ms
from enstratus_workers.km import KMError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

VERSION = 1
REQUEST = b"Q"
RESPONSE = b"R"
KEY_SIZE = 32
KEY_ID_SIZE = 8
NONCE_SIZE = 12
REQUEST_ID_SIZE = 16
TAG_SIZE = 16

_HEADER = struct.Struct(">B1s8s12s")       # version, direction, key id, nonce
_INNER = struct.Struct(">Q16s")            # timestamp ms, request id
HEADER_SIZE = _HEADER.size                 # 22
AAD_SIZE = 1 + 1 + KEY_ID_SIZE             # version, direction, key id
OVERHEAD = HEADER_SIZE + _INNER.size + TAG_SIZE


class EnvelopeError(KMError):
    """A frame that cannot be accepted. ``code`` goes back to the peer in an error frame."""

    code = "bad_frame"


class MalformedFrame(EnvelopeError):
    code = "bad_frame"


class UnknownKey(EnvelopeError):
    code = "unknown_key"


class Unauthentic(EnvelopeError):
    code = "unauthentic"


class StaleMessage(EnvelopeError):
    code = "stale"


class ReplayedMessage(EnvelopeError):
    code = "replayed"


class SealedBeforeStart(EnvelopeError):
    """Sealed before this KM started: it may have been seen by the KM before, so it is refused."""

    code = "restarted"


def key_id(key: bytes) -> bytes:
    """The public 8-byte name of a key, sent in every frame so the receiver can pick the key."""
    return hashlib.sha256(b"enstratus-km key id\0" + key).digest()[:KEY_ID_SIZE]


class Keyring:
    """The keys one side accepts, by key id; the first is the one it seals new requests with.

    The server holds the current ENCRYPTION_KEY and, during a rotation, the old one; the client
    holds one key. The raw keys stay inside ``AESGCM`` objects and are never exposed again.
    """

    def __init__(self, current: bytes, *old: bytes):
        # imported here: cryptography is about 9 MiB, and a worker process builds its KM client's
        # keyring only when an action first asks the KM (``km/client.py``)
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        self._ciphers: dict[bytes, AESGCM] = {}
        for key in (current, *old):
            if not isinstance(key, (bytes, bytearray)) or len(key) != KEY_SIZE:
                raise ValueError(f"an AES-256 key is {KEY_SIZE} bytes")
            self._ciphers.setdefault(key_id(bytes(key)), AESGCM(bytes(key)))
        self.current_id = key_id(bytes(current))

    @property
    def key_ids(self) -> tuple[bytes, ...]:
        return tuple(self._ciphers)

    def cipher(self, kid: bytes) -> AESGCM | None:
        return self._ciphers.get(kid)

    def __repr__(self):
        return f"Keyring(key_ids={[k.hex() for k in self._ciphers]})"


@dataclass(frozen=True)
class Opened:
    """An authenticated message: which key it came under, when it was sealed, its id and payload."""

    key_id: bytes
    direction: bytes
    timestamp_ms: int
    request_id: bytes
    payload: bytes

    def __repr__(self):  # the payload may hold a secret
        return (f"Opened(key_id={self.key_id.hex()}, direction={self.direction!r}, "
                f"timestamp_ms={self.timestamp_ms}, request_id={self.request_id.hex()}, "
                f"payload=<{len(self.payload)} bytes>)")


def seal(keyring: Keyring, direction: bytes, payload: bytes, *, request_id: bytes | None = None,
         kid: bytes | None = None, timestamp_ms: int | None = None) -> tuple[bytes, bytes]:
    """Seal ``payload``; return ``(frame, request_id)``.

    A request gets a fresh random request id; a response passes the request's id and the key
    id the request came under (``kid``), so a rotating server answers each client in its key.
    """
    if direction not in (REQUEST, RESPONSE):
        raise ValueError("direction is REQUEST or RESPONSE")
    kid = keyring.current_id if kid is None else kid
    cipher = keyring.cipher(kid)
    if cipher is None:
        raise UnknownKey(f"no key with id {kid.hex()}")
    request_id = os.urandom(REQUEST_ID_SIZE) if request_id is None else request_id
    if len(request_id) != REQUEST_ID_SIZE:
        raise ValueError(f"a request id is {REQUEST_ID_SIZE} bytes")
    ts = now_ms() if timestamp_ms is None else timestamp_ms
    nonce = os.urandom(NONCE_SIZE)
    header = _HEADER.pack(VERSION, direction, kid, nonce)
    body = cipher.encrypt(nonce, _INNER.pack(ts, request_id) + payload, header[:AAD_SIZE])
    return header + body, request_id


def open_frame(keyring: Keyring, frame: bytes, direction: bytes) -> Opened:
    """Authenticate and decrypt one frame expected to travel in ``direction``.

    Raises ``MalformedFrame`` (too short, wrong version or direction), ``UnknownKey`` (a key id
    this side does not hold: usually a client configured with another ENCRYPTION_KEY) or
    ``Unauthentic`` (the tag does not verify: tampering, or a key id collision).
    Freshness and replay are the caller's to check, with ``ReplayGuard``.
    """
    if len(frame) < OVERHEAD:
        raise MalformedFrame(f"frame of {len(frame)} bytes is shorter than the {OVERHEAD}-byte minimum")
    version, got_direction, kid, nonce = _HEADER.unpack_from(frame)
    if version != VERSION:
        raise MalformedFrame(f"unsupported envelope version {version}")
    if got_direction != direction:
        raise MalformedFrame(f"expected a {'request' if direction == REQUEST else 'response'} frame")
    cipher = keyring.cipher(kid)
    if cipher is None:
        raise UnknownKey(f"frame sealed under unknown key id {kid.hex()}")
    from cryptography.exceptions import InvalidTag   # loaded already, with the keyring's AESGCM

    try:
        plain = cipher.decrypt(nonce, frame[HEADER_SIZE:], frame[:AAD_SIZE])
    except InvalidTag:
        raise Unauthentic(f"frame under key id {kid.hex()} failed authentication") from None
    ts, request_id = _INNER.unpack_from(plain)
    return Opened(kid, got_direction, ts, request_id, plain[_INNER.size:])


class ReplayGuard:
    """Refuses stale messages and request ids already seen within the replay window.

    Ids are remembered until their timestamp leaves the window, so memory is bounded by the
    request rate times the window, and hard-capped at ``max_entries``. When the cap is hit the
    oldest ids are forgotten and ``floor`` rises to their timestamp: anything sealed at or before
    the floor is then refused as stale, so forgetting an id never lets its message be replayed.
    Only authenticated messages reach the guard, so only a key holder can fill it. Thread-safe.

    The ids live in memory, so a restart forgets them; ``not_before_ms`` (the KM's start time)
    then refuses every message sealed earlier (``SealedBeforeStart``), which is every message the
    previous run can have seen.
    """

    def __init__(self, window_ms: int, max_entries: int = 100_000, not_before_ms: int = -1):
        if window_ms <= 0 or max_entries <= 0:
            raise ValueError("window_ms and max_entries must be positive")
        self.window_ms = window_ms
        self.max_entries = max_entries
        self.floor = -1
        self.not_before_ms = not_before_ms
        self._seen: set[bytes] = set()
        self._by_time: list[tuple[int, bytes]] = []
        self._lock = threading.Lock()

    def __len__(self):
        return len(self._seen)

    def check(self, opened: Opened, now: int | None = None) -> None:
        """Accept ``opened`` once (remembering its id) or raise ``StaleMessage``/``ReplayedMessage``."""
        now = now_ms() if now is None else now
        ts = opened.timestamp_ms
        if abs(now - ts) > self.window_ms:
            raise StaleMessage(f"message timestamp is {(ts - now) / 1000:+.1f}s from the KM's clock, "
                               f"outside the {self.window_ms / 1000:g}s replay window (clock skew?)")
        if ts < self.not_before_ms:
            raise SealedBeforeStart(f"message was sealed {(self.not_before_ms - ts) / 1000:.3f}s before "
                                    f"the KM started; seal it again")
        with self._lock:
            self._expire(now)
            if ts <= self.floor:
                raise StaleMessage("message is older than the replay cache's floor (KM under heavy load)")
            if opened.request_id in self._seen:
                raise ReplayedMessage(f"request id {opened.request_id.hex()} was already used")
            self._seen.add(opened.request_id)
            heapq.heappush(self._by_time, (ts, opened.request_id))
            while len(self._seen) > self.max_entries:
                old_ts, old_id = heapq.heappop(self._by_time)
                self._seen.discard(old_id)
                self.floor = max(self.floor, old_ts)

    def _expire(self, now: int) -> None:
        horizon = now - self.window_ms
        while self._by_time and self._by_time[0][0] < horizon:
            self._seen.discard(heapq.heappop(self._by_time)[1])
