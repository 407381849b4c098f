"""The admin daemon against hostile clients: page sessions (expiry, logout, scope), forged
requests from other origins, rebinding Host names, token guessing, non-strict JSON bodies, bad
rows already stored, and clients that trickle their headers (on a real socket)."""

from __future__ import annotations

import json
import socket
import time
from dataclasses import replace

import pytest

from enstratus_workers.admin import load_admin_settings
from enstratus_workers.admin.auth import COOKIE
from enstratus_workers.admin.sessions import SessionStore
from enstratus_workers.config import load_settings
from enstratus_workers.layout import Layout
from tests import servicehome as sh
from tests.unit.admin_helpers import (BASE, PORT, SAME_ORIGIN, TOKEN, api, home, serving,  # noqa: F401 (fixtures)
                                      stored_job)


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def instance_id(api) -> int:
    return api.call("GET", "/instances").json()[0]["id"]


#: every route that changes something, with a body that would be accepted
def change_routes(api) -> list[tuple[str, str, dict | None]]:
    iid = instance_id(api)
    return [
        ("POST", "/instances", {"type": "x", "queues": ["q"]}), ("DELETE", f"/instances/{iid}", None),
        ("POST", f"/instances/{iid}/enable", None), ("POST", f"/instances/{iid}/disable", None),
        ("POST", f"/instances/{iid}/start", None), ("PUT", f"/instances/{iid}/autoscale", {"min": 1, "max": 2}),
        ("PUT", f"/instances/{iid}/queues/extra", None), ("DELETE", f"/instances/{iid}/queues/default", None),
        ("POST", "/queues", {"name": "q2"}), ("DELETE", "/queues/default", None),
        ("POST", "/jobs", {"action": "noop"}), ("POST", "/jobs/stats/reset", None),
        ("POST", f"/ui/api/instances/{iid}/start", None), ("POST", f"/ui/api/instances/{iid}/disable", None),
        ("POST", "/ui/api/jobs", {"action": "noop"}), ("POST", "/ui/api/jobs/stats/reset", None),
        ("POST", "/ui/logout", None), ("POST", "/login", None),
    ]


def desired_state(api):
    return (api.call("GET", "/instances").json(), [q["name"] for q in api.call("GET", "/queues").json()],
            api.call("GET", "/jobs").json(), api.call("GET", "/jobs/stats").json())


# --- sessions -----------------------------------------------------------------------------------

def test_a_session_is_random_works_for_the_pages_only_and_ends_at_logout(api):
    # Given two logins
    first, second = api.logged_in_browser(), api.logged_in_browser("192.0.2.11")
    a, b = first.cookies.get(COOKIE), second.cookies.get(COOKIE)
    # Then each has its own random id, which holds nothing of the token
    assert a != b and len(a) >= 43 and TOKEN not in a
    # And the session opens the pages and the API calls the pages make
    assert first.get("/ui/status").status_code == 200
    assert first.get("/ui/fragments/jobs").status_code == 200
    r = first.post("/ui/api/jobs", json={"action": "noop"})
    assert r.status_code == 201 and r.json()["job"]["action"] == "noop"
    assert first.post(f"/ui/api/instances/{instance_id(api)}/start").status_code == 200
    # But not the JSON API, even when the cookie is sent there by hand
    for method, path in (("GET", "/instances"), ("GET", "/jobs"), ("POST", "/jobs/stats/reset"),
                         ("POST", f"/instances/{instance_id(api)}/disable"), ("GET", "/openapi.json")):
        r = api.browser().request(method, path, headers={"Cookie": f"{COOKIE}={a}"})
        assert r.status_code == 401, (method, path)
    # When the first one logs out
    r = first.post("/ui/logout", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/login"
    # Then its id is refused even if the browser kept it, and the other session goes on
    replay = api.browser()
    replay.cookies.set(COOKIE, a, path="/ui")
    assert replay.get("/ui/status").status_code == 401
    assert replay.post("/ui/api/jobs/stats/reset").status_code == 401
    assert second.get("/ui/status").status_code == 200
    # And the token keeps working for scripts throughout
    assert api.call("GET", "/instances").status_code == 200


def test_a_session_expires_when_idle_and_at_its_age_limit(api):
    clock = Clock()
    api.app.state.sessions = SessionStore(api.admin.session_idle, api.admin.session_max, clock=clock)
    assert (api.admin.session_idle, api.admin.session_max) == (1800, 43200)  # the documented defaults
    browser = api.logged_in_browser()
    # Given a session used every 20 minutes, it stays open past the idle limit
    for _ in range(3):
        clock.now += 20 * 60
        assert browser.get("/ui/status").status_code == 200
    # When it is left alone for 30 minutes, it is gone
    clock.now += 30 * 60
    assert browser.get("/ui/status").status_code == 401
    # Given a new session kept busy, it still ends 12 hours after the login
    browser = api.logged_in_browser()
    for _ in range(12 * 3):
        clock.now += 20 * 60 - 1
        assert browser.get("/ui/fragments/status").status_code == 200
    clock.now += 40
    r = browser.get("/ui/status")
    assert r.status_code == 401 and 'action="/login"' in r.text
    # And the cookie itself tells the browser to drop it at that age, and to send it under /ui only
    set_cookie = api.browser().post("/login", data={"token": TOKEN}, follow_redirects=False).headers["set-cookie"]
    assert "Max-Age=43200" in set_cookie and "Path=/ui;" in set_cookie and "HttpOnly" in set_cookie
    assert "SameSite=strict" in set_cookie


def test_session_limits_are_read_from_admin_cfg(home):
    cfg = home / "services" / "worker" / "classes" / "admin.cfg"
    sh.set_keys(cfg, {"session_idle": 600, "session_max": 3600, "header_timeout": 4,
                      "server_names": "admin.example.com admin.example.com:8443"})
    settings = load_admin_settings(Layout(home))
    assert (settings.session_idle, settings.session_max, settings.header_timeout) == (600, 3600, 4.0)
    assert settings.server_names == ("admin.example.com", "admin.example.com:8443")


# --- forged requests from other origins ---------------------------------------------------------

def test_a_change_from_another_origin_is_refused_on_every_route(api):
    # Given a logged-in browser, and the state before
    browser = api.logged_in_browser()
    before = desired_state(api)
    evil_headers = ({"Origin": "http://127.0.0.1:9999"},                          # another port: same site
                    {"Origin": "http://127.0.0.1:9999", "Sec-Fetch-Site": "same-site"},
                    {"Origin": "null"}, {"Sec-Fetch-Site": "cross-site"},
                    {"Origin": "http://evil.example"})
    for method, path, body in change_routes(api):
        for headers in evil_headers:
            # When another page makes the browser send it, with the cookie and even with the token
            for extra in ({}, api.auth):
                r = browser.request(method, path, json=body, headers={**headers, **extra})
                # Then it is refused before anything happens
                assert r.status_code == 403, (method, path, headers, r.text)
                assert "cross-origin" in r.json()["detail"]
    assert desired_state(api) == before
    assert browser.get("/ui/status").status_code == 200  # the session itself is untouched


def test_a_change_without_origin_needs_the_token_and_the_same_origin_may_change(api):
    cookie = api.logged_in_browser().cookies.get(COOKIE)
    iid = instance_id(api)
    # Given a request with the cookie but with neither Origin nor Sec-Fetch-Site (not a browser page)
    scripted = api.client_from("192.0.2.20")
    scripted.cookies.set(COOKIE, cookie, path="/ui")
    # Then the cookie is not good for a change
    assert scripted.post(f"/ui/api/instances/{iid}/disable").status_code == 401
    assert api.call("GET", f"/instances/{iid}").json()["enabled"] is True
    # But the token is, on the pages' calls and on the API
    assert scripted.post(f"/ui/api/instances/{iid}/disable", headers=api.auth).json()["enabled"] is False
    assert scripted.post(f"/instances/{iid}/enable", headers=api.auth).json()["enabled"] is True
    # And our own pages (same origin) change things with the session alone
    page = api.browser()
    page.cookies.set(COOKIE, cookie, path="/ui")
    assert page.post(f"/ui/api/instances/{iid}/disable").json()["enabled"] is False
    only_origin = api.client_from("192.0.2.21")
    only_origin.cookies.set(COOKIE, cookie, path="/ui")
    r = only_origin.post(f"/ui/api/instances/{iid}/start", headers={"Origin": BASE})  # older browsers
    assert r.status_code == 200 and r.json()["enabled"] is True


# --- Host: DNS rebinding ------------------------------------------------------------------------

@pytest.mark.parametrize("host", ["evil.example", f"evil.example:{PORT}", "127.0.0.1:9999", "127.0.0.1",
                                  f"127.0.0.2:{PORT}", ""])
def test_a_host_that_is_not_the_daemon_is_refused_even_with_the_token(api, host):
    for method, path in (("GET", "/instances"), ("GET", "/ui/status"), ("GET", "/openapi.json"),
                         ("POST", "/jobs/stats/reset")):
        r = api.call(method, path, headers={"Host": host})
        assert r.status_code == 421, (method, path, r.text)
        assert f"127.0.0.1:{PORT}" in r.json()["detail"]


def test_the_loopback_names_of_the_port_are_the_daemon(api):
    for host in (f"127.0.0.1:{PORT}", f"localhost:{PORT}", f"[::1]:{PORT}", f"LOCALHOST:{PORT}"):
        assert api.call("GET", "/instances", headers={"Host": host}).status_code == 200, host
    # And a same-origin change names the origin it was sent to
    r = api.call("POST", "/jobs/stats/reset", headers={"Host": f"localhost:{PORT}",
                                                        "Origin": f"http://localhost:{PORT}"})
    assert r.status_code == 200
    r = api.call("POST", "/jobs/stats/reset", headers={"Host": f"localhost:{PORT}", "Origin": BASE})
    assert r.status_code == 403


# --- token guessing -----------------------------------------------------------------------------

def test_wrong_tokens_are_throttled_per_address_with_a_growing_wait(api):
    guesser = api.client_from("198.51.100.7")
    # Given five wrong tokens from one address, each is a plain 401
    for n in range(5):
        r = guesser.get("/instances", headers={"Authorization": f"Bearer guess-{n:020d}"})
        assert r.status_code == 401
    # When it goes on guessing, it is told to wait, and the right token is not even looked at
    r = guesser.get("/instances", headers={"Authorization": "Bearer guess-again-guess-again"})
    assert r.status_code == 429 and r.headers["retry-after"] == "1"
    assert guesser.get("/instances", headers=api.auth).status_code == 429
    # And the login form says the same
    r = guesser.post("/login", data={"token": TOKEN}, headers=SAME_ORIGIN, follow_redirects=False)
    assert r.status_code == 429 and "try again" in r.text and "retry-after" in r.headers
    # When it waits and fails again, the wait grows
    time.sleep(1.1)
    assert guesser.get("/instances", headers={"Authorization": "Bearer still-wrong-still-wrong"}).status_code == 401
    r = guesser.get("/instances", headers={"Authorization": "Bearer still-wrong-still-wrong"})
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 2
    # Then another address with the right token is served as ever
    assert api.client_from("198.51.100.8").get("/instances", headers=api.auth).status_code == 200
    # And a page without a session (no token presented) is not counted as a guess
    for _ in range(10):
        assert api.browser("198.51.100.9").get("/ui/fragments/status").status_code == 401
    assert api.client_from("198.51.100.9").get("/instances", headers=api.auth).status_code == 200


# --- strict JSON bodies -------------------------------------------------------------------------

BAD_VALUES = {"a lone surrogate": '"\\ud800"', "NaN": "NaN", "Infinity": "Infinity",
              "-Infinity": "-Infinity", "a number too big for a float": "1e400"}


def body_routes(api) -> list[tuple[str, str, dict]]:
    iid = instance_id(api)
    return [("POST", "/instances", {"type": "x", "queues": ["q"], "concurrency": {"min": 1, "max": 2}}),
            ("PUT", f"/instances/{iid}/autoscale", {"min": 1, "max": 2}),
            ("POST", "/queues", {"name": "q3", "exchange": None, "routing_key": None}),
            ("POST", "/jobs", {"action": "noop", "arguments": {"a": 1}, "queue": "default",
                               "idempotency_key": "k", "max_attempts": 2}),
            ("POST", "/ui/api/jobs", {"action": "noop", "arguments": {"a": 1}, "idempotency_key": "k2"})]


def _with(body: dict, field: str, raw: str) -> str:
    """``body`` as JSON text with ``field`` (dotted) replaced by the raw JSON ``raw``."""
    marker = "__BAD__"
    doc = json.loads(json.dumps(body))
    *parents, last = field.split(".")
    target = doc
    for p in parents:
        target = target[p]
    target[last] = marker
    return json.dumps(doc).replace(f'"{marker}"', raw)


def fields_of(body: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in body.items():
        out.append(prefix + k)
        if isinstance(v, dict):
            out.extend(fields_of(v, prefix + k + "."))
    return out


def test_every_body_route_refuses_non_strict_json_naming_the_field_and_stores_nothing(api):
    before = desired_state(api)
    for method, path, body in body_routes(api):
        for field in fields_of(body):
            for what, raw in BAD_VALUES.items():
                # When one field of a body holds a value that is not strict JSON
                r = api.call(method, path, content=_with(body, field, raw),
                             headers={"Content-Type": "application/json", **SAME_ORIGIN})
                # Then the answer is 422 naming that field, and is itself standard JSON
                assert r.status_code == 422, (path, field, what, r.text)
                detail = r.json()["detail"]
                assert detail[0]["loc"] == ["body", field.split(".")[0]], (path, field, detail)
                assert field.split(".")[-1] in detail[0]["msg"] or what == "a lone surrogate", detail
                r.content.decode("utf-8")
        # And a key that is not UTF-8, or a body that is not UTF-8 at all, is refused the same way
        assert api.call(method, path, content='{"\\udfff": 1}', headers={"Content-Type": "application/json"}
                        ).status_code == 422
        r = api.call(method, path, content=b'{"name": "\xff"}', headers={"Content-Type": "application/json"})
        assert r.status_code == 422 and "not UTF-8" in r.text
    # And nothing was stored or changed
    assert desired_state(api) == before


@pytest.mark.parametrize("body,field", [
    ({"action": "noop", "max_attempts": 2**63}, "max_attempts"),
    ({"action": "noop", "max_attempts": 10**30}, "max_attempts"),
    ({"action": "noop", "max_attempts": -(2**64)}, "max_attempts"),
    ({"action": "noop", "max_attempts": 1.5}, "max_attempts"),
])
def test_integers_out_of_their_columns_range_are_422(api, body, field):
    r = api.call("POST", "/jobs", json=body)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", field], r.text
    iid = instance_id(api)
    for bad in ({"min": 2**31, "max": 2**31}, {"min": 0, "max": 2**64}, {"min": -(2**63), "max": 1}):
        r = api.call("PUT", f"/instances/{iid}/autoscale", json=bad)
        assert r.status_code == 422, r.text
    r = api.call("POST", "/instances", json={"type": "x", "queues": ["q"], "concurrency": {"min": 1, "max": 10**40}})
    assert r.status_code == 422
    assert api.call("GET", "/jobs").json() == [] and len(api.call("GET", "/instances").json()) == 1


def test_path_and_query_parameters_with_bad_text_are_4xx(api):
    iid = instance_id(api)
    for method, path in (("GET", "/queues/%ED%A0%80"), ("GET", "/queues/%FF"), ("DELETE", "/queues/%00"),
                         ("PUT", f"/instances/{iid}/queues/%ED%A0%80"), ("DELETE", f"/instances/{iid}/queues/%FF"),
                         ("GET", "/jobs?status=%ED%A0%80"), ("GET", "/jobs?limit=NaN"), ("GET", "/jobs?limit=1e400"),
                         ("GET", "/jobs/NaN"), ("GET", f"/jobs/{2**64}"), ("GET", "/instances/Infinity"),
                         ("GET", "/ui/fragments/jobs?status=%ED%A0%80"), ("GET", "/login?next=%ED%A0%80")):
        r = api.call(method, path)
        assert 400 <= r.status_code < 500 or (path.startswith(("/ui", "/login")) and r.status_code == 200), (
            method, path, r.status_code, r.text)
        r.content.decode("utf-8")


# --- rows already stored with bad text ----------------------------------------------------------

def test_jobs_stored_with_bad_text_are_listed_with_replacement_characters(api):
    # Given rows that an older version (or another tool) stored unchecked
    surrogate = stored_job(api, arguments='{"name": "\\ud800x"}', error="fine")
    non_finite = stored_job(api, arguments='{"a": NaN, "b": [Infinity, -Infinity]}', result="NaN",
                            status="succeeded")
    not_json = stored_job(api, arguments="{not json", result='"\\udfff"')
    # When the jobs are listed and read, the answer is standard JSON showing what can be shown
    r = api.call("GET", "/jobs")
    assert r.status_code == 200
    by_id = {j["job_id"]: j for j in r.json()}
    assert by_id[surrogate]["arguments"] == {"name": "\ufffdx"}
    assert by_id[non_finite]["arguments"] == {"a": "NaN", "b": ["Infinity", "-Infinity"]}
    assert by_id[non_finite]["result"] == "NaN"
    assert by_id[not_json]["arguments"] == "{not json" and by_id[not_json]["result"] == "\ufffd"
    for job_id in (surrogate, non_finite, not_json):
        assert api.call("GET", f"/jobs/{job_id}").status_code == 200
    assert "NaN" not in api.call("GET", "/jobs").content.decode("utf-8").replace('"NaN"', "")
    # And the pages show them too
    assert api.call("GET", "/ui/jobs").status_code == 200
    assert api.call("GET", f"/ui/fragments/job/{not_json}").status_code == 200
    assert api.call("GET", "/metrics").status_code == 200


def _server_socket_of(client: socket.socket) -> socket.socket:
    """The daemon's end of ``client``'s connection (the daemon runs in this process)."""
    import gc

    mine = client.getsockname()
    for obj in gc.get_objects():
        if isinstance(obj, socket.socket) and obj is not client and obj.fileno() != -1:
            try:
                if obj.getpeername() == mine:
                    return obj
            except OSError:
                continue
    raise AssertionError(f"no server-side socket for {mine}")


# --- slow headers, on a real socket -------------------------------------------------------------

def test_a_client_that_trickles_its_headers_is_disconnected_within_the_timeout(home):
    from enstratus_workers.daemons.admin import AdminService

    # Given the daemon serving on 127.0.0.1 with a 1 s header timeout
    layout = Layout(home)
    admin = replace(load_admin_settings(layout), port=0, header_timeout=1.0)
    service = AdminService(load_settings(layout), layout, "slow", admin)
    with serving(service):
        host, port = service.url.split("//")[1].rstrip("/").rsplit(":", 1)
        # When a client sends half a request line and then a byte now and then
        started = time.monotonic()
        with socket.create_connection((host, int(port)), timeout=10) as slow:
            slow.sendall(b"GET /instan")
            closed_after = None
            for byte in b"ces HTTP/1.1\r\nHost: x\r\n":
                time.sleep(0.3)
                try:
                    slow.sendall(bytes([byte]))
                    if slow.recv(1024, socket.MSG_DONTWAIT) == b"":
                        closed_after = time.monotonic() - started
                        break
                except BlockingIOError:
                    continue
                except OSError:
                    closed_after = time.monotonic() - started
                    break
            if closed_after is None:
                slow.settimeout(5)
                assert slow.recv(1024) == b""
                closed_after = time.monotonic() - started
        # Then the daemon closed the connection once the timeout had passed, not before
        assert 0.9 <= closed_after < 3.0, closed_after
        # And a client that sends its request at once, then idles between keep-alive requests, is served
        with socket.create_connection((host, int(port)), timeout=10) as fast:
            request = (f"GET /instances HTTP/1.1\r\nHost: {host}:{port}\r\n"
                       f"Authorization: Bearer {TOKEN}\r\n\r\n").encode()
            fast.sendall(request)
            assert fast.recv(65536).startswith(b"HTTP/1.1 200")
            # And its server side has Nagle off: a response written in two segments must not
            # wait for this client's delayed ACK (40 ms per keep-alive request otherwise)
            server_side = _server_socket_of(fast)
            assert server_side.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


def _exchange(host: str, port: int, request: bytes) -> bytes:
    """Everything the daemon answers to ``request`` until it closes the connection."""
    with socket.create_connection((host, port), timeout=10) as conn:
        conn.sendall(request)
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
        return answer


def test_request_headers_past_16_kib_are_refused_with_400(home):
    from enstratus_workers.admin.slowheaders import MAX_HEAD
    from enstratus_workers.daemons.admin import AdminService

    # Given the daemon serving on 127.0.0.1
    layout = Layout(home)
    service = AdminService(load_settings(layout), layout, "heads", replace(load_admin_settings(layout), port=0))
    with serving(service):
        host, port = service.url.split("//")[1].rstrip("/").rsplit(":", 1)
        head = (f"GET /instances HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {TOKEN}\r\n"
                "Connection: close\r\n")
        # When a request's headers pass the bound, they are answered 400 and the connection closed
        padded = f"{head}X-Pad: {'a' * MAX_HEAD}\r\n\r\n".encode()
        assert _exchange(host, int(port), padded).startswith(b"HTTP/1.1 400 ")
        # And headers just under it are served
        fits = f"{head}X-Pad: {'a' * (MAX_HEAD - 400)}\r\n\r\n".encode()
        answer = _exchange(host, int(port), fits)
        assert answer.startswith(b"HTTP/1.1 200 ")
        # And its whole body came (the status line and headers are written with it)
        _, _, body = answer.partition(b"\r\n\r\n")
        assert isinstance(json.loads(body), list)
