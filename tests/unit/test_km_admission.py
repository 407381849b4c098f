"""Admission of KM connections: idle unauthenticated ones give way, key holders keep their room."""

from __future__ import annotations

import logging
import socket
import time

import pytest

from enstratus_workers.km.admission import AUTHENTICATED, Admission, Busy, Slot, Throttle


@pytest.fixture
def sockets():
    made = []

    def make():
        a, b = socket.socketpair()
        made.extend((a, b))
        return a

    yield make
    for s in made:
        s.close()


def slot(sockets, host, at):
    return Slot(sockets(), host, f"{host}:{at}", accepted=float(at))


def test_an_address_over_its_cap_displaces_its_own_oldest_idle_connection(sockets):
    # Given 4 connections allowed per address, all taken by idle peers of 10.0.0.9, and one of 10.0.0.1
    admission = Admission(max_connections=64, per_address=4)
    hog = [slot(sockets, "10.0.0.9", t) for t in range(4)]
    other = slot(sockets, "10.0.0.1", 10)
    for s in hog + [other]:
        assert admission.admit(s) is None
    # When 10.0.0.9 connects again, Then its own oldest idle connection makes room
    assert admission.admit(slot(sockets, "10.0.0.9", 20)) is hog[0]
    # And the other address's connection is untouched
    assert admission.claim(other)


def test_unauthenticated_connections_leave_room_for_key_holders(sockets):
    # Given a KM of 8 connections: at most 4 unauthenticated, 4 addresses with one idle peer each
    admission = Admission(max_connections=8, per_address=8)
    idle = [slot(sockets, f"10.0.0.{i}", i) for i in range(4)]
    for s in idle:
        admission.admit(s)
    # When a fifth unauthenticated connection arrives, Then the oldest idle one gives way
    newcomer = slot(sockets, "10.0.1.1", 9)
    assert admission.admit(newcomer) is idle[0]
    # And once the newcomer authenticates, the unauthenticated count has room again
    assert admission.claim(newcomer)
    admission.authenticated(newcomer)
    assert admission.admit(slot(sockets, "10.0.1.2", 10)) is None
    assert admission.counts()[AUTHENTICATED] == 1


def test_a_connection_whose_frame_is_being_checked_is_never_displaced(sockets):
    # Given the only unauthenticated slot held by a connection whose first frame is being checked
    admission = Admission(max_connections=2, per_address=1)
    checking = slot(sockets, "10.0.0.1", 1)
    admission.admit(checking)
    assert admission.claim(checking)
    # When another connection arrives, Then it is told busy rather than displacing it
    with pytest.raises(Busy):
        admission.admit(slot(sockets, "10.0.0.1", 2))
    # And a displaced connection cannot claim its slot back
    admission.release(checking)
    first, second = slot(sockets, "10.0.0.1", 3), slot(sockets, "10.0.0.1", 4)
    admission.admit(first)
    assert admission.admit(second) is first and not admission.claim(first)


def test_key_holders_filling_every_slot_make_newcomers_busy(sockets):
    admission = Admission(max_connections=2, per_address=2)
    for t in range(2):
        s = slot(sockets, "10.0.0.1", t)
        admission.admit(s)
        admission.claim(s)
        admission.authenticated(s)
    with pytest.raises(Busy):
        admission.admit(slot(sockets, "10.0.0.2", 5))


def test_a_flood_of_events_is_logged_once_per_interval_with_a_count(caplog):
    caplog.set_level(logging.WARNING)
    # Given a throttle of 0.2 s and 50 evictions in a burst, then a busy refusal
    throttle = Throttle(logging.getLogger("km.test"), interval=0.2)
    for i in range(50):
        throttle.warning("evicted", "closed %s", i)
    throttle.warning("busy", "busy")
    # Then the first of each kind is logged at once
    assert [r.getMessage() for r in caplog.records] == ["closed 0", "busy"]
    # And the next eviction after the interval says how many were left out
    time.sleep(0.25)
    throttle.warning("evicted", "closed %s", 50)
    assert caplog.records[-1].getMessage().startswith("closed 50 (and 49 more like it")
