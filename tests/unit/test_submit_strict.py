"""submit(): what cannot be stored and read back by every reader is refused with the reason,
as a ValueError in Python and exit 2 in the CLI, never a traceback, and nothing is stored."""

from __future__ import annotations

import pytest

from enstratus_workers import cli
from enstratus_workers.config import limits, load_settings
from enstratus_workers.db import open_databases
from enstratus_workers.jobs.submit import SubmitError, new_job, submit
from enstratus_workers.layout import Layout
from tests import servicehome as sh


@pytest.fixture
def home(tmp_path):
    return sh.make_home(tmp_path)


@pytest.fixture
def settings(home):
    return load_settings(Layout(home))


def stored_jobs(home) -> int:
    layout = Layout(home)
    dbs = open_databases(load_settings(layout).worker, layout)
    try:
        return sum(dbs.jobs.counts().values())
    finally:
        dbs.close()


REFUSED = {
    "NaN": (dict(arguments='{"x": NaN}'), "NaN is not a JSON number"),
    "Infinity": (dict(arguments='[-Infinity]'), "-Infinity is not a JSON number"),
    "escaped lone surrogate": (dict(arguments='{"x": "\\ud800"}'), "lone surrogate"),
    "lone surrogate in a value": (dict(arguments={"x": "\ud800"}), "lone surrogate"),
    "float nan in a value": (dict(arguments={"x": float("nan")}), "is not a JSON number"),
    "not JSON": (dict(arguments="{"), "not strict JSON"),
    "huge max_attempts": (dict(max_attempts=10**29), f"between 1 and {limits.MAX_ATTEMPTS}"),
    "zero max_attempts": (dict(max_attempts=0), f"between 1 and {limits.MAX_ATTEMPTS}"),
    "bool max_attempts": (dict(max_attempts=True), "must be an integer"),
    "queue with a newline": (dict(queue="default\nx"), "invalid queue name 'default\\nx'"),
    "queue with a slash": (dict(queue="a/b"), "invalid queue name"),
    "unconfigured queue": (dict(queue="elsewhere"), "unknown queue 'elsewhere'"),
    "action with a newline": (dict(action="echo\n2030 INFO forged"), "invalid action name 'echo\\n2030"),
    "action with ESC": (dict(action="echo\x1b[31m"), "invalid action name 'echo\\x1b[31m'"),
    "surrogate idempotency key": (dict(idempotency_key="k\udcff"), "lone surrogate"),
    "account with a blank at its end": (dict(account="acme "), "invalid account name 'acme '"),
    "account with a newline": (dict(account="ac\nme"), "invalid account name 'ac\\nme'"),
    "account too long": (dict(account="x" * 101), "invalid account name"),
    "account with a lone surrogate": (dict(account="k\udcff"), "invalid account name"),
    "account not a string": (dict(account=42), "invalid account name '42'"),
    "arguments' account with a comma": (dict(arguments={"account": "a,b"}), "'a,b' in the arguments' 'account'"),
    "two accounts": (dict(account="42", arguments={"account": 43}), "differs from the arguments' account '43'"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_python_callers_get_a_value_error_saying_why(settings, case):
    # Given a submission that cannot be stored as it is
    kw, says = REFUSED[case]
    kw = {"action": "echo", **kw}
    # When it is validated, Then it is refused with a ValueError whose message is one line
    with pytest.raises(ValueError) as caught:
        new_job(settings, **kw)
    assert isinstance(caught.value, SubmitError)
    assert says in str(caught.value) and "\n" not in str(caught.value)


def test_an_action_declaring_an_impossible_attempt_budget_is_refused_when_it_registers():
    # Given a plug-in action declaring more attempts than a job may have (the legacy attribute)
    from enstratus_workers.actions import ActionOptionsError, Registry

    def greedy(arguments, context):
        return None

    greedy.max_attempts = 10**29
    registry = Registry()
    # When it registers, Then it is refused, naming the action, and is not registered
    with pytest.raises(ActionOptionsError, match=f"action greedy: max_attempts must be an integer between 1 and {limits.MAX_ATTEMPTS}"):
        registry.register("greedy", greedy)
    assert "greedy" not in registry


def test_an_action_declared_budget_and_queue_are_what_a_job_gets_unless_the_caller_says(settings):
    # Given an action declaring five attempts and a queue
    from enstratus_workers.actions import Registry, action

    @action(max_attempts=5, queue=settings.worker.default_queue)
    def patient(arguments, context):
        return None

    registry = Registry()
    registry.register("patient", patient)
    # When submitted without and with an explicit budget
    job = new_job(settings, "patient", registry=registry)
    explicit = new_job(settings, "patient", registry=registry, max_attempts=2)
    # Then the action's budget holds unless the caller gives one
    assert (job.max_attempts, job.queue, explicit.max_attempts) == (5, settings.worker.default_queue, 2)


def test_valid_submissions_still_pass_and_keep_the_callers_text(settings, home):
    # Given strict JSON with non-ASCII text and the largest attempt budget
    layout = Layout(home)
    dbs = open_databases(settings.worker, layout)
    try:
        # When submitted, Then it is stored as written
        job, created = submit(settings, dbs, "echo", '{"name": "web-1 ☃"}', max_attempts=limits.MAX_ATTEMPTS)
        assert created and job.arguments == '{"name": "web-1 ☃"}'
        assert job.max_attempts == limits.MAX_ATTEMPTS
        # And a JSON-able value is accepted as well
        again, _ = submit(settings, dbs, "server.sync", {"account": "42"})
        assert (again.action, again.arguments) == ("server.sync", '{"account":"42"}')
        # And the account is the arguments' (an integer one as the cloud actions read it), or
        # the caller's, or none; an 'account' argument that is no account id is the action's
        assert again.account == "42" and job.account is None
        assert submit(settings, dbs, "server.sync", {"account": 42})[0].account == "42"
        assert submit(settings, dbs, "echo", {"account": 42}, account="42")[0].account == "42"
        assert submit(settings, dbs, "echo", {"account": ["x"]})[0].account is None
        assert dbs.jobs.get(again.job_id).account == "42"
    finally:
        dbs.close()


CLI_REFUSED = {
    "NaN": (["--args", '{"x": NaN}'], "NaN is not a JSON number"),
    "lone surrogate": (["--args", '"\\ud800"'], "lone surrogate"),
    "huge max_attempts": (["--max-attempts", str(10**29)], f"between 1 and {limits.MAX_ATTEMPTS}"),
    "bad queue": (["--queue", "de fault"], "invalid queue name 'de fault'"),
    "bad account": (["--account", "a/b"], "invalid account name 'a/b'"),
}


@pytest.mark.parametrize("case", list(CLI_REFUSED))
def test_the_cli_exits_2_with_the_reason_and_stores_nothing(home, case, capsys):
    # Given a submission the CLI cannot store
    extra, says = CLI_REFUSED[case]
    # When submitted from the command line
    code = cli.main(["--home", str(home), "submit", "echo", *extra])
    # Then it exits 2 with one line saying why, no traceback, and no job exists
    err = capsys.readouterr().err
    assert code == 2, err
    assert says in err and "Traceback" not in err and err.count("\n") == 1
    assert stored_jobs(home) == 0


def test_the_cli_shows_a_job_with_control_characters_on_its_own_lines(home, capsys):
    # Given a job whose arguments hold a line separator and a C1 control, both legal in JSON text
    assert cli.main(["--home", str(home), "submit", "echo", "--args", '{"m": "a\u2028b\u009bc"}']) == 0
    capsys.readouterr()
    # When the operator looks at it
    assert cli.main(["--home", str(home), "job", "1"]) == 0
    out = capsys.readouterr().out
    # Then the characters are shown as escapes and cannot break or drive the terminal
    assert "a\\u2028b\\x9bc" in out
    assert "\u2028" not in out and "\u009b" not in out
