"""The KM envelope: what a sealed frame protects, and what the replay guard refuses."""

from __future__ import annotations

import os
import random
import socket

import pytest

from enstratus_workers.clock import now_ms
from enstratus_workers.km import protocol as p
from enstratus_workers.km.envelope import (AAD_SIZE, HEADER_SIZE, OVERHEAD, REQUEST, RESPONSE, Keyring,
                                           MalformedFrame, ReplayedMessage, ReplayGuard, StaleMessage,
                                           Unauthentic, UnknownKey, key_id, open_frame, seal)

KEY = bytes(range(32))
OTHER = bytes(range(1, 33))
WINDOW_MS = 120_000


@pytest.fixture
def ring():
    return Keyring(KEY)


def flip(frame: bytes, offset: int) -> bytes:
    return frame[:offset] + bytes([frame[offset] ^ 0x01]) + frame[offset + 1:]


def test_round_trip_keeps_payload_id_and_timestamp(ring):
    # Given a sealed request
    frame, rid = seal(ring, REQUEST, b'{"op":"ping"}', timestamp_ms=1234)
    # When the other side opens it
    opened = open_frame(ring, frame, REQUEST)
    # Then everything inside comes back, under the sender's key id
    assert (opened.payload, opened.request_id, opened.timestamp_ms) == (b'{"op":"ping"}', rid, 1234)
    assert opened.key_id == key_id(KEY) and len(rid) == 16


def test_every_message_gets_a_fresh_nonce_and_request_id(ring):
    a, rid_a = seal(ring, REQUEST, b"same")
    b, rid_b = seal(ring, REQUEST, b"same")
    assert a[10:HEADER_SIZE] != b[10:HEADER_SIZE]
    assert rid_a != rid_b and a != b


def test_payload_is_not_visible_in_the_frame(ring):
    frame, _ = seal(ring, REQUEST, b"hunter2-super-secret")
    assert b"hunter2" not in frame


@pytest.mark.parametrize("offset,error", [
    (0, MalformedFrame),           # version
    (1, MalformedFrame),           # direction
    (2, UnknownKey),               # key id
    (10, Unauthentic),             # nonce
    (HEADER_SIZE, Unauthentic),    # ciphertext: timestamp
    (HEADER_SIZE + 8, Unauthentic),  # ciphertext: request id
    (HEADER_SIZE + 24, Unauthentic),  # ciphertext: payload
    (-1, Unauthentic),             # tag
])
def test_tampering_with_any_part_is_refused(ring, offset, error):
    frame, _ = seal(ring, REQUEST, b"payload")
    with pytest.raises(error):
        open_frame(ring, flip(frame, offset % len(frame)), REQUEST)


def test_a_relabelled_key_id_fails_the_tag_even_when_the_receiver_holds_that_key():
    # Given a receiver holding two keys and a frame sealed under the first
    both = Keyring(KEY, OTHER)
    frame, _ = seal(Keyring(KEY), REQUEST, b"payload")
    # When the key id is rewritten to name the second key
    forged = frame[:2] + key_id(OTHER) + frame[AAD_SIZE:]
    # Then it does not authenticate
    with pytest.raises(Unauthentic):
        open_frame(both, forged, REQUEST)


def test_a_request_cannot_be_passed_off_as_a_response(ring):
    frame, _ = seal(ring, REQUEST, b"payload")
    with pytest.raises(MalformedFrame):
        open_frame(ring, frame, RESPONSE)
    relabelled = frame[:1] + RESPONSE + frame[2:]
    with pytest.raises(Unauthentic):
        open_frame(ring, relabelled, RESPONSE)


def test_wrong_key_is_refused_as_unknown(ring):
    frame, _ = seal(Keyring(OTHER), REQUEST, b"payload")
    with pytest.raises(UnknownKey) as err:
        open_frame(ring, frame, REQUEST)
    assert key_id(OTHER).hex() in str(err.value)
    assert err.value.code == "unknown_key"


# seeded: the same parameters in every process that collects the tests (pytest-xdist workers)
_GARBAGE = random.Random(20261206)


@pytest.mark.parametrize("frame", [b"", b"\x01", _GARBAGE.randbytes(OVERHEAD - 1), b"\x00" * 200,
                                   _GARBAGE.randbytes(500)])
def test_short_or_garbage_frames_are_refused(ring, frame):
    with pytest.raises((MalformedFrame, UnknownKey, Unauthentic)):
        open_frame(ring, frame, REQUEST)


def test_rotation_accepts_old_and_new_keys_and_answers_in_the_key_used():
    # Given a server rotating from OTHER (old) to KEY (new), and one client on each key
    server = Keyring(KEY, OTHER)
    for client_key in (KEY, OTHER):
        client = Keyring(client_key)
        frame, rid = seal(client, REQUEST, b"hello")
        # When the server opens the request and answers under the key it came in with
        opened = open_frame(server, frame, REQUEST)
        reply, _ = seal(server, RESPONSE, b"ok", request_id=opened.request_id, kid=opened.key_id)
        # Then the client can open the answer, which echoes its request id
        answer = open_frame(client, reply, RESPONSE)
        assert (answer.payload, answer.request_id) == (b"ok", rid)


def test_keyring_refuses_keys_of_the_wrong_size_and_hides_keys_in_repr():
    with pytest.raises(ValueError):
        Keyring(b"short")
    assert KEY.hex() not in repr(Keyring(KEY)) and str(KEY) not in repr(Keyring(KEY))


def test_replay_guard_accepts_once_then_refuses_the_same_request(ring):
    guard = ReplayGuard(WINDOW_MS)
    opened = open_frame(ring, seal(ring, REQUEST, b"x")[0], REQUEST)
    guard.check(opened)
    with pytest.raises(ReplayedMessage):
        guard.check(opened)


@pytest.mark.parametrize("skew_ms", [-WINDOW_MS - 1, WINDOW_MS + 1, -10 * WINDOW_MS])
def test_replay_guard_refuses_stale_or_future_timestamps(ring, skew_ms):
    guard = ReplayGuard(WINDOW_MS)
    now = now_ms()
    opened = open_frame(ring, seal(ring, REQUEST, b"x", timestamp_ms=now + skew_ms)[0], REQUEST)
    with pytest.raises(StaleMessage) as err:
        guard.check(opened, now)
    assert "replay window" in str(err.value)


def test_replay_guard_forgets_ids_once_their_timestamp_leaves_the_window(ring):
    # Given a request seen at t0
    guard = ReplayGuard(1000)
    t0 = 10_000_000
    opened = open_frame(ring, seal(ring, REQUEST, b"x", timestamp_ms=t0)[0], REQUEST)
    guard.check(opened, t0)
    # When a later request arrives after the first left the window
    later = open_frame(ring, seal(ring, REQUEST, b"y", timestamp_ms=t0 + 1500)[0], REQUEST)
    guard.check(later, t0 + 1500)
    # Then the first id is forgotten (its replay would now be refused as stale anyway)
    assert len(guard) == 1
    with pytest.raises(StaleMessage):
        guard.check(opened, t0 + 1500)


def test_a_full_replay_cache_raises_its_floor_instead_of_forgetting_safely_refusable_ids(ring):
    # Given a cache of 3 ids filled with requests at t, t+1, t+2, t+3
    guard = ReplayGuard(WINDOW_MS, max_entries=3)
    t = now_ms()
    msgs = [open_frame(ring, seal(ring, REQUEST, b"m", timestamp_ms=t + i)[0], REQUEST) for i in range(4)]
    for m in msgs:
        guard.check(m, t + 5)
    # Then the oldest was evicted, the floor rose to its timestamp, and its replay is still refused
    assert len(guard) == 3 and guard.floor == t
    with pytest.raises(StaleMessage):
        guard.check(msgs[0], t + 5)
    with pytest.raises(ReplayedMessage):
        guard.check(msgs[3], t + 5)


def test_oversized_frames_are_refused_before_their_body_is_read():
    a, b = socket.socketpair()
    with a, b:
        # Given a peer announcing a 2 MiB frame but sending only its length
        a.sendall(p.LENGTH.pack(2 << 20))
        # When the receiver reads with a 1 MiB cap
        with pytest.raises(p.FrameTooLarge) as err:
            p.read_frame(b, max_size=1 << 20)
        # Then it refuses at once, with a code the server sends back
        assert err.value.code == "frame_too_large"


def test_frames_round_trip_and_a_truncated_frame_is_an_error():
    a, b = socket.socketpair()
    with a, b:
        p.write_frame(a, b"hello")
        assert p.read_frame(b) == b"hello"
        a.sendall(p.LENGTH.pack(10) + b"abc")
        a.shutdown(socket.SHUT_WR)
        with pytest.raises(p.FrameError):
            p.read_frame(b)


def test_a_clean_close_between_frames_reads_as_none():
    a, b = socket.socketpair()
    with a, b:
        a.shutdown(socket.SHUT_WR)
        assert p.read_frame(b) is None


def test_error_frames_carry_a_clean_code_and_message():
    frame = p.error_frame("replayed", "request id abc was already used")
    assert p.parse_error_frame(frame) == ("replayed", "request id abc was already used")
    assert p.parse_error_frame(b"\x00not json\x1b[31m") == ("refused", "unreadable error frame")
    assert p.parse_error_frame(p.error_frame("x", "evil\x1b[2J" + "a" * 1000))[1].startswith("evil?[2J")
    assert len(p.parse_error_frame(p.error_frame("x", "a" * 1000))[1]) == 300
    assert p.parse_error_frame(b"\x01sealed") is None
