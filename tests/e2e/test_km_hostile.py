"""The KM under attack from the network: floods of idle connections, replays across a restart,
garbage. A real KMService on a loopback port; the defaults that matter (``max_connections`` 64,
``max_pending_per_address`` 16) are the shipped ones.
"""

from __future__ import annotations

import errno
import os
import random
import socket
import threading
import time

import pytest

from enstratus_workers.km import protocol as p
from enstratus_workers.km.config import load_km_settings
from enstratus_workers.km.envelope import REQUEST, Keyring, seal
from enstratus_workers.km.server import KMService
from enstratus_workers.layout import Layout
from tests.e2e.test_km_service import (KEY, SECRET, Recorder, client_for, home, km_settings,  # noqa: F401
                                       raw_exchange, running, write_private)


class IdleFlood:
    """Keeps ``count`` idle connections open to ``address``, reopening each one the KM closes."""

    def __init__(self, address, count: int):
        self.address, self.count = address, count
        self.opened = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="idle-flood")

    def __enter__(self):
        self._thread.start()
        deadline = time.monotonic() + 10
        while self.opened < self.count and time.monotonic() < deadline:
            time.sleep(0.01)
        assert self.opened >= self.count, "the flood could not open its connections"
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(10)

    def _run(self):
        conns = []
        try:
            while not self._stop.is_set():
                for c in [c for c in conns if _closed_by_peer(c)]:
                    conns.remove(c)
                    c.close()
                while len(conns) < self.count:
                    try:
                        conns.append(socket.create_connection(self.address, timeout=3))
                        self.opened += 1
                    except OSError:
                        break
                time.sleep(0.02)
        finally:
            for c in conns:
                c.close()


def _closed_by_peer(conn: socket.socket) -> bool:
    try:
        conn.setblocking(False)
        return conn.recv(4096) == b""   # EOF (a "busy" frame first is read and dropped)
    except BlockingIOError:
        return False
    except OSError:
        return True
    finally:
        conn.setblocking(True)


def test_a_flood_of_idle_connections_does_not_shut_out_a_client(home):
    # Given a KM with the shipped limits, holding a credential
    with running(KMService(km_settings(home, first_frame_timeout=3.0), Keyring(KEY))) as address:
        client_for(address).put("acct-1", "cloud", SECRET)
        # When 80 idle connections from 127.0.0.1 are held open, each reopened when closed
        with IdleFlood(address, 80) as flood:
            time.sleep(0.3)
            # Then a client on the same address still gets its credential, each time within seconds
            for _ in range(5):
                started = time.monotonic()
                assert client_for(address).get("acct-1", "cloud").text() == SECRET
                assert time.monotonic() - started < 3
        # And the flood was pushed back at (its connections closed and reopened), not served
        assert flood.opened > 80


def test_an_idle_connection_is_closed_at_the_first_frame_deadline_and_a_served_one_is_not(home):
    # Given a KM that wants a first frame within 1 s
    with running(KMService(km_settings(home, first_frame_timeout=1.0), Keyring(KEY))) as address:
        idle = socket.create_connection(address, timeout=5)
        served = socket.create_connection(address, timeout=5)
        try:
            frame, _ = seal(Keyring(KEY), REQUEST, p.encode_request("ping"))
            p.write_frame(served, frame)
            assert p.parse_error_frame(p.read_frame(served, deadline=time.monotonic() + 3)) is None
            # When the idle one sends nothing, Then the KM closes it after about a second
            started = time.monotonic()
            assert idle.recv(1) == b""
            assert 0.8 <= time.monotonic() - started < 2.5
            # And the connection that made a request is still open and served
            frame, _ = seal(Keyring(KEY), REQUEST, p.encode_request("ping"))
            p.write_frame(served, frame)
            assert p.parse_error_frame(p.read_frame(served, deadline=time.monotonic() + 3)) is None
        finally:
            idle.close()
            served.close()


def test_a_request_captured_before_a_restart_is_refused_after_it(home):
    # Given a put captured on the wire, and the credential rotated since
    with running(KMService(km_settings(home), Keyring(KEY))) as address:
        recorder = Recorder(address)
        try:
            client_for(recorder.address).put("acct-1", "cloud", "old-secret")
        finally:
            recorder.close()
        client_for(address).put("acct-1", "cloud", "rotated-secret")
    [captured] = recorder.requests
    # When the KM restarts (its replay record was in memory) and the capture is sent again
    with running(KMService(km_settings(home), Keyring(KEY))) as address:
        answer = raw_exchange(address, p.LENGTH.pack(len(captured)) + captured)
        # Then it is refused as sealed before the start, and the rotation stands
        code, message = p.parse_error_frame(answer)
        assert code == "restarted" and "before the KM started" in message
        cred = client_for(address).get("acct-1", "cloud")
        assert (cred.text(), cred.version) == ("rotated-secret", 2)


def hostile_inputs(rng: random.Random):
    frame, _ = seal(Keyring(KEY), REQUEST, p.encode_request("get", "acct-1", "cloud"))
    wire = p.LENGTH.pack(len(frame)) + frame
    yield os.urandom(rng.randrange(1, 2000))                                  # noise
    yield wire[:rng.randrange(1, len(wire))]                                  # a cut request
    yield p.LENGTH.pack(len(frame)) + os.urandom(len(frame))                  # framed noise
    yield p.LENGTH.pack(rng.randrange(1 << 20, 1 << 32)) + os.urandom(64)     # a huge length
    yield wire[:4] + wire[4:10] + bytes([wire[10] ^ 0xFF]) + wire[11:]         # a flipped key id
    yield b"\x00" * rng.randrange(1, 64)                                      # zeros


def send_and_drop(address, data: bytes) -> None:
    try:
        with socket.create_connection(address, timeout=3) as s:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
            s.settimeout(2)
            while s.recv(65536):
                pass
    except OSError:
        pass   # the KM may reset a peer like this; only its survival matters


def test_random_bytes_and_truncated_frames_leave_the_km_serving(home):
    rng = random.Random(2013)
    with running(KMService(km_settings(home), Keyring(KEY))) as address:
        client_for(address).put("acct-1", "cloud", SECRET)
        for _ in range(4):
            # When a burst of garbage and cut frames arrives on 24 connections at once
            burst = [threading.Thread(target=send_and_drop, args=(address, data))
                     for _ in range(4) for data in hostile_inputs(rng)]
            for t in burst:
                t.start()
            # Then a real client is served meanwhile and afterwards
            assert client_for(address).get("acct-1", "cloud").text() == SECRET
            for t in burst:
                t.join(10)
        assert client_for(address).get("acct-1", "cloud").text() == SECRET


def test_the_flood_limits_are_read_from_km_cfg(home):
    write_private(home / "services/km/classes/km.cfg",
                  "first_frame_timeout = 1.5\nmax_pending_per_address = 4\n")
    settings = load_km_settings(Layout(home))
    assert (settings.first_frame_timeout, settings.max_pending_per_address) == (1.5, 4)
    write_private(home / "services/km/classes/km.cfg", "first_frame_timeout = 0\n")
    with pytest.raises(Exception) as err:
        load_km_settings(Layout(home))
    assert getattr(err.value, "key", None) == "first_frame_timeout"


def test_an_accept_that_fails_for_want_of_descriptors_leaves_the_km_serving(home, monkeypatch, caplog):
    # Given a KM whose accepts fail with EMFILE (out of file descriptors) three times
    real_accept = socket.socket.accept
    failures = []

    def accept(sock):
        if len(failures) < 3:
            failures.append(time.monotonic())
            raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
        return real_accept(sock)

    with running(KMService(km_settings(home), Keyring(KEY))) as address:
        monkeypatch.setattr(socket.socket, "accept", accept)
        # When a client connects while that lasts, and another after it
        client_for(address).put("acct-1", "cloud", SECRET)
        # Then both are served once descriptors are back: the daemon did not end
        assert client_for(address).get("acct-1", "cloud").text() == SECRET
        assert len(failures) == 3
        # And it paused between tries rather than spinning on a listener that stays readable
        assert failures[-1] - failures[0] >= 2 * 0.4
    assert "could not accept a connection" in caplog.text
