"""A reload (SIGHUP) of the subscriber re-reads the desired worker types and gives disabled
workers their new chance, even when the first read of the types fails: the reload is owed until
a read succeeds, tried again after ``RELOAD_RETRY_S``, not at every round."""

from __future__ import annotations

from types import SimpleNamespace

from enstratus_workers.config import load_settings
from enstratus_workers.config.settings import WorkerType
from enstratus_workers.daemons.subscriber import daemon as daemon_mod
from enstratus_workers.daemons.subscriber.daemon import RELOAD_RETRY_S, Subscriber
from enstratus_workers.layout import Layout
from tests import servicehome as sh


class Clock:
    def __init__(self):
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


def test_a_reload_whose_read_of_the_types_fails_is_done_once_the_read_works(tmp_path, monkeypatch):
    clock = Clock()
    monkeypatch.setattr(daemon_mod, "time", clock)
    home = sh.make_home(tmp_path)
    layout = Layout(home)
    sub = Subscriber(load_settings(layout), layout, "vm")
    types = [WorkerType("default", ("default",), 1, 3)]
    set_calls: list = []
    sub.pool = SimpleNamespace(types={t.name: t for t in types}, set_types=set_calls.append)
    sub.intake = SimpleNamespace(set_queues=lambda queues: None)
    reads: list = []
    answers = iter([None, types, types])   # the database cannot say, then it can
    monkeypatch.setattr(sub, "_types_here", lambda: reads.append(clock.now) or next(answers))
    # Given the periodic reconcile done (nothing changed)
    sub._next_reconcile = clock.now + 60
    # When a SIGHUP's reload comes and its read of the types fails
    sub.request_reload()
    sub._reconcile()
    assert set_calls == [] and len(reads) == 1
    # Then the next rounds do not read again at once
    clock.now += RELOAD_RETRY_S / 2
    sub._reconcile()
    assert len(reads) == 1
    # And once the retry is due, the reload is done, though the types are the ones the pool has
    clock.now += RELOAD_RETRY_S
    sub._reconcile()
    assert len(reads) == 2 and set_calls == [types]
    # And it is done once: the periodic reconcile after it sees nothing new
    clock.now += daemon_mod.RECONCILE_EVERY_S
    sub._reconcile()
    assert len(reads) == 3 and set_calls == [types]
