"""The admin API's accounts and pauses: a job's ``account``, and pausing and resuming queues and
accounts fleet-wide (``/queues/{name}/pause``, ``/accounts/{account}/pause``, ``/pauses``)."""

from __future__ import annotations

import pytest

from tests.unit.admin_helpers import api, home  # noqa: F401 - fixtures


def test_a_job_carries_its_account_given_or_taken_from_its_arguments(api):  # noqa: F811
    # Given jobs submitted with an account, with an 'account' argument, and with neither
    given = api.call("POST", "/jobs", json={"action": "echo", "account": "acme"})
    argued = api.call("POST", "/jobs", json={"action": "echo", "arguments": {"account": 42}})
    none = api.call("POST", "/jobs", json={"action": "echo"})
    # Then each shows its account (the argument's, as the cloud actions take it, a string)
    assert [r.status_code for r in (given, argued, none)] == [201, 201, 201]
    assert [r.json()["job"]["account"] for r in (given, argued, none)] == ["acme", "42", None]
    # And reading and listing show it too
    job_id = given.json()["job"]["job_id"]
    assert api.call("GET", f"/jobs/{job_id}").json()["account"] == "acme"
    assert {j["job_id"]: j["account"] for j in api.call("GET", "/jobs").json()}[job_id] == "acme"


@pytest.mark.parametrize("body, says", [
    ({"action": "echo", "account": " acme"}, "invalid account name ' acme'"),
    ({"action": "echo", "account": "a/b"}, "invalid account name 'a/b'"),
    ({"action": "echo", "account": "x" * 101}, "invalid account name"),
    ({"action": "echo", "arguments": {"account": "a,b"}}, "invalid account name 'a,b' in the arguments"),
    ({"action": "echo", "account": "acme", "arguments": {"account": "other"}},
     "the account 'acme' differs from the arguments' account 'other'"),
])
def test_an_invalid_account_is_a_422_naming_it_and_nothing_is_stored(api, body, says):  # noqa: F811
    # When a job with a bad account is submitted, alone or in a list
    alone = api.call("POST", "/jobs", json=body)
    listed = api.call("POST", "/jobs", json=[{"action": "echo"}, body])
    # Then it is refused, naming the account (and, in a list, the job), and no job is stored
    assert alone.status_code == listed.status_code == 422
    assert says in alone.json()["detail"][0]["msg"]
    assert listed.json()["detail"][0]["msg"].startswith("job 1: ")
    assert api.call("GET", "/jobs").json() == []


def test_queues_and_accounts_are_paused_listed_and_resumed(api):  # noqa: F811
    # Given nothing paused
    assert api.call("GET", "/pauses").json() == []
    # When the default queue and the account "Zürich AG" are paused (twice: no change)
    queue = api.call("POST", "/queues/default/pause")
    account = api.call("POST", "/accounts/Z%C3%BCrich%20AG/pause")
    again = api.call("POST", "/accounts/Z%C3%BCrich%20AG/pause")
    # Then each answers its pause, the second pause keeping the first one's time
    assert queue.status_code == account.status_code == again.status_code == 200
    assert {k: queue.json()[k] for k in ("kind", "name", "paused")} == {"kind": "queue", "name": "default",
                                                                          "paused": True}
    assert account.json()["name"] == "Zürich AG" and account.json()["since_ms"] == again.json()["since_ms"]
    # And the list shows both, queues first
    assert [(p["kind"], p["name"]) for p in api.call("GET", "/pauses").json()] == [
        ("queue", "default"), ("account", "Zürich AG")]
    # When both are resumed (the account twice: no change)
    answers = [api.call("POST", "/queues/default/resume"), api.call("POST", "/accounts/Z%C3%BCrich%20AG/resume"),
               api.call("POST", "/accounts/Z%C3%BCrich%20AG/resume")]
    # Then nothing is paused
    assert [(r.status_code, r.json()["paused"], r.json()["since_ms"]) for r in answers] == [(200, False, None)] * 3
    assert api.call("GET", "/pauses").json() == []


def test_an_unknown_queue_is_404_and_a_bad_account_422_naming_it(api):  # noqa: F811
    # When an unknown queue is paused or resumed, or an account no job can have
    unknown = [api.call("POST", f"/queues/nope/{verb}") for verb in ("pause", "resume")]
    bad = api.call("POST", "/accounts/%20acme/pause")
    comma = api.call("POST", "/accounts/a,b/resume")
    # Then 404 names the queue, 422 the account, and nothing is paused
    assert [r.status_code for r in unknown] == [404, 404]
    assert unknown[0].json() == {"detail": "no queue 'nope'"}
    assert bad.status_code == comma.status_code == 422
    assert "invalid account name ' acme'" in bad.json()["detail"][0]["msg"]
    assert bad.json()["detail"][0]["loc"] == ["path", "account"]
    assert "invalid account name 'a,b'" in comma.json()["detail"][0]["msg"]
    assert api.call("GET", "/pauses").json() == []


def test_a_queue_declared_through_the_api_can_be_paused(api):  # noqa: F811
    # Given a queue declared a moment ago
    assert api.call("POST", "/queues", json={"name": "bulk.low"}).status_code == 201
    # When it is paused / Then it is known
    assert api.call("POST", "/queues/bulk.low/pause").json()["paused"] is True
