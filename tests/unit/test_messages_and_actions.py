"""Message decoding, the action registry and the executor: bad input fails clearly, never crashes."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from enstratus_workers.actions import Registry, default_registry
from enstratus_workers.actions.executor import execute
from enstratus_workers.jobs.messages import (
    ActionMessage,
    MessageDecodeError,
    decode,
    encode_job,
)
from enstratus_workers.jobs.values import Outcome, Task


def test_encode_from_the_job_row_round_trips():
    body = encode_job(42, 'say "hi"', '{"a": [1, {"b": null}]}', 2, 5)
    assert decode(body) == ActionMessage(42, 'say "hi"', {"a": [1, {"b": None}]}, 2, 5)
    assert decode(ActionMessage(1, "noop", {}, 1).encode()).action == "noop"


@pytest.mark.parametrize("body, reason", [
    (b"\xff\xfe", "not JSON"),
    (b"[1, 2]", "not a JSON object"),
    (b'{"action": "noop"}', "job_id"),
    (b'{"job_id": true, "action": "noop"}', "job_id"),
    (b'{"job_id": 1}', "action"),
    (b'{"job_id": 1, "action": "noop", "attempt": 0}', "attempt"),
    (b'{"job_id": 1, "action": "noop", "attempt": 1, "max_attempts": 0}', "max_attempts"),
    (b"[" * 100000, "not JSON"),
    # numbers the job table cannot hold: BIGINT job ids, INTEGER attempts, the action column
    (b'{"job_id": 9223372036854775808, "action": "noop"}', "job_id"),
    (b'{"job_id": 1, "action": "noop", "attempt": 2147483648}', "attempt"),
    (b'{"job_id": 1, "action": "noop", "attempt": 1, "max_attempts": 2147483648}', "max_attempts"),
    (b'{"job_id": 1, "action": "%s"}' % (b"a" * 201), "action longer than 200"),
])
def test_bad_bodies_are_refused_with_a_reason(body, reason):
    with pytest.raises(MessageDecodeError, match=reason):
        decode(body)


def test_the_largest_numbers_the_job_table_holds_still_decode():
    # Given a message at the very top of each column's range / When decoded / Then it is accepted
    msg = decode(encode_job(2**63 - 1, "a" * 200, "{}", 2**31 - 1, 2**31 - 1))
    assert (msg.job_id, len(msg.action), msg.attempt, msg.max_attempts) == (2**63 - 1, 200, 2**31 - 1, 2**31 - 1)


def test_arguments_that_are_not_an_object_still_decode_so_the_job_can_fail_visibly():
    assert decode(b'{"job_id": 3, "action": "echo", "arguments": [1]}').arguments == [1]


@given(st.binary(max_size=300))
def test_arbitrary_bytes_decode_or_are_refused_never_crash(body):
    try:
        msg = decode(body)
    except MessageDecodeError:
        return
    assert isinstance(msg.job_id, int) and msg.job_id > 0 and msg.action


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                    max_leaves=20))
def test_any_json_arguments_survive_the_message_round_trip(arguments):
    msg = decode(encode_job(7, "echo", json.dumps(arguments), 1, 3))
    assert msg.arguments == arguments


def _task(action, arguments=None, job_id=1, attempt=1, max_attempts=3):
    return Task(job_id, action, {} if arguments is None else arguments, attempt, max_attempts, "default", "sub@h:1:ab")


def test_builtins_and_their_outcomes():
    reg = default_registry(plugins=False)
    assert {"noop", "echo", "sleep", "fail"} <= set(reg.names())
    ok = execute(reg, _task("echo", {"a": 1}), "w@h.1")
    assert (ok.status, json.loads(ok.result), ok.worker, ok.owner) == ("succeeded", {"a": 1}, "w@h.1", "sub@h:1:ab")
    assert ok.end_ms >= ok.start_ms
    failed = execute(reg, _task("fail", {"message": "boom"}), "w")
    assert (failed.status, failed.error) == ("failed", "boom")
    assert execute(reg, _task("sleep", {"seconds": -1}), "w").error == "'seconds' must be a number >= 0"


@pytest.mark.parametrize("task, error", [
    (_task("nope"), "unknown action 'nope'"),
    (_task("echo", [1, 2]), "arguments must be a JSON object, not list"),
    (_task("echo", "text"), "arguments must be a JSON object, not str"),
])
def test_bad_jobs_fail_with_the_reason(task, error):
    out = execute(default_registry(plugins=False), task, "w")
    assert out.status == "failed" and out.error == error and not out.retryable


def test_an_action_bug_and_an_unserializable_result_are_failures_not_crashes():
    reg = Registry()
    reg.register("bug", lambda args, ctx: 1 / 0)
    reg.register("weird", lambda args, ctx: {1, 2})
    bug = execute(reg, _task("bug"), "w")
    assert bug.error.startswith("ZeroDivisionError") and bug.retryable   # maybe transient
    assert bug.status == "pending"                                       # so the job is retried
    weird = execute(reg, _task("weird"), "w")
    assert "not JSON-serializable" in weird.error and (weird.status, weird.retryable) == ("failed", False)


def test_the_worker_decides_the_jobs_status_after_the_attempt():
    # Given an action that fails transiently, and one whose options retry its ActionError
    from enstratus_workers.actions import ActionOptions
    from enstratus_workers.errors import ActionError

    reg = Registry()
    reg.register("flaky", lambda args, ctx: 1 / 0)
    reg.register("busy", lambda args, ctx: (_ for _ in ()).throw(ActionError("busy")),
                 options=ActionOptions(retry_on=(ActionError,)))
    # When their last attempt fails, Then the job is dead, and the error says so
    last = execute(reg, _task("flaky", attempt=3, max_attempts=3), "w")
    assert last.status == "dead" and last.error.endswith("(attempt 3 of 3; dead)")
    # and an error the options retry sends the job back to pending
    assert execute(reg, _task("busy", attempt=1), "w").status == "pending"


def test_a_task_and_its_outcome_cross_the_socket_unchanged():
    task = _task("echo", {"a": [1, None]}, job_id=9)
    assert Task.from_frame(json.loads(json.dumps(task.to_frame()))) == task
    outcome = execute(Registry(), task, "w")
    assert Outcome.from_frame(json.loads(json.dumps(outcome.to_frame()))) == outcome


@pytest.mark.parametrize("frame", [
    [1], {"job_id": 1}, {**_task("echo").to_frame(), "attempt": "1"}, {**_task("echo").to_frame(), "job_id": True},
])
def test_a_frame_that_is_no_task_is_refused_as_a_value_error(frame):
    with pytest.raises(ValueError):
        Task.from_frame(frame)


def test_retry_policy():
    from enstratus_workers.jobs.lifecycle import (
        backoff_ms,
        event_outcome,
        job_status_after,
    )

    assert [backoff_ms(n) for n in (0, 1, 2, 3)] == [0, 1000, 2000, 4000]
    assert backoff_ms(50) == 300_000
    assert job_status_after("succeeded", False, 1, 3) == "succeeded"
    assert job_status_after("failed", False, 1, 3) == "failed"      # the action said it cannot succeed
    assert job_status_after("failed", True, 2, 3) == "pending"      # retried
    assert job_status_after("failed", True, 3, 3) == "dead"         # out of attempts
    assert event_outcome("pending") == "retry" and event_outcome("dead") == "dead"


def test_plugins_load_from_the_entry_point_group_and_a_broken_one_is_skipped(monkeypatch):
    from enstratus_workers.actions import registry as registry_module

    class EP:
        def __init__(self, name, target):
            self.name, self.value, self._target = name, "x:y", target

        def load(self):
            if isinstance(self._target, Exception):
                raise self._target
            return self._target

    eps = [EP("plug.hello", lambda a, c: "hello"), EP("plug.broken", ImportError("missing dep"))]
    monkeypatch.setattr(registry_module, "entry_points", lambda group: eps)
    reg = default_registry()
    assert "plug.hello" in reg and "plug.broken" not in reg
    assert execute(reg, _task("plug.hello"), "w").result == '"hello"'
