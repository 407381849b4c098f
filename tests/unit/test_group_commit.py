"""Group commit (db/group_commit.py, JobStore.submit): concurrent submits share transactions,
a lone one is written at once, and one bad job fails alone."""

from __future__ import annotations

import threading
import time

import pytest

from enstratus_workers.db.group_commit import GroupCommit


def test_a_lone_caller_is_written_at_once_in_its_own_group():
    calls = []
    g = GroupCommit(lambda items: calls.append(list(items)) or [i * 2 for i in items])
    assert g.run(21) == 42
    assert calls == [[21]] and g.groups == 1


def test_callers_arriving_during_a_write_share_the_next_one():
    release = threading.Event()
    groups = []

    def write(items):
        groups.append(list(items))
        if len(groups) == 1:
            release.wait(10)      # the first write is slow: others queue behind it
        return [f"id{i}" for i in items]

    g = GroupCommit(write)
    results = {}
    first = threading.Thread(target=lambda: results.setdefault(0, g.run(0)))
    first.start()
    while not groups:
        time.sleep(0.001)
    others = [threading.Thread(target=lambda i=i: results.setdefault(i, g.run(i))) for i in range(1, 9)]
    for t in others:
        t.start()
    deadline = time.monotonic() + 10
    while len(g._queue) < 8 and time.monotonic() < deadline:
        time.sleep(0.001)
    release.set()
    for t in (first, *others):
        t.join(10)
    # Then the eight that waited went in one write, and each got its own result
    assert groups[0] == [0] and sorted(groups[1]) == list(range(1, 9)) and len(groups) == 2
    assert results == {i: f"id{i}" for i in range(9)}


def test_one_bad_item_fails_alone_and_the_rest_are_written():
    def write(items):
        if "bad" in items:
            raise ValueError("refused: bad")
        return [s.upper() for s in items]

    g = GroupCommit(write)
    g._busy = True                        # hold the group until all three queued
    out, errors = {}, {}

    def call(item):
        try:
            out[item] = g.run(item)
        except ValueError as exc:
            errors[item] = str(exc)
    threads = [threading.Thread(target=call, args=(s,)) for s in ("a", "bad", "c")]
    for t in threads:
        t.start()
    while len(g._queue) < 3:
        time.sleep(0.001)
    with g._cv:
        g._busy = False
        g._cv.notify_all()
    for t in threads:
        t.join(10)
    assert out == {"a": "A", "c": "C"} and errors == {"bad": "refused: bad"}


@pytest.mark.parametrize("backend", ["sqlite", "mysql"])
def test_concurrent_submits_share_transactions_and_each_gets_its_own_row(tmp_path, backend, request):
    from enstratus_workers.config import load_settings
    from enstratus_workers.db import NewJob, open_databases
    from enstratus_workers.layout import Layout
    from tests import servicehome as sh

    home = sh.make_home(tmp_path, mysql_url=request.getfixturevalue("mysql_url") if backend == "mysql" else None)
    layout = Layout(home)
    dbs = open_databases(load_settings(layout).worker, layout)
    try:
        # When 16 threads submit 25 jobs each, one per call
        got: list = []
        lock = threading.Lock()

        def submitter(k):
            for i in range(25):
                job, created = dbs.jobs.submit(NewJob("noop", f'{{"k": {k}, "i": {i}}}', "default", 2))
                with lock:
                    got.append((job, created))
        threads = [threading.Thread(target=submitter, args=(k,)) for k in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        # Then every submit has its own row, answered exactly as stored
        assert len(got) == 400 and all(created for _, created in got)
        assert len({j.job_id for j, _ in got}) == 400
        for job, _ in got[::37]:
            assert dbs.jobs.get(job.job_id) == job
        # And they took fewer transactions than jobs
        groups = dbs.jobs._groups
        assert groups.items == 400 and groups.groups < 400
    finally:
        dbs.close()
