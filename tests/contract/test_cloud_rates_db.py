"""The cloud API limits' budget in the provisioning DB (``db/cloud_rates.py``), on the embedded
SQLite and a real MariaDB: turns, throttles and counts per (provider, account) key, and one
budget for processes that share nothing but the database (as the hosts of a fleet do)."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys

from enstratus_workers.cloud.rate_policy import US, Policy
from enstratus_workers.db.cloud_rates import CloudRateStore
from tests.contract.test_jobs_db import dbs  # noqa: F401  (the fixture, on both databases)
from tests.servicehome import REPO

#: one call every 10 s, waiting up to 15 s: of calls asking together, two go and the rest are refused
POLICY = Policy(rate=0.1, max_wait_s=15.0, recover_after_s=600.0)


def test_turns_throttles_and_counts_are_kept_per_key(dbs):
    store = CloudRateStore(dbs.provisioning)
    # Given a key used for the first time / When five calls ask for a turn at once
    turns = [store.take_turn("local", "42", POLICY) for _ in range(5)]
    # Then the first two get turns an interval apart, and those beyond the wait take none
    first, second = turns[:2]
    assert [t.granted for t in turns] == [True, True, False, False, False]
    assert (first.wait_s, second.at_us - first.at_us) == (0.0, 10 * US)
    assert all(15 < t.wait_s <= 20 and t.at_us == second.at_us + 10 * US for t in turns[2:])
    # When a granted call is throttled with a Retry-After of 60 s
    slow = store.throttled("local", "42", POLICY, first.asked_us, retry_after_s=60)
    # Then the key is halved and its next turn is after the Retry-After; other keys are untouched
    assert (slow.halved, slow.rate) == (True, 0.05) and slow.resume_us >= first.asked_us + 60 * US
    assert not store.take_turn("local", "42", POLICY).granted
    assert store.take_turn("local", "43", POLICY).granted and store.take_turn("ec2", "42", POLICY).granted
    # and the counts say what happened to each key, with the same spelling only
    rows = {(r.provider, r.account): r for r in store.all()}
    assert set(rows) == {("local", "42"), ("local", "43"), ("ec2", "42")}
    k = rows[("local", "42")]
    assert (k.turns, k.throttles, k.deferrals) == (2, 1, 4)
    assert k.state.rate == 0.05 and k.state.next_us == slow.resume_us


# One process of the fleet: connect, say "ready", and on "go" take N turns as fast as it may.
_TAKER = """
import json, sys, time
from pathlib import Path
from enstratus_workers.cloud.rate_policy import Policy
from enstratus_workers.db.cloud_rates import CloudRateStore
from enstratus_workers.db.engine import make_engine
from enstratus_workers.layout import Layout
url, home, n = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
store = CloudRateStore(make_engine(url, Layout(home), create_database=False))
policy = Policy(rate=20.0, max_wait_s=10.0, recover_after_s=60.0)
store.take_turn("warm", "up", policy)
print("ready", flush=True)
sys.stdin.readline()
turns, costs = [], []
for _ in range(n):
    t0 = time.perf_counter()
    turn = store.take_turn("ec2", "shared", policy)
    costs.append(time.perf_counter() - t0)
    time.sleep(turn.wait_s)   # the call would be made here
    turns.append(turn.at_us)
print(json.dumps({"turns": turns, "costs": costs}))
"""


def test_two_processes_sharing_only_the_database_draw_from_one_budget(dbs, tmp_path):
    url = dbs.provisioning.url.render_as_string(hide_password=False)
    # Given two processes (two hosts, as far as the database can tell), started and connected
    procs = [subprocess.Popen([sys.executable, "-c", _TAKER, url, str(tmp_path), "15"], cwd=REPO,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    try:
        assert [p.stdout.readline().strip() for p in procs] == ["ready", "ready"], [p.stderr.read() for p in procs]
        for p in procs:   # go, together
            p.stdin.write("go\n")
            p.stdin.flush()
        outs = [p.communicate(timeout=60) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert all(p.returncode == 0 for p in procs), [err for _, err in outs]
    # When each takes 15 turns of one key of 20 calls a second as fast as it may
    reports = [json.loads(out) for out, _ in outs]
    turns = sorted(t for r in reports for t in r["turns"])
    # Then their 30 turns are one budget: never two within 1/20 s, whoever took them
    gaps = [b - a for a, b in zip(turns, turns[1:])]
    assert min(gaps) >= US // 20, gaps
    # and they were served side by side, not one after the other
    a, b = (r["turns"] for r in reports)
    assert min(a) < max(b) and min(b) < max(a), (a, b)
    costs = sorted(c for r in reports for c in r["costs"])
    print(f"\n{dbs.provisioning.dialect.name}: 30 turns of one key from 2 processes, spaced "
          f"{min(gaps) / US * 1000:.1f}-{max(gaps) / US * 1000:.1f} ms (interval 50 ms); a turn costs "
          f"{statistics.median(costs) * 1000:.2f} ms median, {costs[int(len(costs) * 0.9)] * 1000:.2f} ms p90")


def test_a_host_whose_clock_is_off_does_not_move_the_keys_turns_for_the_others(mariadb_dbs):
    from tests.contract.test_dead_host_jobs import _clock_off_by

    store = CloudRateStore(mariadb_dbs.provisioning)
    policy = Policy(rate=10.0, max_wait_s=5.0, recover_after_s=600.0)
    # Given a host whose clock is an hour ahead, which took a turn on a key and was throttled
    with _clock_off_by(3600):
        ahead = store.take_turn("local", "42", policy)
        slow = store.throttled("local", "42", policy, ahead.asked_us)
    assert ahead.granted and ahead.wait_s == 0.0
    # Then it waits the key's interval, not an hour less or more
    assert 0 < slow.resume_in_s <= 1.0
    # When a host whose clock is right asks for a turn on the same key
    turn = store.take_turn("local", "42", policy)
    # Then it is granted within the halved rate's interval, not deferred for the hour
    assert turn.granted and turn.wait_s <= 1.0
    # and a host an hour behind is served as promptly
    with _clock_off_by(-3600):
        behind = store.take_turn("local", "42", policy)
    assert behind.granted and behind.wait_s <= 1.0
