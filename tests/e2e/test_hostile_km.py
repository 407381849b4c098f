"""Hostile peers of the running KM daemon (its credentials on MariaDB, the workers on RabbitMQ +
MariaDB): near-miss names, silent and idle connections, a replay across a restart, generated
garbage on the port. Each test ends with the common invariants (``hostile_helpers``), which for
a service with a KM include: no planted credential readable under another name.
"""

from __future__ import annotations

import contextlib
import socket
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from enstratus_workers.km import KMNotFound, KMRefused
from enstratus_workers.km import protocol as p
from enstratus_workers.km.envelope import REQUEST, Keyring, seal
from tests import servicehome as sh
from tests.e2e import hostile_helpers as hh

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

FIRST_FRAME_DEADLINE = 6.0   # "a few seconds": a silent connection must be closed by then


@pytest.fixture(scope="module")
def svc(request, tmp_path_factory):
    hh.needs_servers(request, "rabbitmq+mariadb")
    with hh.running_service(tmp_path_factory.mktemp("km"), "rabbitmq+mariadb", km=True) as s:
        yield s


def keyring(svc) -> Keyring:
    return Keyring(svc.settings.provisioning.encryption_key.reveal())


def exchange(port: int, data: bytes, timeout: float = 3.0) -> bytes | None:
    """Send raw bytes on a fresh connection; the frame answered, or None if it closed first."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        try:
            return p.read_frame(s, deadline=time.monotonic() + timeout)
        except (p.FrameError, OSError):
            return None


def framed(frame: bytes) -> bytes:
    return p.LENGTH.pack(len(frame)) + frame


def test_near_miss_names_do_not_reach_another_credential_on_mariadb(svc):
    with svc.km() as client:
        # When names differing only by case, accents or trailing spaces are asked for
        leaked = {}
        for account, name in hh.NEAR_NAMES:
            try:
                got = client.get(account, name)
                leaked[(account, name)] = (got.account, got.name)
            except KMNotFound:
                pass
        # Then none of them is found
        assert not leaked, f"get of a near-miss name returned another credential: {leaked}"
        # And a put of such a name is refused, leaving the original as it was
        accepted = []
        for account, name in (("SEC_ACCT", "aws"), ("séc_acct", "áws"), ("sec_acct", "AWS")):
            try:
                client.put(account, name, b"overwrite-attempt")
                accepted.append((account, name))
            except KMRefused:
                pass
        assert not accepted, f"a put of a name differing only by case/accents was accepted: {accepted}"
        original = client.get("sec_acct", "aws")
        assert (original.text(), original.version) == (hh.PLANTED[0][2], 1), (original.version,)
    hh.check_invariants(svc, what="near-miss KM names")


def test_a_connection_that_sends_no_sealed_frame_is_closed_within_seconds(svc):
    # Given a silent peer, one that sends half a length prefix, one that sends a prefix only
    peers = {"silent": hh.raw_tcp(svc.km_port), "half prefix": hh.raw_tcp(svc.km_port, b"\x00\x00"),
             "prefix, no frame": hh.raw_tcp(svc.km_port, p.LENGTH.pack(200))}
    try:
        # Then the KM closes each within a few seconds of its connecting
        began = time.monotonic()
        open_after = {}
        for what, s in peers.items():
            left = max(0.1, FIRST_FRAME_DEADLINE - (time.monotonic() - began))
            if hh.closed_within(s, left) is None:
                open_after[what] = round(time.monotonic() - began, 1)
        assert not open_after, (f"connections that send no sealed frame must be closed within "
                                f"{FIRST_FRAME_DEADLINE}s; still open: {open_after}")
    finally:
        for s in peers.values():
            s.close()
    hh.check_invariants(svc, what="silent KM connections")


def test_64_idle_connections_do_not_lock_out_a_key_holder(svc):
    # Given 64 idle TCP connections from this address
    hogs = [hh.raw_tcp(svc.km_port) for _ in range(64)]
    try:
        time.sleep(0.3)
        # When a client holding the key calls
        began = time.monotonic()
        errors = []
        served = False
        while time.monotonic() - began < 10 and not served:
            try:
                with svc.km() as client:
                    served = client.get("sec_acct", "aws").text() == hh.PLANTED[0][2]
            except Exception as exc:  # noqa: BLE001 - kept for the failure message
                errors.append(repr(exc)[:200])
                time.sleep(0.5)
        # Then it is served (within a few seconds), the idle ones notwithstanding
        assert served, f"64 idle connections locked out a key holder for 10s: {errors[-3:]}"
    finally:
        for s in hogs:
            s.close()
    hh.check_invariants(svc, what="64 idle KM connections")


def test_a_request_captured_before_a_restart_is_refused_after_it(svc):
    name = f"replay{time.monotonic_ns() % 10**9}"
    frame, _rid = seal(keyring(svc), REQUEST, p.encode_request("put", "77", name, kind="api_key",
                                                                secret=b"captured", metadata={}))
    # Given a sealed put that was answered before the KM restarted
    first = exchange(svc.km_port, framed(frame))
    assert first is not None and first[:1] != b"\x00", f"the original request was refused: {first!r}"
    r = sh.km_init(svc.home, "restart")
    assert r.returncode == 0, r.stdout + r.stderr
    assert sh.wait_until(lambda: _pings(svc), 15, 0.2), "the KM did not come back after restart"
    # When the very same bytes are sent again
    again = exchange(svc.km_port, framed(frame))
    # Then they are refused, and the credential was written once
    answered = "closed" if again is None else ("error frame %r" % (p.parse_error_frame(again)[0],)
                                               if again[:1] == b"\x00" else "a sealed response (served)")
    assert again is None or again[:1] == b"\x00", (
        f"a put captured before the KM restart must be refused after it; it got {answered}")
    with svc.km() as client:
        assert client.get("77", name).version == 1
    hh.check_invariants(svc, what="a replay across a KM restart")


def _pings(svc) -> bool:
    try:
        with svc.km() as client:
            client.ping()
        return True
    except Exception:  # noqa: BLE001
        return False


@st.composite
def garbage(draw) -> bytes:
    kind = draw(st.sampled_from(["bytes", "truncated", "random frame", "wrong key", "huge length",
                                 "sealed junk"]))
    if kind == "bytes":
        return draw(st.binary(max_size=64))
    if kind == "truncated":
        body = draw(st.binary(min_size=1, max_size=200))
        return p.LENGTH.pack(len(body) + draw(st.integers(1, 1000))) + body
    if kind == "random frame":
        body = draw(st.binary(min_size=1, max_size=300))
        return framed(draw(st.sampled_from([b"\x00", b"\x01", b"\x01Q", b""])) + body)
    if kind == "wrong key":
        frame, _ = seal(Keyring(draw(st.binary(min_size=32, max_size=32))), REQUEST, p.encode_request("ping"))
        return framed(frame)
    if kind == "huge length":
        return p.LENGTH.pack(draw(st.integers(1 << 20, 2**32 - 1))) + draw(st.binary(max_size=16))
    return b""   # "sealed junk" is built in the test: it needs the service's key


def test_generated_garbage_on_the_km_port_leaves_it_serving(svc):
    ring = keyring(svc)
    sent = []

    @given(garbage(), st.binary(max_size=200))
    @settings(max_examples=30, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def hit(data, junk):
        if not data:   # authentic but meaningless: sealed with the right key
            data = framed(seal(ring, REQUEST, junk)[0])
        sent.append(data[:40])
        with contextlib.suppress(OSError):
            with socket.create_connection(("127.0.0.1", svc.km_port), timeout=2) as s:
                s.sendall(data)
                s.settimeout(0.3)
                with contextlib.suppress(OSError):
                    s.recv(4096)

    hit()
    # And some peers that just connect and stay, while the garbage comes
    idle = [hh.raw_tcp(svc.km_port) for _ in range(8)]
    try:
        assert _pings(svc), f"the KM stopped answering after {len(sent)} garbage connections"
    finally:
        for s in idle:
            s.close()
    hh.check_invariants(svc, what=f"{len(sent)} generated garbage connections (e.g. {sent[:2]!r})")
