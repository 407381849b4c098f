"""Guest heartbeats: one round against live and dead agents, its bounds, the health rule, sharding."""

from __future__ import annotations

import asyncio
import collections
import socket
import time

import pytest

from enstratus_workers.daemons.pinger.guest_beats import (
    UNKNOWN,
    UNREACHABLE,
    UP,
    BeatResult,
    GuestHealth,
    HealthTracker,
    Target,
    beat_all,
    my_share,
    next_health,
    owner,
)
from enstratus_workers.guest.agent import GuestAgent

HOST = "127.0.0.1"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


@pytest.fixture
def agents():
    started = [GuestAgent(f"srv-{i}").start() for i in range(3)]
    try:
        yield started
    finally:
        for a in started:
            a.stop()


# -- the engine ---------------------------------------------------------------------------------

def test_live_agents_are_up_and_a_closed_port_is_down(agents):
    # Given three live agents and one port nobody listens on
    targets = [Target(a.identity.server_id, HOST, a.port) for a in agents]
    targets.insert(1, Target("srv-dead", HOST, _closed_port()))

    # When one round runs
    results = asyncio.run(beat_all(targets, timeout=2.0, concurrency=10))

    # Then the results come in the targets' order, up with a latency, down with the reason
    assert [r.server_id for r in results] == [t.server_id for t in targets]
    assert [r.up for r in results] == [True, False, True, True]
    assert all(r.latency_ms is not None and 0 <= r.latency_ms < 2000 for r in results if r.up)
    dead = results[1]
    assert dead.error == "connection refused" and dead.latency_ms is None


def test_an_agent_answering_with_another_id_counts_as_down(agents):
    a = agents[0]
    results = asyncio.run(beat_all([Target("srv-mine", HOST, a.port, agent_id="ln-expected"),
                                    Target("srv-any", HOST, a.port)], timeout=2.0, concurrency=2))

    assert not results[0].up and "srv-0" in results[0].error
    assert results[1].up  # without agent_id any PONG proves the address is alive


def test_a_silent_agent_is_down_after_the_timeout_not_later():
    # A listening socket that never accepts: connect succeeds (backlog), no answer ever comes
    with socket.socket() as silent:
        silent.bind((HOST, 0))
        silent.listen(16)
        target = Target("srv-silent", HOST, silent.getsockname()[1])

        started = time.monotonic()
        [result] = asyncio.run(beat_all([target], timeout=0.3, concurrency=1))
        elapsed = time.monotonic() - started

    assert not result.up and "no answer within 0.3s" == result.error
    assert 0.25 < elapsed < 2.0


def test_no_more_connections_than_the_concurrency_bound_are_open_at_once():
    async def scenario():
        open_now, peak = 0, 0

        async def slow_agent(reader, writer):
            nonlocal open_now, peak
            open_now += 1
            peak = max(peak, open_now)
            try:
                await reader.readline()
                await asyncio.sleep(0.03)
                writer.write(b"PONG srv-x 1.000\n")
                await writer.drain()
            finally:
                open_now -= 1
                writer.close()
                await writer.wait_closed()

        server = await asyncio.start_server(slow_agent, HOST, 0)
        port = server.sockets[0].getsockname()[1]
        try:
            results = await beat_all([Target(f"srv-{i}", HOST, port) for i in range(40)],
                                     timeout=5.0, concurrency=4)
        finally:
            server.close()
            await server.wait_closed()
        return results, peak

    results, peak = asyncio.run(scenario())

    assert all(r.up for r in results) and len(results) == 40
    assert peak == 4


def test_bad_parameters_are_refused():
    with pytest.raises(ValueError):
        asyncio.run(beat_all([], timeout=1.0, concurrency=0))
    with pytest.raises(ValueError):
        asyncio.run(beat_all([], timeout=0, concurrency=1))


# -- the health rule ----------------------------------------------------------------------------

def test_three_misses_make_a_server_unreachable_and_one_good_beat_brings_it_back():
    h = GuestHealth()
    h = next_health(h, True, 1000, misses_to_down=3)
    assert h == GuestHealth(UP, 0, 1000)

    h = next_health(h, False, 2000, 3)
    h = next_health(h, False, 3000, 3)
    assert h.state == UP and h.misses == 2 and h.last_seen_ms == 1000

    h = next_health(h, False, 4000, 3)
    assert h.state == UNREACHABLE and h.last_seen_ms == 1000

    h = next_health(h, True, 5000, 3)
    assert h == GuestHealth(UP, 0, 5000)


def test_tracker_reports_only_transitions_with_the_last_error():
    tracker = HealthTracker(misses_to_down=2)
    ok, down = BeatResult("a", True, 1.0), BeatResult("a", False, None, "connection refused")
    b_down = BeatResult("b", False, None, "no answer within 2s")

    def changes(results, now):
        return [(t.server_id, t.old, t.new, t.at_ms, t.error) for t in tracker.observe(results, now)]

    assert changes([ok, b_down], 1) == [("a", UNKNOWN, UP, 1, None)]
    assert changes([down, b_down], 2) == [("b", UNKNOWN, UNREACHABLE, 2, "no answer within 2s")]
    assert changes([down, b_down], 3) == [("a", UP, UNREACHABLE, 3, "connection refused")]
    assert changes([down, b_down], 4) == []
    assert changes([ok], 5) == [("a", UNREACHABLE, UP, 5, None)]
    assert tracker.states() == {"a": UP, "b": UNREACHABLE}


def test_tracker_forgets_servers_it_no_longer_beats():
    tracker = HealthTracker(misses_to_down=2)
    tracker.observe([BeatResult("a", False, None, "x"), BeatResult("b", True, 1.0)], 1)

    tracker.retain(["b"])

    assert tracker.health("a") == GuestHealth()  # back to unknown with no misses counted
    assert tracker.observe([BeatResult("a", False, None, "x")], 2) == []
    with pytest.raises(ValueError):
        HealthTracker(misses_to_down=0)


# -- sharding ------------------------------------------------------------------------------------

SERVERS = [f"srv-{i:05d}" for i in range(6000)]


def test_every_server_has_exactly_one_owner_and_shares_are_even():
    pingers = ["pinger@a", "pinger@b", "pinger@c"]
    shares = {p: my_share(SERVERS, p, pingers) for p in pingers}

    assert sorted(sum(shares.values(), [])) == SERVERS
    for share in shares.values():
        assert 1800 < len(share) < 2200  # 2000 each, give or take the hash's spread
    assert owner("srv-00001", pingers) == owner("srv-00001", list(reversed(pingers)))


def test_when_a_pinger_dies_only_its_servers_move_spread_over_the_survivors():
    before = {sid: owner(sid, ["p1", "p2", "p3", "p4"]) for sid in SERVERS}

    after = {sid: owner(sid, ["p1", "p2", "p4"]) for sid in SERVERS}

    moved = [sid for sid in SERVERS if before[sid] != after[sid]]
    assert moved and all(before[sid] == "p3" for sid in moved)
    assert len(moved) == sum(1 for o in before.values() if o == "p3")
    takers = collections.Counter(after[sid] for sid in moved)
    assert set(takers) == {"p1", "p2", "p4"}
    assert min(takers.values()) > len(moved) / 3 * 0.8


def test_a_pinger_missing_from_the_live_list_still_counts_itself():
    share = my_share(SERVERS[:300], "p-new", ["p1"])
    assert share == [sid for sid in SERVERS[:300] if owner(sid, ["p1", "p-new"]) == "p-new"]
    assert 100 < len(share) < 200
    with pytest.raises(ValueError):
        owner("srv-1", [])
