"""``KMClient``: how workers fetch and store credentials in the KM daemon.

Each call opens its own TCP connection, sends one sealed request and reads one sealed response.
That costs a loopback handshake per call and buys simple correctness: no shared socket, so the
client is thread-safe without a lock and survives forks, and a KM restart never leaves it
holding a dead connection. Connection failures are retried with exponential backoff
(``settings.retries`` times); refusals are not, except two that say the KM did not act and will
soon: "busy" (every connection slot taken, as during a flood of idle connections) and
"restarted" (the request was sealed before the KM started). Those are retried for up to
``busy_patience`` seconds with capped exponential backoff and full jitter, so a transient flood
or a restart does not fail a job, and many clients told "busy" at once do not come back in step.
After a request has been sent, only idempotent
operations are retried (``delete`` is not: a lost answer to a delete that went through would
come back as ``KMNotFound`` on the retry). Every attempt is sealed afresh: a new request id and
timestamp, so the KM's replay guard never mistakes a retry for a replay.

With ``settings.ssl`` each connection is TLS 1.3 (``tls.py``): the KM's certificate is verified
against ``ca_file`` and must name ``server_name`` (default: ``host``), and this host presents
``cert_file``. A TLS failure that is a configuration matter (untrusted or expired certificate, a
KM that does not know this client's CA, no common TLS version, a KM without TLS) is a
``KMRefused`` with code ``tls``, not retried; a connection that just closed is retried as before.
"""

from __future__ import annotations

import functools
import logging
import socket
import ssl
import time
from typing import Any, Mapping

from enstratus_workers.backoff import Backoff
from enstratus_workers.config.problems import raise_all
from enstratus_workers.config.settings import KMClientSettings, Secret
from enstratus_workers.errors import ConfigError
from enstratus_workers.km import KMError, KMRefused, KMUnavailable
from enstratus_workers.km import protocol as p
from enstratus_workers.km.envelope import (KEY_SIZE, REQUEST, RESPONSE, EnvelopeError, Keyring, key_id,
                                           open_frame, seal)
from enstratus_workers.km.tls import (
    TLSFiles,
    client_context,
    describe_refusal,
    is_tls_refusal,
    tls_file_problems,
)
from enstratus_workers.runtime.on_first_use import OnFirstUse

log = logging.getLogger(__name__)

_IDEMPOTENT = frozenset({"ping", "get", "list", "put"})
_MAX_BACKOFF = 2.0
BUSY_PATIENCE = 5.0     # seconds of "busy"/"restarted" answers a call sits out before failing
#: delays between "busy"/"restarted" answers: 20 ms doubling to 0.5 s, full jitter
_BUSY_BACKOFF = Backoff(first=0.02, cap=0.5, jitter="full")
_NOT_ACTED = ("busy", "restarted")


class _Retryable(Exception):
    """A failure worth another attempt; ``sent`` says whether the KM may have acted on it."""

    def __init__(self, reason: str, sent: bool):
        super().__init__(reason)
        self.sent = sent


class _NotYet(Exception):
    """The KM refused before acting and says a later attempt will do ("busy", "restarted")."""


class KMClient:
    """Talks to the KM at ``settings.host:settings.port`` under ``encryption_key`` (32 bytes).

    ``settings.timeout`` bounds the connect and, separately, the wait for the whole answer.
    Raises ``KMUnavailable`` (unreachable after the retries), ``KMRefused`` (wrong key, stale
    clock, bad request, a response that does not authenticate, TLS refused), ``KMForbidden`` (with
    TLS: the KM's access list does not grant this host the account) and ``KMNotFound``.
    """

    def __init__(self, settings: KMClientSettings, encryption_key: Secret, *,
                 backoff: float = 0.1, max_frame: int = p.MAX_FRAME, busy_patience: float = BUSY_PATIENCE):
        key = encryption_key.reveal()
        if not isinstance(key, (bytes, bytearray)) or len(key) != KEY_SIZE:
            raise ConfigError(f"must be {KEY_SIZE} bytes for the KM client", key="ENCRYPTION_KEY")
        self._tls: ssl.SSLContext | None = None
        if settings.ssl:
            files = {"ca_file": settings.ca_file, "cert_file": settings.cert_file, "key_file": settings.key_file}
            raise_all(tls_file_problems(files, settings.source))
            self._tls = client_context(TLSFiles(**files))
        self.settings = settings
        # the keyring (its AESGCM, i.e. cryptography) is made on the first call, once even when
        # actions call from several threads: a worker process builds this client at start, and
        # most of them never ask the KM for a credential
        self._key_id = key_id(bytes(key))
        self._ring = OnFirstUse(functools.partial(Keyring, bytes(key)))
        self._backoff = Backoff(first=backoff, cap=_MAX_BACKOFF, jitter="equal")  # reconnects
        self._busy_patience = busy_patience
        self._max_frame = max_frame
        self._closed = False

    def __repr__(self):
        return f"KMClient({self.settings.host}:{self.settings.port}, key_id={self._key_id.hex()})"

    @property
    def _keyring(self) -> Keyring:
        return self._ring.get()

    def __enter__(self) -> "KMClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Refuse further calls. There is no socket to close between calls."""
        self._closed = True

    # -- the API -------------------------------------------------------------------------------

    def ping(self) -> None:
        """Round-trip to the KM and its database; raises if either is unwell (for the pinger)."""
        self._call("ping")

    def put(self, account: str | int, name: str, secret: bytes | str, kind: str = "api_key",
            metadata: Mapping[str, Any] | None = None) -> int:
        """Store (or replace) a secret; returns the credential's new version.

        ``metadata`` is stored and listed in clear: labels such as region or fingerprint, never
        secrets. A ``str`` secret is stored as its UTF-8 bytes.
        """
        raw = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
        result = self._call("put", account, name, kind=kind, secret=raw, metadata=metadata)
        try:
            return int(result["version"])
        except (TypeError, KeyError, ValueError):
            raise KMRefused("KM put response carries no version", "bad_response") from None

    def get(self, account: str | int, name: str) -> p.Credential:
        """The credential with its secret (a ``Secret`` of bytes); ``KMNotFound`` if absent."""
        return p.credential_from_wire(self._call("get", account, name))

    def list(self, account: str | int) -> list[p.CredentialInfo]:
        """Names, kinds and metadata of an account's credentials, never their secrets."""
        result = self._call("list", account)
        if not isinstance(result, list):
            raise KMRefused("KM list response is not a list", "bad_response")
        return [p.info_from_wire(i) for i in result]

    def delete(self, account: str | int, name: str) -> None:
        """Remove a credential; ``KMNotFound`` if it does not exist."""
        self._call("delete", account, name)

    # -- one call --------------------------------------------------------------------------------

    def _call(self, op: str, account: str | int = "", name: str = "", **fields) -> Any:
        if self._closed:
            raise KMError("the KM client is closed", "closed")
        account = str(account) if account != "" else ""
        payload = p.encode_request(op, account, name, **fields)
        attempts = 1 + max(0, self.settings.retries)
        where = f"{self.settings.host}:{self.settings.port}"
        patient_until = time.monotonic() + self._busy_patience
        attempt, waits = 1, 0
        while True:
            try:
                return self._attempt(payload)
            except _NotYet as exc:
                waits += 1
                remaining = patient_until - time.monotonic()
                if remaining <= 0:
                    raise KMUnavailable(f"KM at {where} {exc} for {self._busy_patience:g}s; giving up") from None
                delay = min(remaining, _BUSY_BACKOFF.delay(waits))
                (log.warning if waits == 1 else log.debug)("KM %s at %s: %s; retrying for up to %gs",
                                                           op, where, exc, self._busy_patience)
                time.sleep(delay)
            except _Retryable as exc:
                if exc.sent and op not in _IDEMPOTENT:
                    raise KMUnavailable(f"KM at {where}: {exc} after sending {op}; it may or may "
                                        f"not have been applied") from None
                if attempt == attempts:
                    raise KMUnavailable(f"KM at {where} unavailable after {attempts} attempts: {exc}") from None
                delay = self._backoff.delay(attempt)
                log.warning("KM %s at %s failed (%s); retry %d/%d in %.2fs", op, where, exc,
                            attempt, attempts - 1, delay)
                attempt += 1
                time.sleep(delay)

    def _attempt(self, payload: bytes) -> Any:
        s = self.settings
        frame, request_id = seal(self._keyring, REQUEST, payload)
        try:
            conn = socket.create_connection((s.host, s.port), timeout=s.timeout)
        except OSError as exc:
            raise _Retryable(f"cannot connect: {exc.strerror or exc}", sent=False) from None
        try:
            # before the TLS handshake too: its flights are several small writes, which Nagle's
            # algorithm would hold back for the peer's delayed ACK (measured: 18 ms a call)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError as exc:
            conn.close()
            raise _Retryable(f"cannot connect: {exc.strerror or exc}", sent=False) from None
        if self._tls is not None:
            conn = self._handshake(conn)
        with conn:
            try:
                p.write_frame(conn, frame)
            except OSError as exc:
                self._raise_if_tls_refused(exc)
                if self._tls is not None:
                    self._raise_pending_alert(conn)
                raise _Retryable(f"cannot send: {exc.strerror or exc}", sent=False) from None
            try:
                reply = p.read_frame(conn, self._max_frame, time.monotonic() + s.timeout)
            except p.FrameTooLarge as exc:
                raise KMRefused(f"KM response refused: {exc}", "bad_response") from None
            except (OSError, p.FrameError) as exc:  # TimeoutError is an OSError
                # TLS 1.3: the KM judges the client's certificate after the client's handshake is
                # done, so its refusal (an alert) arrives here, at the first read
                self._raise_if_tls_refused(exc)
                raise _Retryable(f"no answer: {exc}", sent=True) from None
        if reply is None:
            raise _Retryable("connection closed without an answer", sent=True)
        return p.decode_response(self._open(reply, request_id))

    def _handshake(self, conn: socket.socket) -> ssl.SSLSocket:
        s = self.settings
        try:
            return self._tls.wrap_socket(conn, server_hostname=s.server_name or s.host)
        except OSError as exc:
            conn.close()
            self._raise_if_tls_refused(exc)
            raise _Retryable(f"TLS handshake broke off: {exc.strerror or exc}", sent=False) from None

    def _raise_pending_alert(self, conn: ssl.SSLSocket) -> None:
        """A KM that refused our certificate may have closed before our request went out: the
        send fails, and its reason is the alert waiting to be read."""
        try:
            conn.settimeout(min(self.settings.timeout, 1.0))
            conn.recv(1)
        except OSError as exc:
            self._raise_if_tls_refused(exc)

    def _raise_if_tls_refused(self, exc: BaseException) -> None:
        if is_tls_refusal(exc):
            raise KMRefused(f"KM at {self.settings.host}:{self.settings.port} refused TLS: "
                            f"{describe_refusal(exc)}", "tls") from None

    def _open(self, reply: bytes, request_id: bytes) -> bytes:
        refusal = p.parse_error_frame(reply)
        if refusal is not None:
            code, message = refusal
            if code in _NOT_ACTED:
                raise _NotYet(f"said {code} ({message})")
            if code == "unknown_key":
                message = (f"the KM does not hold this client's ENCRYPTION_KEY (key id "
                           f"{self._keyring.current_id.hex()}); compare enstratus-provisioning.cfg "
                           f"on both hosts")
            raise KMRefused(f"KM at {self.settings.host}:{self.settings.port} refused the request "
                            f"({code}): {message}", code)
        try:
            opened = open_frame(self._keyring, reply, RESPONSE)
        except EnvelopeError as exc:
            raise KMRefused(f"KM response failed authentication: {exc}", "bad_response") from None
        if opened.request_id != request_id or opened.key_id != self._keyring.current_id:
            raise KMRefused("KM response answers another request (a replayed response?)", "bad_response")
        return opened.payload
