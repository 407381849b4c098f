"""The pinger's watchdog caps its restarts of a daemon that keeps dying, and the cap sticks:
the window sliding on does not start another round of restarts; a daemon seen running again
(an operator started it) is watched again."""

from __future__ import annotations

import subprocess
from types import SimpleNamespace

from enstratus_workers.daemons.pinger import watchdog as watchdog_mod
from enstratus_workers.daemons.pinger.watchdog import Watchdog
from enstratus_workers.layout import Layout


class World:
    """The subscriber's pid-file state the watchdog reads, the clock, and its restarts."""

    def __init__(self, monkeypatch, tmp_path):
        self.now, self.subscriber, self.starts = 0.0, "dead", 0
        monkeypatch.setattr(watchdog_mod.time, "monotonic", lambda: self.now)
        monkeypatch.setattr(watchdog_mod, "daemon_states", lambda layout: [
            SimpleNamespace(daemon="publisher", name="vm", state="running"),
            SimpleNamespace(daemon="subscriber", name="vm", state=self.subscriber)])
        monkeypatch.setattr(watchdog_mod.subprocess, "run", self._run)
        self.layout = Layout(tmp_path)

    def _run(self, cmd, **kw):
        self.starts += 1   # it starts, and dies again before the next look
        return subprocess.CompletedProcess(cmd, 0, "", "")


def test_a_daemon_that_keeps_dying_is_given_up_on_for_good_until_seen_running(monkeypatch, tmp_path):
    world = World(monkeypatch, tmp_path)
    dog = Watchdog(world.layout, "vm", max_restarts=5, window_s=600.0)
    # Given a subscriber that dies as soon as it is started, looked at every 10 s
    lines = []
    for _ in range(10):
        lines += dog.check()
        world.now += 10
    # Then it is restarted five times, then given up on and reported once
    assert world.starts == 5 and dog.given_up == {"subscriber@vm"}
    assert lines.count("gave up on subscriber@vm") == 1
    # And it stays down when the window has slid past every restart (an hour later, and after)
    for _ in range(10):
        world.now += 600
        assert dog.check() == []
    assert world.starts == 5 and dog.snapshot()["given_up"] == ["subscriber@vm"]
    # When an operator starts it and it runs, the watchdog watches it again
    world.subscriber = "running"
    dog.check()
    assert dog.given_up == set()
    world.subscriber = "dead"
    assert dog.check() == ["restarted subscriber@vm"] and world.starts == 6


def test_the_health_round_reads_the_pid_files_once_unless_the_watchdog_restarted_one(monkeypatch, tmp_path):
    # Given a pinger whose round counts the reads of the pid files, with the subscriber running
    from enstratus_workers.daemons.pinger import daemon as pinger_mod
    from enstratus_workers.daemons.pinger.health import Health

    world = World(monkeypatch, tmp_path)
    world.subscriber = "running"
    reads, seen_by_health = [], []

    def states(layout):
        reads.append(world.subscriber)
        return watchdog_mod.daemon_states(layout)

    monkeypatch.setattr(pinger_mod, "daemon_states", states)
    brokers = []
    monkeypatch.setattr(pinger_mod, "check_health",
                        lambda *a, states=None, broker=None, **kw: (seen_by_health.append(states),
                                                                    brokers.append(broker), Health())[2])
    monkeypatch.setattr(pinger_mod, "forget_expired", lambda engine: None)
    dbs = SimpleNamespace(provisioning=None, heartbeats=SimpleNamespace(beat=lambda *a, **kw: None))
    pinger = pinger_mod.Pinger(SimpleNamespace(pinger=SimpleNamespace(heartbeat_interval=10),
                                               mq=SimpleNamespace(heartbeat=60),
                                               worker=SimpleNamespace(host_name="vm")), world.layout, "vm")
    pinger._last_state = None
    dog = Watchdog(world.layout, "vm")
    guests = SimpleNamespace(last_summary=None)
    # When a round finds every daemon running
    pinger._health_round(dbs, dog, guests)
    # Then the watchdog and the health share one read
    assert len(reads) == 1 and [s.state for s in seen_by_health[0]] == ["running", "running"]
    # When the subscriber died and the watchdog restarts it, Then the health reads them again
    world.subscriber = "dead"
    pinger._health_round(dbs, dog, guests)
    assert world.starts == 1 and len(reads) == 2 and seen_by_health[1] is None
    # and both rounds checked the queue on the connection the pinger holds between rounds
    assert brokers == [pinger.broker, pinger.broker] and pinger.broker is not None
