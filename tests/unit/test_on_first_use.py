"""``OnFirstUse``: made once by its first caller, tried again after a failure, closed by drop."""

from __future__ import annotations

import threading
import time

import pytest

from enstratus_workers.runtime.on_first_use import OnFirstUse


def test_many_threads_asking_at_once_make_it_once():
    made = []

    def make():
        time.sleep(0.05)   # slow enough that every thread asks while the first one makes it
        made.append(object())
        return made[-1]

    once = OnFirstUse(make)
    got = []
    threads = [threading.Thread(target=lambda: got.append(once.get())) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(made) == 1 and got == made * 8 and once.made() is made[0]


def test_a_make_that_fails_is_tried_again_by_the_next_caller():
    tries = []

    def make():
        tries.append(1)
        if len(tries) == 1:
            raise OSError("not yet")
        return "value"

    once = OnFirstUse(make)
    with pytest.raises(OSError):
        once.get()
    assert once.made() is None and once.get() == "value" and len(tries) == 2


def test_drop_closes_what_was_made_and_nothing_else():
    closed = []
    never = OnFirstUse(lambda: "never made")
    never.drop(closed.append)
    once = OnFirstUse(lambda: "value")
    once.get()
    once.drop(closed.append)
    assert closed == ["value"] and once.made() is None
