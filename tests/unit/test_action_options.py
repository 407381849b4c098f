"""Declared action options: checked when the action registers, read through the registry."""

from __future__ import annotations

import logging

import pytest

from enstratus_workers.actions import (
    ActionOptions,
    ActionOptionsError,
    Registry,
    action,
    default_registry,
)
from enstratus_workers.config import limits
from enstratus_workers.errors import ActionError


def noop(arguments, context):
    return None


def test_options_declared_by_the_decorator_are_what_the_registry_reports():
    # Given an action declaring a time limit and a budget
    @action(time_limit=60, max_attempts=5)
    def slow(arguments, context):
        return None

    # When registered, Then the registry reports them, and no limit for an action declaring none
    reg = Registry()
    reg.register("slow", slow)
    reg.register("noop", noop)
    assert reg.options("slow") == ActionOptions(time_limit=60, max_attempts=5)
    assert reg.options("noop") == ActionOptions()
    assert reg.time_limits() == {"slow": 60.0}


def test_options_given_at_register_win_over_the_declared_ones():
    reg = Registry()
    reg.register("noop", action(max_attempts=2)(noop), options=ActionOptions(max_attempts=7))
    assert reg.options("noop").max_attempts == 7


def test_legacy_attributes_are_still_read():
    # Given a plug-in written before options were declared
    def hang(arguments, context):
        return None

    hang.time_limit, hang.max_attempts = 1.0, 4
    reg = Registry()
    reg.register("hang", hang)
    assert reg.options("hang") == ActionOptions(time_limit=1.0, max_attempts=4)
    assert reg.time_limits() == {"hang": 1.0}


@pytest.mark.parametrize("options, says", [
    (dict(time_limit=0), "time_limit must be a number above 0"),
    (dict(time_limit=float("nan")), "time_limit"),
    (dict(time_limit=limits.RANGES["action.time_limit"][1] + 1), "time_limit"),
    (dict(time_limit="60"), "time_limit"),
    (dict(max_attempts=0), f"max_attempts must be an integer between 1 and {limits.MAX_ATTEMPTS}"),
    (dict(max_attempts=limits.MAX_ATTEMPTS + 1), "max_attempts"),
    (dict(max_attempts=True), "max_attempts"),
    (dict(max_attempts=2.0), "max_attempts"),
    (dict(queue="a/b"), "queue must be a queue name"),
    (dict(retry_on=("KeyError",)), "retry_on must be exception types"),
    (dict(retry_on=KeyError, fail_on=(KeyError,)), "KeyError both retried and failed"),
])
def test_a_bad_option_is_refused_with_the_reason(options, says):
    with pytest.raises(ActionOptionsError, match=says):
        ActionOptions(**options)


def test_a_bad_legacy_attribute_is_refused_at_register_and_nothing_is_registered():
    def bad(arguments, context):
        return None

    bad.time_limit = -1
    reg = Registry()
    with pytest.raises(ActionOptionsError, match="action bad: time_limit"):
        reg.register("bad", bad)
    assert "bad" not in reg


def test_a_plugin_with_a_bad_option_is_logged_and_skipped(monkeypatch, caplog):
    from enstratus_workers.actions import registry as registry_module

    def bad(arguments, context):
        return None

    bad.max_attempts = 0

    class EP:
        name, value = "plug.bad", "x:bad"

        def load(self):
            return bad

    monkeypatch.setattr(registry_module, "entry_points", lambda group: [EP()])
    with caplog.at_level(logging.ERROR, logger="enstratus_workers.actions.registry"):
        reg = default_registry()
    assert "plug.bad" not in reg and "noop" in reg
    assert any("plug.bad" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("options, exc, retried", [
    (ActionOptions(), ActionError("no"), False),
    (ActionOptions(), RuntimeError("flaky"), True),
    (ActionOptions(fail_on=(LookupError,)), KeyError("k"), False),
    (ActionOptions(retry_on=(ActionError,)), ActionError("busy"), True),
])
def test_which_failures_are_retried(options, exc, retried):
    assert options.retryable(exc) is retried


def test_an_unknown_action_has_no_options():
    with pytest.raises(ActionError, match="unknown action 'nope'"):
        Registry().options("nope")
