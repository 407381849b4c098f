"""The KM daemon: a TCP server that answers sealed credential requests from the store.

One thread accepts (with a selector, so it notices a stop within ``POLL`` seconds); each
connection gets a thread of its own, at most ``max_connections`` at once, and may carry any
number of requests. A connection must deliver its first frame whole within
``first_frame_timeout`` of being accepted; until that frame has authenticated it is one of the
few unauthenticated connections ``admission.py`` allows (per address and in all), so idle
connections cannot shut out clients that hold the key. Anything that does not authenticate, is
stale, replayed, sealed before the KM started, oversized or garbage gets one unauthenticated
error frame (``protocol.py``) where the stream still allows it, and the connection is closed;
the daemon logs the peer and the reason (never a secret) and keeps serving everyone else. Requests that authenticate always get a sealed response under the
key they came in with, which is what lets a rotation run with old and new keys at once.

With ``ssl = true`` each connection first completes a TLS 1.3 handshake in its own thread (within
``first_frame_timeout``, so a slow handshake holds no one else up), presenting a client
certificate from the CA; a plaintext client is told ``tls_required`` in clear (its first byte
is not a TLS record's). The sealed frames then travel inside TLS, and every request but ``ping``
must be for an account the access list grants the certificate's name; a refusal is logged
(client, peer, op, account, credential name) and answered ``forbidden``.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import selectors
import socket
import ssl
import threading
import time
from typing import Callable

from enstratus_workers.clock import now_ms
from enstratus_workers.config.problems import raise_all
from enstratus_workers.errors import DaemonError, DatabaseError
from enstratus_workers.km import KMError, KMForbidden, KMNotFound
from enstratus_workers.km import protocol as p
from enstratus_workers.km.access import AccessList, load_access
from enstratus_workers.km.admission import Admission, Busy, Slot, Throttle, evict
from enstratus_workers.km.config import KMSettings, tls_problems
from enstratus_workers.km.envelope import (
    REQUEST,
    RESPONSE,
    EnvelopeError,
    Keyring,
    ReplayGuard,
    open_frame,
    seal,
)
from enstratus_workers.km.store import CredentialStore, load_or_create_master_key
from enstratus_workers.km.tls import HANDSHAKE_RECORD, peer_names, server_context
from enstratus_workers.runtime.service import Service

log = logging.getLogger(__name__)

POLL = 0.2          # seconds between looks at the stop flag
ACCEPT_RETRY_S = 0.5  # the pause after an accept that failed for want of descriptors or memory
STOP_GRACE = 0.7    # seconds running requests get to finish once a stop is noticed
LINGER = 0.25       # seconds a refused peer's remaining input is drained before closing
LINGER_BYTES = 1 << 20
_EVICTED = p.error_frame("busy", "the KM needed this idle connection; retry")
_EVICTED_WIRE = p.LENGTH.pack(len(_EVICTED)) + _EVICTED   # as it goes on the wire


class KMService(Service):
    """The ``km`` daemon: serves ``KMSettings.host:port`` until ``request_stop``.

    Warm and cold stops are the same here: requests take milliseconds, so a stop lets the
    running ones answer (up to ``STOP_GRACE``), then closes every connection and the store.
    ``store_factory`` lets tests substitute the store; by default ``run`` opens the database
    and the master key itself, after the runner has daemonized (no connection crosses a fork).
    """

    daemon = "km"

    def __init__(self, settings: KMSettings, keyring: Keyring, name: str = "default",
                 store_factory: Callable[[], CredentialStore] | None = None):
        self.settings = settings
        self.name = name
        self._keyring = keyring
        self._guard = ReplayGuard(int(settings.replay_window * 1000), settings.replay_cache_size)
        self._store_factory = store_factory or self._open_store
        self._store: CredentialStore | None = None
        self._stopping = False      # set by request_stop (a signal handler): a plain flag
        self._admission = Admission(settings.max_connections, settings.max_pending_per_address)
        self._flood_log = Throttle(log)
        self._threads: set[threading.Thread] = set()
        self.address: tuple[str, int] | None = None
        self._tls: ssl.SSLContext | None = None
        self._access: AccessList | None = None     # applied only with TLS: names need certificates
        if settings.ssl:
            raise_all(tls_problems(settings))      # as config check would: exit 6 naming the key
            self._tls = server_context(settings.tls_files)
            self._access = load_access(settings.access_file)

    def __repr__(self):
        return f"KMService(name={self.name!r}, address={self.address}, keys={self._keyring!r})"

    def request_stop(self, cold: bool = False) -> None:
        self._stopping = True

    def run(self, ready: Callable[[], None]) -> None:
        # The replay guard's request ids live in memory, so a request captured before a restart
        # would be accepted again for the rest of its replay window. Rather than write every
        # request id to the database (a write per get, and a database the KM cannot answer
        # without), requests sealed before this start are refused: they are the only ones the
        # previous run can have seen. Clock skew: a client whose clock runs d ahead of the KM's
        # could have a request sealed in the last d before the start replayed (NTP keeps d to
        # milliseconds); a client d behind is refused ("restarted", which the client retries by
        # sealing afresh) for d after a start.
        self._guard.not_before_ms = now_ms()
        self._store = self._store_factory()
        try:
            listener = self._listen()
        except BaseException:
            self._store.close()
            raise
        sel = selectors.DefaultSelector()
        try:
            sel.register(listener, selectors.EVENT_READ)
            log.info("KM %s listening on %s:%d (key ids %s, replay window %gs)", self.name,
                     *self.address, ", ".join(k.hex() for k in self._keyring.key_ids),
                     self.settings.replay_window)
            if self._access is not None:
                log.info("KM %s speaks TLS 1.3 only, client certificates from %s; %d client(s) in %s",
                         self.name, self.settings.ca_file, len(self._access.grants), self._access.source)
            ready()
            while not self._stopping:
                if sel.select(POLL):
                    self._accept(listener)
        finally:
            # Shutdown order: stop taking connections; let running requests answer (connection
            # threads see the flag between requests, within POLL); then close the store.
            sel.close()
            listener.close()
            deadline = time.monotonic() + STOP_GRACE
            for t in list(self._threads):
                t.join(max(0.0, deadline - time.monotonic()))
            if any(t.is_alive() for t in self._threads):
                log.warning("KM %s stopping with requests still running", self.name)
            self._store.close()
            log.info("KM %s stopped", self.name)

    # -- sockets -----------------------------------------------------------------------------

    def _open_store(self) -> CredentialStore:
        key = load_or_create_master_key(self.settings.master_key_file)
        return CredentialStore.open(self.settings.credentials_url.reveal(), key)

    def _listen(self) -> socket.socket:
        try:
            listener = socket.create_server((self.settings.host, self.settings.port), backlog=128)
        except OSError as exc:
            raise DaemonError(f"KM cannot listen on {self.settings.host}:{self.settings.port}: "
                              f"{exc.strerror or exc}") from None
        listener.setblocking(False)
        self.address = listener.getsockname()[:2]
        return listener

    def _accept(self, listener: socket.socket) -> None:
        try:
            conn, peer = listener.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return
        except OSError as exc:
            if exc.errno in (errno.EBADF, errno.EINVAL):   # the listener itself is gone
                raise
            # Out of file descriptors (EMFILE, ENFILE) or kernel memory: the connection waits in
            # the backlog, and the KM with it; ending the daemon over it would refuse every
            # client after. The pause keeps a listener that stays readable from spinning.
            self._flood_log.warning("accept", "KM could not accept a connection (%s); trying again "
                                    "in %.1f s", exc, ACCEPT_RETRY_S)
            time.sleep(ACCEPT_RETRY_S)
            return
        slot = Slot(conn, peer[0], f"{peer[0]}:{peer[1]}", tls=self._tls is not None)
        self._threads = {t for t in self._threads if t.is_alive()}
        try:
            victim = self._admission.admit(slot)
        except Busy as exc:
            self._flood_log.warning("busy", "KM refused %s: %s", slot.peer, exc)
            self._refuse(conn, "busy", "too many connections to the KM; retry later")
            return
        if victim is not None:
            self._flood_log.warning("evicted", "KM closed %s, idle without a request, to admit %s",
                                    victim.peer, slot.peer)
            evict(victim, _EVICTED_WIRE)
        conn.setblocking(True)
        t = threading.Thread(target=self._serve, args=(slot,), name=f"km-conn-{slot.peer}", daemon=True)
        try:
            t.start()
        except RuntimeError:  # the OS would not give us another thread
            self._admission.release(slot)
            self._refuse(conn, "busy", "the KM cannot serve another connection now; retry later")
            return
        self._threads.add(t)

    def _refuse(self, conn: socket.socket, code: str, message: str) -> None:
        with conn:
            if self._tls is None:   # a TLS client would read a frame in clear as a broken handshake
                _refuse_and_close(conn, p.error_frame(code, message))

    def _handshake(self, slot: Slot, sel: selectors.BaseSelector, deadline: float) -> ssl.SSLSocket | None:
        """The connection of ``slot`` once its TLS handshake is done (``slot.sock`` becomes it), or
        ``None`` after a plaintext client was told to use TLS, a failed handshake, or ``deadline``."""
        raw = slot.sock
        sel.register(raw, selectors.EVENT_READ)
        if not self._wait_for_request(sel, deadline):
            if not self._stopping:
                self._flood_log.warning("first-frame", "KM dropped %s: no TLS handshake within %gs of "
                                        "connecting", slot.peer, self.settings.first_frame_timeout)
            return None
        first = raw.recv(1, socket.MSG_PEEK)
        sel.unregister(raw)
        if not first:
            return None
        if first[0] != HANDSHAKE_RECORD:
            self._flood_log.warning("plaintext", "KM refused %s: a plaintext client at a TLS port "
                                    "(ssl = false in its enstratus-km-client.cfg?)", slot.peer)
            self._admission.release(slot)
            _refuse_and_close(raw, p.error_frame(
                "tls_required", "this KM speaks TLS only: set ssl = true with ca_file, cert_file and "
                                "key_file in enstratus-km-client.cfg"))
            return None
        conn = self._tls.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
        slot.sock = conn
        conn.settimeout(max(0.001, deadline - time.monotonic()))
        try:
            conn.do_handshake()
        except OSError as exc:  # ssl.SSLError and TimeoutError are OSErrors
            self._flood_log.warning("handshake", "KM refused %s: TLS handshake failed (%s)", slot.peer,
                                    getattr(exc, "reason", None) or exc)
            self._admission.release(slot)   # no slot held while the alert is let through
            _drain(conn)
            return None
        sel.register(conn, selectors.EVENT_READ)
        return conn

    def _serve(self, slot: Slot) -> None:
        conn, peer = slot.sock, slot.peer
        sel = selectors.DefaultSelector()
        authenticated = False
        client: tuple[str, ...] = ()
        try:
            with contextlib.ExitStack() as closing:
                closing.callback(lambda: slot.sock.close())   # the TLS socket once there is one
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                first_deadline = slot.accepted + self.settings.first_frame_timeout
                if self._tls is None:
                    sel.register(conn, selectors.EVENT_READ)
                else:
                    conn = self._handshake(slot, sel, first_deadline)
                    if conn is None:
                        return
                    client = peer_names(conn)
                    peer = f"{client[0] if client else '(unnamed)'} at {peer}"
                while True:
                    if authenticated:
                        if not self._wait_for_request(sel, time.monotonic() + self.settings.idle_timeout, conn):
                            return
                        deadline = time.monotonic() + self.settings.frame_timeout
                    else:
                        if not self._wait_for_request(sel, first_deadline, conn):
                            if not self._stopping:
                                self._flood_log.warning("first-frame", "KM dropped %s: no request within "
                                                        "%gs of connecting", peer, self.settings.first_frame_timeout)
                            return
                        deadline = first_deadline
                    try:
                        frame = p.read_frame(conn, self.settings.max_frame, deadline)
                    except p.FrameTooLarge as exc:
                        log.warning("KM refused a frame from %s: %s", peer, exc)
                        self._admission.release(slot)
                        _refuse_and_close(conn, p.error_frame(exc.code, str(exc)))
                        return
                    except (p.FrameError, TimeoutError) as exc:
                        self._flood_log.warning("dropped", "KM dropped %s: %s", peer, exc)
                        return
                    if frame is None or not (authenticated or self._admission.claim(slot)):
                        return   # closed, or displaced by a newcomer (and told "busy") meanwhile
                    reply, keep_open = self._answer(frame, peer, client)
                    if not keep_open:
                        # released first: a refused peer must not hold a slot while we linger
                        self._admission.release(slot)
                        _refuse_and_close(conn, reply)
                        return
                    if not authenticated:
                        self._admission.authenticated(slot)
                        authenticated = True
                    conn.settimeout(self.settings.frame_timeout)
                    p.write_frame(conn, reply)
        except OSError as exc:
            log.info("KM connection from %s failed: %s", peer, exc)
        except Exception:  # noqa: BLE001 - one bad connection must not take the daemon down
            log.exception("KM connection from %s failed unexpectedly", peer)
        finally:
            sel.close()
            self._admission.release(slot)

    def _wait_for_request(self, sel: selectors.BaseSelector, until: float, conn=None) -> bool:
        """True once the next request starts arriving; False on stop or at ``until`` (monotonic)."""
        if isinstance(conn, ssl.SSLSocket) and conn.pending():
            return True   # already decrypted into the TLS buffer: the socket will not signal it
        while not self._stopping:
            remaining = until - time.monotonic()
            if remaining <= 0:
                return False
            if sel.select(min(POLL, remaining)):
                return True
        return False

    # -- requests ----------------------------------------------------------------------------

    def _answer(self, frame: bytes, peer: str, client: tuple[str, ...] = ()) -> tuple[bytes, bool]:
        """The frame to send back, and whether the connection may carry further requests."""
        try:
            opened = open_frame(self._keyring, frame, REQUEST)
            self._guard.check(opened)
        except EnvelopeError as exc:
            log.warning("KM refused a request from %s (%s): %s", peer, exc.code, exc)
            return p.error_frame(exc.code, str(exc)), False
        try:
            request = p.decode_request(opened.payload)
            payload = p.encode_ok(self._dispatch(request, peer, opened.key_id.hex(), client))
        except KMForbidden as exc:
            payload = p.encode_error(exc.code, str(exc), account=exc.account, client=exc.client)
        except KMNotFound as exc:
            payload = p.encode_error("not_found", str(exc))
        except p.BadRequest as exc:
            log.warning("KM bad request from %s: %s", peer, exc)
            payload = p.encode_error("bad_request", str(exc))
        except DatabaseError as exc:
            payload = p.encode_error("unavailable", str(exc))
        except KMError as exc:
            payload = p.encode_error(exc.code, str(exc))
        except Exception:  # noqa: BLE001 - answer, log, keep serving
            log.exception("KM request from %s failed", peer)
            payload = p.encode_error("internal", "the KM failed to handle the request; see its log")
        reply, _ = seal(self._keyring, RESPONSE, payload, request_id=opened.request_id, kid=opened.key_id)
        return reply, True

    def _dispatch(self, req: p.Request, peer: str, kid: str, client: tuple[str, ...] = ()):
        store = self._store
        if self._access is not None and req.op != "ping" and not self._access.allows(client, req.account):
            self._refuse_account(req, peer, client)
        audit = log.info if req.op in ("put", "delete") else log.debug
        audit("KM %s from %s (key %s)", req.describe(), peer, kid)
        if req.op == "ping":
            store.ping()
            return {"pong": True}
        if req.op == "put":
            version = store.put(req.account, req.name, req.secret.reveal(), req.kind, req.metadata)
            return {"version": version}
        if req.op == "get":
            return p.credential_to_wire(store.get(req.account, req.name))
        if req.op == "list":
            return [p.info_to_wire(i) for i in store.list(req.account)]
        store.delete(req.account, req.name)
        return {"deleted": True}

    def _refuse_account(self, req: p.Request, peer: str, client: tuple[str, ...]):
        """Log (op, account, credential name: ``describe`` never holds the secret) and raise."""
        name = client[0] if client else "(a certificate without a name)"
        why = "is granted other accounts" if self._access.listed(client) else "is not listed"
        log.warning("KM refused %s from %s: client %s %s in %s", req.describe(), peer, name, why,
                    self._access.source)
        raise KMForbidden(f"client {name!r} may not use account {req.account!r}: it {why} in the KM's "
                          f"access list ({self._access.source.name})", req.account, name)


def _refuse_and_close(conn: socket.socket, frame: bytes) -> None:
    """Send an error frame, then half-close and drain what the peer still sends (briefly, boundedly).

    Closing a socket with unread input makes the kernel send a reset, which can destroy the
    error frame before the peer reads it: the peer would see "connection reset" instead of why.
    """
    try:
        conn.settimeout(LINGER)
        p.write_frame(conn, frame)
    except OSError:
        return
    _drain(conn)


def _drain(conn: socket.socket) -> None:
    """Half-close, then read and drop what the peer still sends, for at most ``LINGER``.

    The plain socket's methods, also for a TLS one: after a refusal its TLS state is done with
    (or broken, after a failed handshake), and the point is only that the kernel sends no reset
    over the reason (an error frame, a TLS alert) before the peer has read it.
    """
    try:
        conn.settimeout(LINGER)
        socket.socket.shutdown(conn, socket.SHUT_WR)
        deadline, drained = time.monotonic() + LINGER, 0
        while drained < LINGER_BYTES and time.monotonic() < deadline:
            chunk = socket.socket.recv(conn, 65536)
            if not chunk:
                break
            drained += len(chunk)
    except OSError:
        pass
