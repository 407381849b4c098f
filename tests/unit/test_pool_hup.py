"""The subscriber passes SIGHUP on to its worker processes (so they reopen their logs too), but
never to one that has not connected yet (it may not have its handler, and SIGHUP's default is to
terminate): that one gets its SIGHUP on connecting. Under the journal, workers get no log file."""

from __future__ import annotations

import signal
from multiprocessing import Pipe

import pytest

from enstratus_workers.daemons.subscriber import pool as pool_mod
from tests.unit.test_pool_supervision import Rig

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def rig(tmp_path, monkeypatch):
    monkeypatch.delenv("ENSTRATUS_LOG_TARGET", raising=False)
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    return Rig(tmp_path, monkeypatch)


def test_sighup_goes_to_every_connected_worker_and_only_once(rig):
    # Given two connected workers
    rig.pool.scale({}, force=True)
    rig.connect("default.1"), rig.connect("default.2")
    # When the subscriber passes a SIGHUP on
    rig.pool.pass_on_hup()
    # Then each got exactly one SIGHUP, and nothing else
    assert [p.signals for p in rig.spawned] == [[signal.SIGHUP], [signal.SIGHUP]]


def test_a_worker_still_starting_gets_its_sighup_when_it_connects(rig):
    # Given one worker connected and one still starting (its handler may not be set up yet)
    rig.pool.scale({}, force=True)
    rig.connect("default.1")
    # When a SIGHUP is passed on
    rig.pool.pass_on_hup()
    # Then the starting one is not signalled yet ...
    assert [p.signals for p in rig.spawned] == [[signal.SIGHUP], []]
    # ... but gets it once it says hello, and only once
    rig.connect("default.2")
    rig.pool.adopt_arrivals()
    assert [p.signals for p in rig.spawned] == [[signal.SIGHUP], [signal.SIGHUP]]


def test_a_worker_respawned_after_the_sighup_opens_the_new_log_and_needs_none(rig):
    # Given a starting worker that a SIGHUP was held for, and which then died before connecting
    rig.pool.scale({}, force=True)
    rig.connect("default.1")
    rig.pool.pass_on_hup()
    rig.spawned[1].exit(1)
    rig.pool.supervise()
    rig.clock.advance(60)
    rig.pool.supervise()    # respawned: its log is opened at the path as it is now
    # When its successor connects, it gets no SIGHUP
    rig.connect("default.2")
    assert rig.spawned[2].signals == []


def test_a_worker_started_by_hand_gets_the_sighup_through_its_pid(rig, monkeypatch):
    # Given a worker an operator started, connected under its own pid
    sent = []
    monkeypatch.setattr(pool_mod.os, "kill", lambda pid, sig: sent.append((pid, sig)))
    ours, _theirs = Pipe()
    rig.pool._arrivals.append(({"t": "hello", "name": "default.9", "type": "default", "pid": 4242}, ours))
    rig.pool.adopt_arrivals()
    # When a SIGHUP is passed on
    rig.pool.pass_on_hup()
    # Then it went to that pid
    assert sent == [(4242, signal.SIGHUP)]


def test_under_the_journal_workers_inherit_stderr_and_get_no_log_file(tmp_path, monkeypatch):
    # Given a subscriber logging to the journal
    monkeypatch.setenv("ENSTRATUS_LOG_TARGET", "journal")
    rig = Rig(tmp_path, monkeypatch)
    streams = []
    make = rig._popen
    monkeypatch.setattr(pool_mod.subprocess, "Popen",
                        lambda cmd, **kw: streams.append((kw["stdout"], kw["stderr"])) or make(cmd, **kw))
    # When it starts its workers
    rig.pool.scale({}, force=True)
    # Then they write to the subscriber's own stdout and stderr, and no worker log file exists
    assert streams == [(None, None), (None, None)]
    assert list(rig.pool.layout.log_dir.glob("worker@*.log")) == []


def test_with_log_files_workers_write_their_streams_to_their_own_log(rig, monkeypatch):
    streams = []
    make = rig._popen
    monkeypatch.setattr(pool_mod.subprocess, "Popen",
                        lambda cmd, **kw: streams.append(kw["stderr"].name) or make(cmd, **kw))
    rig.pool.scale({}, force=True)
    assert streams == [str(rig.pool.layout.log_file("worker", f"default.{i}")) for i in (1, 2)]
