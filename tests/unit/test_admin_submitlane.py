"""The short way for a single ``POST /jobs`` (admin/submitlane.py) answers as the route does.

A request with a query string is not taken by the lane (the route ignores one it does not
know), so the same body sent both ways compares the lane's answer with the route's."""

from __future__ import annotations

from enstratus_workers.admin.throttle import FREE_FAILURES

from tests.unit.admin_helpers import api, home  # noqa: F401 (fixtures)


def _both_ways(api, body: dict):
    """The answer through the lane and through the route."""
    lane = api.call("POST", "/jobs", json=body)
    route = api.call("POST", "/jobs?via=route", json=body)
    return lane, route


def _without_moving_parts(answer: dict) -> dict:
    job = {k: v for k, v in answer["job"].items() if k not in ("job_id", "created_timestamp")}
    return {**answer, "job": job}


def test_a_single_job_is_answered_as_the_route_answers_it(api):
    # When one job is posted through the lane and through the route
    body = {"action": "echo", "arguments": {"x": [1, 2.5, "\u00e9"], "account": "acme"}, "max_attempts": 2}
    lane, route = _both_ways(api, body)
    # Then both are stored and answered 201 with the same fields, in the same order
    assert lane.status_code == route.status_code == 201, (lane.text, route.text)
    assert list(lane.json()["job"]) == list(route.json()["job"])
    assert _without_moving_parts(lane.json()) == _without_moving_parts(route.json())
    assert lane.headers["content-type"] == route.headers["content-type"]
    assert lane.headers["x-frame-options"] == route.headers["x-frame-options"] == "DENY"
    # And the lane's job is the stored one, as GET /jobs/{id} shows it
    job = lane.json()["job"]
    assert api.call("GET", f"/jobs/{job['job_id']}").json() == job
    assert job["account"] == "acme" and job["created_timestamp"] > 0


def test_refusals_are_answered_as_the_route_answers_them(api):
    # A job the desired state refuses (the submitter's SubmitError), and a body the model refuses
    for body in ({"action": "echo", "queue": "nowhere"}, {"action": ""}, {"arguments": {}},
                 {"action": "echo", "max_attempts": 0}, {"action": "echo", "unknown_field": 1}):
        lane, route = _both_ways(api, body)
        assert lane.status_code == route.status_code == 422, (body, lane.text, route.text)
        assert lane.json() == route.json()
    # And nothing was stored
    assert api.call("GET", "/jobs/stats").json()["counts"]["pending"] == 0


def test_a_keyed_job_or_a_list_goes_on_to_the_route(api):
    first = api.call("POST", "/jobs", json={"action": "noop", "idempotency_key": "k"})
    again = api.call("POST", "/jobs", json={"action": "noop", "idempotency_key": "k"})
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json() == {"created": False, "job": first.json()["job"]}
    listed = api.call("POST", "/jobs", json=[{"action": "noop"}])
    assert listed.status_code == 201 and listed.json()[0]["created"] is True


def test_wrong_tokens_are_refused_and_counted_once_each(api):
    guesser = api.client_from("198.51.100.9")
    # Given wrong, missing and malformed credentials on a single job
    for headers in ({"Authorization": "Bearer wrong-token-wrong-token"}, {}, {"Authorization": "Basic x"},
                    {"Authorization": "Bearer "}):
        r = guesser.post("/jobs", json={"action": "noop"}, headers=headers)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", r.text
    # When the address guesses until it is locked out (the two wrong tokens above counted once each)
    for n in range(FREE_FAILURES - 1):
        assert guesser.post("/jobs", json={"action": "noop"},
                            headers={"Authorization": f"Bearer guess-{n:020d}"}).status_code == 401
    # Then even the right token is not looked at, on the lane's path as on every other
    r = guesser.post("/jobs", json={"action": "noop"}, headers=api.auth)
    assert r.status_code == 429 and "retry-after" in r.headers
    assert api.call("GET", "/jobs/stats").json()["counts"]["pending"] == 0
