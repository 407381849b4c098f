"""Hostile input against the RUNNING service: queue messages, job bodies, names and config files
that an attacker, a bug elsewhere or a careless operator may send. Each test proves one finding
of the hardening issue and ends with the common invariants (``hostile_helpers.check_invariants``):
normal jobs still succeed within seconds, nothing stays unacked, no 5xx from the admin API, no
credential under another name, one analytics event per (job, attempt).

One service per backend is shared by the tests of this module (embedded, then RabbitMQ +
MariaDB); the tests that must stop a service start their own.
"""

from __future__ import annotations

import json
import subprocess
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests import servicehome as sh
from tests.e2e import hostile_helpers as hh

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

KINDS = ["embedded", "rabbitmq+mariadb"]
GRACE = 10   # worker.grace_period of the scratch homes (servicehome.make_home)


@pytest.fixture(scope="module", params=KINDS)
def svc(request, tmp_path_factory):
    hh.needs_servers(request, request.param)
    with hh.running_service(tmp_path_factory.mktemp(request.param.replace("+", "_")), request.param,
                            plugin=True) as s:
        yield s


def wait_settled(svc, queue="default", timeout=20.0):
    """Wait until the queue holds nothing ready or unacked; its (ready, unacked, dead)."""
    last = []

    def settled():
        last[:] = [svc.depth(queue)]
        return last[0][0] == 0 and last[0][1] == 0
    sh.wait_until(settled, timeout, 0.3)
    return last[0]


def wait_dead(svc, at_least: int, queue="default", timeout=20.0) -> int:
    got = sh.wait_until(lambda: (d := svc.depth(queue)[2]) >= at_least and d, timeout, 0.3)
    return got or svc.depth(queue)[2]


def reasons_for(svc, bodies: list[bytes]) -> dict[bytes, str | None]:
    """The dead-letter reason of each body (absent: not dead-lettered)."""
    by_body = {d.body: d.reason for d in svc.dead_letters()}
    return {b: by_body.get(b, "<not dead-lettered>") for b in bodies}


# -- the job row is the truth -----------------------------------------------------------------

def test_ids_and_attempts_beyond_the_database_range_are_dead_lettered_at_decode(svc):
    # Given a job row waiting for its first attempt (so a message naming it is not a stranger)
    row = hh.insert_queued_job(svc, "echo", {"v": "range"})
    dead_before = svc.depth()[2]
    # When messages carry ids and attempts the database cannot hold
    bodies = [hh.message(2**63, arguments={"n": 1}), hh.message(2**64 + 5, arguments={"n": 2}),
              hh.message(row, attempt=2**63), hh.message(row, attempt=2**31),
              hh.message(row, attempt=1, max_attempts=2**63)]
    svc.publish_raw(bodies)
    # Then each is dead-lettered at decode, with a reason, and none of them ran
    dead = wait_dead(svc, dead_before + 4)
    reasons = reasons_for(svc, bodies[:4])
    assert dead >= dead_before + 4 and all(r and r != "<not dead-lettered>" for r in reasons.values()), (
        f"out-of-range ids/attempts must be dead-lettered at decode; dead {dead_before}->{dead}, "
        f"reasons {reasons}")
    big = hh.sql(svc, "analytics", "SELECT job_id, attempt FROM enstratus_job_event "
                                   "WHERE job_id >= 2147483647 OR attempt >= 2147483647")
    assert big == [], f"an out-of-range message ran and left events: {big}"
    hh.check_invariants(svc, what="messages with job_id/attempt >= 2^63 and attempt >= 2^31")


def test_a_message_for_a_job_that_does_not_exist_is_dead_lettered_not_run(svc):
    # Given a job id no row has
    stranger = hh.max_job_id(svc) + 10_000
    dead_before = svc.depth()[2]
    body = hh.message(stranger, action="echo", arguments={"stranger": True})
    # When a message for it arrives on the work queue
    svc.publish_raw([body])
    # Then it is dead-lettered with the reason, and nothing ran
    wait_dead(svc, dead_before + 1)
    reason = reasons_for(svc, [body])[body]
    assert reason and any(w in reason.lower() for w in ("stranger", "no such job", "no job")), (
        f"a stranger must be dead-lettered with the reason (no such job): reason {reason!r}")
    assert hh.events_of(svc, stranger) == [], "the stranger's action ran (it has analytics events)"
    assert hh.job(svc, stranger) is None, "a job row appeared for the stranger"
    hh.check_invariants(svc, what=f"a message for job {stranger}, which does not exist")


def test_a_second_copy_of_a_succeeded_jobs_message_is_acked_away_unrun(svc):
    # Given a job that succeeded with the row's arguments
    done = hh.submit(svc, "echo", {"v": "from-the-row"})
    first = hh.wait_jobs(svc, [done.job_id])[done.job_id]
    assert first.status == "succeeded", first
    dead_before = svc.depth()[2]
    # When copies of its message come again, one claiming other arguments, one another action
    svc.publish_raw([hh.message(done.job_id, "echo", {"v": "from-the-message"}, attempt=1),
                     hh.message(done.job_id, "fail", {"message": "evil"}, attempt=1),
                     hh.message(done.job_id, "echo", {"v": "later attempt"}, attempt=2)])
    ready, unacked, dead = wait_settled(svc)
    time.sleep(1.5)   # a wrongly run copy would be recorded within the record interval
    # Then they are acked away as stale duplicates: not run, not dead-lettered, the row unchanged
    after = hh.job(svc, done.job_id)
    events = hh.events_of(svc, done.job_id)
    assert (ready, unacked) == (0, 0), f"copies left on the queue: ready={ready} unacked={unacked}"
    assert (after.status, json.loads(after.result), after.attempts, after.error) == (
        "succeeded", {"v": "from-the-row"}, 1, None), f"a stale copy changed the finished job: {after}"
    assert [(e.attempt, e.outcome) for e in events] == [(1, "succeeded")], (
        f"a stale copy ran again: events {events}")
    assert dead == dead_before, f"stale duplicates must be acked, not dead-lettered ({dead_before}->{dead})"
    hh.check_invariants(svc, what="copies of a succeeded job's message")


def test_a_delivery_runs_the_rows_action_and_arguments_not_the_messages(svc):
    # Given job rows the publisher has relayed (queued, attempt 1 next), and no message yet
    honest = hh.insert_queued_job(svc, "echo", {"v": "row-arguments"})
    wrong_attempt = hh.insert_queued_job(svc, "echo", {"v": "wrong-attempt"})
    # When the messages that arrive claim another action and arguments, or another attempt
    svc.publish_raw([hh.message(honest, "fail", {"message": "the message's own"}, attempt=1),
                     hh.message(wrong_attempt, "echo", {"v": "attempt 7"}, attempt=7)])
    # Then the job runs the row's action with the row's arguments
    ran = hh.wait_jobs(svc, [honest], 20)[honest]
    assert (ran.status, json.loads(ran.result or "null")) == ("succeeded", {"v": "row-arguments"}), (
        f"the delivery must run the row's echo with the row's arguments, not the message's: {ran}")
    # And a delivery that does not match the row's attempt does not run
    wait_settled(svc)
    time.sleep(1.0)
    other = hh.job(svc, wrong_attempt)
    assert hh.events_of(svc, wrong_attempt) == [] and other.status == "queued", (
        f"a delivery for attempt 7 of a job waiting for attempt 1 ran: {other}")
    hh.check_invariants(svc, what="messages disagreeing with their job rows")


# -- no batch can block the others ----------------------------------------------------------------

def test_an_outcome_the_database_refuses_is_failed_alone_and_the_rest_go_on(svc):
    # Given a batch in which one action returns 20 MiB (over MariaDB's max_allowed_packet)
    big = hh.submit(svc, "hostile.big_result", {"mb": 20})
    small = [hh.submit(svc, "echo", {"i": i}).job_id for i in range(10)]
    # Then the others are recorded and acked within seconds
    jobs = hh.wait_jobs(svc, small + [big.job_id], 60)
    stuck = {i: jobs[i].status for i in small if jobs[i].status != "succeeded"}
    assert not stuck, f"the jobs batched with the oversized outcome did not succeed: {stuck}"
    # And the big one is recorded: failed with the reason where the database refuses it
    b = jobs[big.job_id]
    if svc.kind == "embedded" and b.status == "succeeded":   # SQLite may take 20 MiB whole
        assert len(b.result) > 20 * 1024 * 1024, (b.status, len(b.result))
    else:
        assert b.status == "failed" and "result too large" in (b.error or ""), (
            f"an outcome over max_allowed_packet must be recorded failed ('result too large ...'): "
            f"status={b.status} error={(b.error or '')[:300]}")
    hh.check_invariants(svc, what="a 20 MiB result")


# -- identity is exact ------------------------------------------------------------------------------

def test_idempotency_keys_compare_byte_for_byte(svc):
    tag = str(time.monotonic_ns())
    keys = [f"key{tag}", f"KEY{tag}", f"key{tag} ", f"kéy{tag}"]
    # When four jobs are submitted whose keys differ only by case, a trailing space, an accent
    ids = [hh.submit(svc, "echo", {"k": k}, idempotency_key=k).job_id for k in keys]
    # Then they are four jobs, and each runs with its own arguments
    assert len(set(ids)) == 4, f"idempotency keys {keys!r} gave job ids {ids}: keys must not collide"
    jobs = hh.wait_jobs(svc, ids)
    got = {k: (jobs[i].status, json.loads(jobs[i].result or "null")) for k, i in zip(keys, ids)}
    assert got == {k: ("succeeded", {"k": k}) for k in keys}, got
    # And the same key again names the same job
    assert hh.submit(svc, "echo", {"k": "again"}, idempotency_key=keys[1]).job_id == ids[1]
    hh.check_invariants(svc, what="idempotency keys differing by case/space/accent")


# -- input hygiene ----------------------------------------------------------------------------------

HOSTILE_JOB_BODIES = [
    b'{"action": "echo", "arguments": {"s": "\\ud800"}}',
    b'{"action": "echo", "arguments": {"\\udfff": 1}}',
    b'{"action": "echo\\ud800", "arguments": {}}',
    b'{"action": "echo", "arguments": {}, "idempotency_key": "k\\ud800"}',
    b'{"action": "echo", "arguments": {"x": NaN}}',
    b'{"action": "echo", "arguments": {"x": [Infinity]}}',
    b'{"action": "echo", "arguments": {"x": -Infinity}}',
    b'{"action": "echo", "arguments": {}, "max_attempts": NaN}',
    b'{"action": "echo", "arguments": {}, "max_attempts": Infinity}',
    b'{"action": "echo", "arguments": {}, "max_attempts": 1e400}',
]
HOSTILE_AUTOSCALE_BODIES = [
    b'{"min": NaN, "max": 2}', b'{"min": 1, "max": Infinity}', b'{"min": 1, "max": 1e400}',
    b'{"min": "\\ud800", "max": 2}', b'{"min": -Infinity, "max": 2}',
]


def test_surrogates_and_nan_get_422_and_nothing_is_stored(svc):
    before = hh.max_job_id(svc)
    answers = {}
    for body in HOSTILE_JOB_BODIES:
        answers[body] = svc.admin("POST", "/jobs", body=body)[0]
    [inst] = [i for i in json.loads(svc.admin("GET", "/instances")[2]) if i["type"] == "default"]
    for body in HOSTILE_AUTOSCALE_BODIES:
        answers[body] = svc.admin("PUT", f"/instances/{inst['id']}/autoscale", body=body)[0]
    wrong = {b.decode(): s for b, s in answers.items() if s != 422}
    assert not wrong, f"lone surrogates / NaN / Infinity must get 422, got: {wrong}"
    stored = hh.sql(svc, "provisioning", "SELECT job_id, action, arguments FROM enstratus_job WHERE job_id > :b",
                    {"b": before})
    assert stored == [], f"refused bodies must store nothing: {stored}"
    status, _h, listing = svc.admin("GET", "/jobs")
    assert status == 200, f"GET /jobs after the hostile bodies: {status} {listing[:300]!r}"
    after = [i for i in json.loads(svc.admin("GET", "/instances")[2]) if i["id"] == inst["id"]][0]
    assert after["concurrency"] == inst["concurrency"], f"a refused autoscale changed {inst} -> {after}"
    hh.check_invariants(svc, what="surrogates/NaN/Infinity in job and autoscale bodies")


def test_a_newline_in_an_action_name_cannot_forge_a_log_line(svc):
    from enstratus_workers.jobs.submit import SubmitError

    marker = f"FORGED{time.monotonic_ns()}"
    forged_start = f"2030-01-01 00:00:00,000 CRITICAL enstratus_workers {marker}"
    forged = f"echo\n{forged_start} all jobs deleted"
    # When a job is submitted whose action name holds a newline: refused, or run and failed
    try:
        accepted = hh.submit(svc, forged, {"x": 1}).job_id
    except SubmitError as exc:
        accepted = None
        assert "\n" not in str(exc), f"the refusal itself carries the raw newline: {str(exc)!r}"
    # And when such a row and its message get in anyway (a row written by another client)
    row = hh.insert_queued_job(svc, forged, {"x": 2})
    svc.publish_raw([hh.message(row, forged, {"x": 2})])
    ids = [row] + ([accepted] if accepted else [])
    jobs = hh.wait_jobs(svc, [row] + ([accepted] if accepted else []), 20)
    for i in ids:
        assert jobs[i].status in ("failed", "dead", "queued"), f"job {i} with a newline action: {jobs[i]}"
    wait_settled(svc)
    time.sleep(0.5)
    # Then no log line starts with the injected text, and where the name is logged it is escaped
    logs = svc.logs()
    forgeries = {f: [ln for ln in text.splitlines() if ln.startswith(forged_start)] for f, text in logs.items()}
    forgeries = {f: lines for f, lines in forgeries.items() if lines}
    assert not forgeries, f"a newline in the action name started a log line of its own: {forgeries}"
    naming = {f: [ln for ln in t.splitlines() if marker in ln] for f, t in logs.items() if marker in t}
    unescaped = {f: [ln for ln in lines if f"\\n{forged_start}" not in ln] for f, lines in naming.items()}
    unescaped = {f: lines for f, lines in unescaped.items() if lines}
    assert not unescaped, f"log lines name the action without escaping its newline: {unescaped}"
    if accepted or jobs[row].status != "queued":
        assert naming, "the failed job's action name must appear (escaped) in the logs"
    hh.check_invariants(svc, what="an action name holding a newline")


# -- generated messages onto the real work queue ---------------------------------------------------

_ids = st.one_of(st.integers(-2**70, 2**70), st.sampled_from([0, -1, 2**31 - 1, 2**31, 2**63 - 1, 2**63, 2**64]),
                 st.floats(allow_nan=True, allow_infinity=True), st.booleans(), st.none(),
                 st.text(max_size=8), st.lists(st.integers(), max_size=2))
_json = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=10),
                     lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=5), kids, max_size=3),
                     max_leaves=8)
_actions = st.one_of(st.sampled_from(["echo", "noop", "fail", "no.such.action", "", "echo\n", "hostile.big_result"]),
                     st.text(max_size=20), st.integers(), st.none())


@st.composite
def hostile_message(draw) -> bytes:
    kind = draw(st.sampled_from(["object", "object", "object", "bytes", "not-object"]))
    if kind == "bytes":   # not UTF-8 / not JSON at all
        return draw(st.sampled_from([b"\xff\xfe", b"\x80{", b'{"job_id": 1, "action": "echo\xff"}', b""])) \
            + draw(st.binary(max_size=40))
    if kind == "not-object":
        return json.dumps(draw(st.one_of(st.lists(_json, max_size=3), st.integers(), st.text(max_size=10)))).encode()
    doc = {}
    for key, strat in (("job_id", _ids), ("attempt", _ids), ("action", _actions),
                       ("arguments", _json), ("max_attempts", _ids)):
        if draw(st.booleans()) or key in ("job_id", "action"):
            doc[key] = draw(strat)
    return json.dumps(doc).encode()


def test_generated_hostile_messages_leave_the_service_whole(svc):
    # Given the finished jobs as they are now
    finished = hh.sql(svc, "provisioning", "SELECT job_id, status, result, attempts FROM enstratus_job "
                                           "WHERE status IN ('succeeded', 'failed', 'dead')")
    rows_before = hh.max_job_id(svc)
    bodies: list[bytes] = []

    @given(hostile_message())
    @settings(max_examples=40, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def collect(body):
        bodies.append(body)

    collect()
    # When they are all published straight onto the service's work queue
    svc.publish_raw(bodies)
    # Then every one is settled (run as the row says, acked away, or dead-lettered) ...
    ready, unacked, _dead = wait_settled(svc, timeout=30)
    assert (ready, unacked) == (0, 0), f"{len(bodies)} generated messages: ready={ready} unacked={unacked}"
    time.sleep(1.5)
    # ... no finished job changed, no job row appeared
    changed = [r for r in finished
               if hh.sql(svc, "provisioning", "SELECT job_id, status, result, attempts FROM enstratus_job "
                                              "WHERE job_id = :j", {"j": r[0]}) != [r]]
    assert not changed, f"generated messages changed finished jobs: {[r[0] for r in changed]}"
    assert hh.max_job_id(svc) == rows_before, "a message created a job row"
    # ... and the service still holds every invariant
    hh.check_invariants(svc, what=f"{len(bodies)} generated messages (e.g. {bodies[:3]!r})")


# -- a write that keeps failing: CRITICAL, and a stop within the grace period ------------------------
# The last test of each shared service: it ends by stopping it (the fixture's stop is then a no-op).

def test_a_write_that_keeps_failing_is_critical_and_the_stop_ends_within_grace(svc):
    first = hh.submit(svc, "echo", {"v": 1})
    assert hh.wait_jobs(svc, [first.job_id])[first.job_id].status == "succeeded"
    # Given out-of-range messages on the queue (the reproduced hang) ...
    svc.publish_raw([hh.message(2**63), hh.message(first.job_id, attempt=2**63)])
    # ... and the analytics table gone from under the recorder, so every event write fails
    hh.sql(svc, "analytics", "ALTER TABLE enstratus_job_event RENAME TO enstratus_job_event_hidden")
    hh.submit(svc, "echo", {"v": "unrecordable"})
    # Then `pinger check` says CRITICAL with the reason while the write keeps failing
    seen = []

    def critical():
        r = svc.pinger_check()
        seen.append((r.returncode, r.stdout.strip()[:300]))
        return r.returncode == 2 and any(w in r.stdout.lower() for w in ("record", "write", "event"))
    assert sh.wait_until(critical, 30, 1.0), (
        f"while the outcome writes keep failing, pinger check must say CRITICAL with the reason; "
        f"it said: {seen[-3:]}")
    # And a normal stop (SIGTERM) of the subscriber ends within the grace period
    took = hh.sigterm_and_wait(svc, "subscriber", GRACE + 30)
    hh.stop_service(svc)
    assert took is not None and took <= GRACE + 5, (
        f"the subscriber's warm stop took {took if took is None else round(took, 1)}s "
        f"(None: still running after {GRACE + 30}s; grace period {GRACE}s) while a write kept failing")


# -- names and config files -------------------------------------------------------------------------

def _tree(root):
    return {p for p in root.rglob("*")}


@pytest.mark.parametrize("daemon", ["publisher", "pinger"])
def test_a_start_name_that_leaves_run_is_refused_and_writes_nothing_outside_run(tmp_path, daemon):
    home = sh.make_home(tmp_path)
    run_dir = home / "services" / "worker" / "run"
    run_dir.mkdir(parents=True, exist_ok=True)
    (home / "services" / "worker" / "log").mkdir(parents=True, exist_ok=True)
    before = _tree(tmp_path)
    try:
        r = subprocess.run([str(hh.BIN / daemon), "start", "--name", "../../x"], env=sh.env_for(home),
                                         capture_output=True, text=True, timeout=60)
        time.sleep(0.5)
        new = sorted(str(p.relative_to(tmp_path)) for p in _tree(tmp_path) - before
                     if run_dir not in p.parents and p != run_dir)
        assert r.returncode != 0, f"{daemon} start --name ../../x was accepted: {r.stdout}{r.stderr}"
        assert not new, f"{daemon} start --name ../../x wrote outside run/: {new}"
        assert "name" in (r.stdout + r.stderr).lower(), f"the refusal must say why: {r.stdout}{r.stderr}"
    finally:
        sh.kill_strays(home)


def _max_processes():
    from enstratus_workers.db.instances import MAX_PROCESSES
    return MAX_PROCESSES


BAD_CONFIGS = {
    "admin.cfg port": ("services/worker/classes/admin.cfg", {"port": 70000}),
    "admin.cfg max_body": ("services/worker/classes/admin.cfg", {"max_body": 10}),
    "admin.cfg refresh": ("services/worker/classes/admin.cfg", {"refresh": "soon"}),
    "km.cfg port": ("services/km/classes/km.cfg", {"port": 70000}),
    "km.cfg frame_timeout": ("services/km/classes/km.cfg", {"frame_timeout": 0}),
    "max_attempts 10^29": ("services/worker/classes/worker.properties", {"action.max_attempts": 10**29}),
    "worker max above the API": ("services/worker/classes/worker.properties",
                                 {"worker.default.max": "MAXP1"}),
    "schedule of an unknown action": ("services/worker/classes/worker.properties",
                                      {"schedule.no.such.action.interval": 60}),
}


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_config_check_refuses_what_the_daemons_refuse(tmp_path, case):
    home = sh.make_home(tmp_path)
    sh.add_km(home)
    rel, values = BAD_CONFIGS[case]
    values = {k: (_max_processes() + 1 if v == "MAXP1" else v) for k, v in values.items()}
    sh.set_keys(home / rel, values)
    r = hh.cli(home, "config", "check")
    out = r.stdout + r.stderr
    assert r.returncode == 6, f"config check must refuse {case} ({rel}: {values}) with exit 6: rc={r.returncode} {out}"
    assert rel.rsplit("/", 1)[1] in out and list(values)[0] in out, f"the refusal must name file and key: {out}"
