"""``mq/shared.py``: the one transport a daemon holds for its threads and rounds, let go after
a failure, at its age and when left idle, and a new one adopted only when none is held."""

from __future__ import annotations

import pytest

from enstratus_workers.errors import ConnectionClosed
from enstratus_workers.mq import shared
from enstratus_workers.mq.shared import SharedTransport


class FakeTransport:
    def __init__(self, fail: bool = False):
        self.fail, self.closed, self.pings = fail, False, 0

    def ping(self):
        if self.fail:
            raise ConnectionClosed("gone")
        self.pings += 1

    def close(self):
        self.closed = True


@pytest.fixture
def clock(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(shared.time, "monotonic", lambda: now[0])
    return now


def _held(opened, **kw) -> SharedTransport:
    def opener():
        opened.append(FakeTransport())
        return opened[-1]
    return SharedTransport(None, None, opener=opener, **kw)


def test_one_transport_serves_every_call_until_it_fails(clock):
    opened = []
    held = _held(opened)
    held.ping()
    held.ping()
    assert len(opened) == 1 and opened[0].pings == 2 and held.holding
    # a failure drops it (closed), and the next call opens another
    opened[0].fail = True
    with pytest.raises(ConnectionClosed):
        held.ping()
    assert opened[0].closed and not held.holding
    held.ping()
    assert len(opened) == 2


def test_a_transport_left_idle_is_closed_and_one_in_use_is_kept_to_its_age(clock):
    opened = []
    held = _held(opened, idle_s=60, max_age_s=600)
    held.ping()
    # used every 50 s: kept, up to its age
    for _ in range(11):
        clock[0] += 50
        held.ping()
    assert len(opened) == 1
    clock[0] += 50   # 600 s old now
    held.ping()
    assert len(opened) == 2 and opened[0].closed
    # left alone for 60 s: closed at the next look, before anything is sent on it
    clock[0] += 60
    assert not held.holding and opened[1].closed and opened[1].pings == 1


def test_adopt_keeps_a_new_transport_only_when_none_is_held(clock):
    opened = []
    held = _held(opened, idle_s=60)
    fresh = held.open_new()
    held.adopt(fresh)
    held.ping()
    assert held.holding and fresh.pings == 1 and opened == [fresh]
    # another one checked meanwhile is closed, the held one kept
    other = FakeTransport()
    held.adopt(other)
    assert other.closed and not fresh.closed
    held.close()
    assert fresh.closed and not held.holding


def test_the_idle_limit_lies_between_one_heartbeat_and_two_and_there_is_none_without_heartbeats():
    from types import SimpleNamespace

    # a caller coming once a heartbeat interval keeps its connection; the broker drops a client
    # silent for two
    assert 60 < shared.idle_limit(SimpleNamespace(heartbeat=60)) < 120
    assert shared.idle_limit(SimpleNamespace(heartbeat=0)) is None
