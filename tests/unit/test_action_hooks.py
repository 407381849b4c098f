"""Hooks around an action: called in order (after_* reversed), a failing one logged and skipped."""

from __future__ import annotations

import logging

from enstratus_workers.actions import Registry
from enstratus_workers.actions.executor import execute
from enstratus_workers.actions.hooks import Hook, Hooks
from enstratus_workers.jobs.values import Task


def task(job_id=1, action="noop"):
    return Task(job_id, action, {}, 1, 3, "default", "sub@h:1:ab")


class Recording(Hook):
    def __init__(self, name, calls):
        self.name, self.calls = name, calls

    def before_action(self, task, context):
        self.calls.append(("before", self.name, task.job_id, context.job_id))

    def after_action(self, task, context, outcome):
        self.calls.append(("after", self.name, task.job_id, outcome.status))


class Broken(Hook):
    def before_action(self, task, context):
        raise RuntimeError("hook bug")

    def after_action(self, task, context, outcome):
        raise RuntimeError("hook bug")


def registry(calls):
    """``noop`` writes down that it ran, in ``calls``."""
    reg = Registry()
    reg.register("noop", lambda arguments, context: calls.append(("action", context.job_id)))
    return reg


def test_hooks_run_in_order_around_the_action_and_after_in_reverse():
    # Given two hooks
    calls = []
    hooks = Hooks([Recording("a", calls), Recording("b", calls)])
    # When a task runs
    outcome = execute(registry(calls), task(7), "w", hooks=hooks)
    # Then before_action ran in order, then the action, then after_action in reverse, with the outcome
    assert calls == [("before", "a", 7, 7), ("before", "b", 7, 7), ("action", 7),
                     ("after", "b", 7, "succeeded"), ("after", "a", 7, "succeeded")]
    assert outcome.status == "succeeded"


def test_a_failing_hook_is_logged_and_skipped(caplog):
    # Given a broken hook between two good ones
    calls = []
    hooks = Hooks([Recording("a", calls), Broken(), Recording("b", calls)])
    # When a task runs
    with caplog.at_level(logging.ERROR, logger="enstratus_workers.actions.hooks"):
        outcome = execute(registry(calls), task(8), "w", hooks=hooks)
    # Then the action and the other hooks ran, the job succeeded, and each failure was logged
    assert [c[:2] for c in calls] == [("before", "a"), ("before", "b"), ("action", 8), ("after", "b"), ("after", "a")]
    assert outcome.status == "succeeded"
    failures = [r.getMessage() for r in caplog.records]
    assert failures == ["hook Broken.before_action failed for job 8; skipped",
                        "hook Broken.after_action failed for job 8; skipped"]


def test_hooks_see_an_attempt_that_fails_before_its_action():
    calls = []
    outcome = execute(Registry(), task(9, "nope"), "w", hooks=Hooks([Recording("a", calls)]))
    assert calls == [("before", "a", 9, 9), ("after", "a", 9, "failed")] and outcome.error == "unknown action 'nope'"


def test_the_state_event_hook_gives_the_store_each_tasks_job():
    # Given the state-event hook on a store, and an action that reads which job the store is told
    from enstratus_workers.cloud.state_events import StateEventHook

    class Store:
        job_id = action = None

    store, seen = Store(), []
    reg = Registry()
    reg.register("look", lambda arguments, context: seen.append((store.job_id, store.action)))
    hooks = Hooks([StateEventHook(store)])
    # When two tasks run one after the other
    execute(reg, task(11, "look"), "w", hooks=hooks)
    execute(reg, task(12, "look"), "w", hooks=hooks)
    # Then each action ran with its own job on the store, and nothing is left on it after
    assert seen == [(11, "look"), (12, "look")] and (store.job_id, store.action) == (None, None)


def test_the_worker_counts_its_tasks_with_a_hook():
    from enstratus_workers.daemons.worker import TaskCount

    count = TaskCount()
    reg = registry([])
    for j in (1, 2, 3):
        execute(reg, task(j), "w", hooks=Hooks([count]))
    assert count.done == 3
