"""Hostile clients of the running admin daemon (embedded service): sessions, cross-origin forms,
a foreign Host header, token guessing, slow headers, and generated bodies (surrogates, NaN,
deep nesting, huge numbers). Each test ends with the common invariants (``hostile_helpers``).

The throttling test runs last: after it this address may be slowed down.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
from urllib.parse import urlencode, urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.e2e import hostile_helpers as hh

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

REFUSED = (401, 403)
FORM = "application/x-www-form-urlencoded"


@pytest.fixture(scope="module")
def svc(tmp_path_factory):
    with hh.running_service(tmp_path_factory.mktemp("admin"), "embedded") as s:
        yield s


def origin(svc) -> str:
    return svc.admin_url()


def other_origin(svc) -> str:
    u = urlsplit(svc.admin_url())
    return f"http://127.0.0.1:{(u.port % 60000) + 1001}"


def same_origin_headers(svc, **extra) -> dict:
    return {"Origin": origin(svc), "Sec-Fetch-Site": "same-origin", **extra}


def login(svc) -> str:
    """Log in through the form as a browser does; the session cookie's value."""
    status, headers, body = svc.admin("POST", "/login", auth=False,
                                      body=urlencode({"token": svc.token(), "next": "/ui/status"}).encode(),
                                      headers=same_origin_headers(svc, **{"Content-Type": FORM}))
    assert status in (302, 303), f"login answered {status}: {body[:300]!r}"
    cookies = [c for c in headers["set-cookie-all"] if c.startswith("enstratus_admin=")]
    assert cookies, f"login set no session cookie: {headers['set-cookie-all']}"
    cookie = cookies[0]
    attrs = cookie.lower()
    assert "httponly" in attrs and ("max-age=" in attrs or "expires=" in attrs), (
        f"the session cookie must be HttpOnly and expire: {cookie}")
    return cookie.split(";", 1)[0].split("=", 1)[1]


def with_cookie(value: str, **extra) -> dict:
    return {"Cookie": f"enstratus_admin={value}", **extra}


def page_routes(svc, session: str) -> tuple[str, str]:
    """(prefix of the instance calls the pages' script makes, the logout form's action), read
    from what the daemon serves: the spec fixes what a session may do, not the URLs."""
    js = svc.admin("GET", "/ui/static/app.js", auth=False, headers=with_cookie(session))[2].decode(errors="replace")
    found = re.search(r'api\("POST",\s*"([^"]*?)instances/', js)
    html = svc.admin("GET", "/ui/status", auth=False, headers=with_cookie(session))[2].decode(errors="replace")
    logout = re.search(r'action="([^"]*logout[^"]*)"', html)
    return (found.group(1) if found else "/") + "instances/", logout.group(1) if logout else "/logout"


def test_sessions_are_random_revocable_and_good_only_for_the_pages(svc):
    # Given two logins
    a, b = login(svc), login(svc)
    # Then each has its own random session id, which is not derived from the token
    derived = hmac.new(svc.token().encode(), b"enstratus-workers admin session v1", hashlib.sha256).hexdigest()
    assert a != b, "two logins got the same session id: sessions must be random, server-side"
    assert derived not in (a, b) and svc.token() not in (a, b), "the session id is derived from the token"
    assert len(a) >= 20, f"session id too short to be unguessable: {len(a)} characters"
    # And a session opens the pages and the calls they make
    status, _h, page = svc.admin("GET", "/ui/status", auth=False, headers=with_cookie(a))
    assert status == 200 and b'name="token"' not in page, f"a fresh session did not open the status page: {status}"
    assert svc.admin("GET", "/ui/fragments/status", auth=False, headers=with_cookie(a))[0] == 200
    # But not the rest of the API (these targets do not exist: 404/422 would mean "accepted")
    others = {("DELETE", "/queues/no-such-queue-x"): None, ("DELETE", "/instances/999999"): None,
              ("POST", "/queues"): b'{"name": "hostile-q"}', ("GET", "/openapi.json"): None,
              ("GET", "/metrics"): None}
    got = {f"{m} {path}": svc.admin(m, path, auth=False, body=body,
                                    headers=with_cookie(a, **same_origin_headers(svc)))[0]
           for (m, path), body in others.items()}
    wrong = {k: v for k, v in got.items() if v not in REFUSED}
    assert not wrong, f"a page session must be good only for the pages and their calls: {wrong}"
    # When one session logs out
    instances, logout = page_routes(svc, a)
    out = svc.admin("POST", logout, auth=False, headers=with_cookie(a, **same_origin_headers(svc)))[0]
    assert out in (200, 302, 303), f"POST {logout} (the page's logout form) answered {out}"
    # Then its id is revoked on the server (not just cleared in the browser), the other lives on
    after = svc.admin("GET", "/ui/fragments/status", auth=False, headers=with_cookie(a))[0]
    call = svc.admin("POST", f"{instances}999999/disable", auth=False,
                     headers=with_cookie(a, **same_origin_headers(svc)))[0]
    assert after in REFUSED and call in REFUSED, (
        f"a logged-out session id still works: fragment {after}, page call {call}")
    assert svc.admin("GET", "/ui/fragments/status", auth=False, headers=with_cookie(b))[0] == 200
    hh.check_invariants(svc, what="session handling")


def test_a_cross_origin_form_post_with_the_session_cookie_is_refused(svc):
    session = login(svc)
    instances, _logout = page_routes(svc, session)
    [inst] = [i for i in json.loads(svc.admin("GET", "/instances")[2]) if i["type"] == "default"]
    forged = {
        "form from another port": {"Origin": other_origin(svc), "Sec-Fetch-Site": "same-site",
                                   "Content-Type": FORM},
        "cross-site, no Origin": {"Sec-Fetch-Site": "cross-site", "Content-Type": FORM},
        "Origin null": {"Origin": "null", "Content-Type": FORM},
    }
    got = {}
    for what, headers in forged.items():
        got[what] = svc.admin("POST", f"{instances}{inst['id']}/disable", auth=False, body=b"x=1",
                              headers=with_cookie(session, **headers))[0]
    refused = {k: v for k, v in got.items() if v != 403}
    now = [i for i in json.loads(svc.admin("GET", "/instances")[2]) if i["id"] == inst["id"]][0]
    if not now["enabled"]:   # put it back, so the rest of the module has its workers
        svc.admin("POST", f"/instances/{inst['id']}/enable", headers={"Origin": origin(svc)})
    assert not refused and now["enabled"], (
        f"a forged POST with the session cookie must get 403 and change nothing: {got}, enabled={now['enabled']}")
    # A same-origin call of the page is still let through (404: the instance does not exist)
    ok = svc.admin("POST", f"{instances}999999/disable", auth=False,
                   headers=with_cookie(session, **same_origin_headers(svc)))[0]
    assert ok == 404, f"the page's own same-origin call was refused: {ok}"
    hh.check_invariants(svc, what="cross-origin form posts")


def test_a_foreign_host_header_is_refused(svc):
    u = urlsplit(svc.admin_url())
    got = {h: svc.admin("GET", "/status", headers={"Host": h})[0]
           for h in ("evil.example", f"evil.example:{u.port}", f"127.0.0.1.evil.example:{u.port}")}
    wrong = {h: s for h, s in got.items() if not 400 <= s < 500}
    assert not wrong, f"a Host header naming another site must be refused (DNS rebinding): {wrong}"
    assert svc.admin("GET", "/status", headers={"Host": f"127.0.0.1:{u.port}"})[0] == 200
    hh.check_invariants(svc, what="foreign Host headers")


def test_slow_header_connections_time_out(svc):
    u = urlsplit(svc.admin_url())
    partial = hh.raw_tcp(u.port, b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    trickle = hh.raw_tcp(u.port, b"GET /status HTTP/1.1\r\n")
    began = time.monotonic()
    closed = {"partial": None, "trickle": None}
    try:
        while time.monotonic() - began < 20 and None in closed.values():
            try:
                trickle.sendall(b"X-Slow: 1\r\n")
            except OSError:
                closed["trickle"] = closed["trickle"] or round(time.monotonic() - began, 1)
            for name, s in (("partial", partial), ("trickle", trickle)):
                if closed[name] is None and hh.closed_within(s, 0.5) is not None:
                    closed[name] = round(time.monotonic() - began, 1)
            time.sleep(0.5)
    finally:
        partial.close()
        trickle.close()
    assert None not in closed.values(), (
        f"connections whose headers never end must be timed out; closed after (s): {closed}")
    hh.check_invariants(svc, what="slow-header connections")


# -- generated bodies ------------------------------------------------------------------------------

def _render(value) -> str:
    """JSON text, where some leaves are raw tokens (NaN, lone surrogates, huge numbers)."""
    if isinstance(value, tuple):   # ("raw", token)
        return value[1]
    if isinstance(value, list):
        return "[" + ",".join(_render(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(json.dumps(k) + ":" + _render(v) for k, v in value.items()) + "}"
    return json.dumps(value)


_raw = st.sampled_from(["NaN", "Infinity", "-Infinity", "1e400", '"\\ud800"', '"a\\udc00b"',
                        "123456789012345678901234567890123"]).map(lambda t: ("raw", t))
_value = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.text(max_size=8), _raw),
                      lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=5), kids, max_size=3),
                      max_leaves=10)


@st.composite
def hostile_body(draw) -> tuple[str, str, str]:
    """(method, path, body text) of a generated request; the body always holds something hostile."""
    target = draw(st.sampled_from(["jobs", "jobs", "autoscale", "instances", "queues"]))
    poison = draw(_raw)
    depth = draw(st.sampled_from([0, 0, 0, 50, 5000, 100000]))
    nest = "[" * depth + _render(poison) + "]" * depth
    if target == "jobs":
        doc = {"action": draw(st.sampled_from(["echo", "noop"])),
               draw(st.sampled_from(["arguments", "max_attempts", "idempotency_key", "action", "queue"])): ("raw", nest)}
        if draw(st.booleans()):
            doc["arguments"] = draw(_value)
        return "POST", "/jobs", _render(doc)
    if target == "autoscale":
        doc = {"min": ("raw", nest), "max": draw(st.one_of(st.integers(-2**70, 2**70), _raw))}
        return "PUT", "/instances/999999/autoscale", _render(doc)
    if target == "instances":
        doc = {"type": draw(st.sampled_from(["x", ("raw", nest)])), "queues": [("raw", nest)],
               "concurrency": {"min": draw(_value), "max": ("raw", nest)}}
        return "POST", "/instances", _render(doc)
    return "POST", "/queues", _render({"name": ("raw", nest), "exchange": draw(_value)})


def test_generated_hostile_bodies_get_4xx_and_the_api_keeps_answering(svc):
    before = hh.max_job_id(svc)
    answers = []

    @given(hostile_body())
    @settings(max_examples=40, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def send(req):
        method, path, body = req
        status, _h, text = svc.admin(method, path, body=body.encode("utf-8", "surrogatepass"),
                                     headers={"Origin": origin(svc)})
        answers.append((status, method, path, body[:120], text[:200]))

    send()
    server_errors = [a for a in answers if a[0] >= 500]
    accepted = [a for a in answers if a[0] < 400]
    assert not server_errors, f"generated bodies got 5xx: {server_errors[:5]}"
    assert not accepted, f"bodies holding NaN / lone surrogates / huge numbers were accepted: {accepted[:5]}"
    stored = hh.sql(svc, "provisioning", "SELECT job_id, action, arguments FROM enstratus_job WHERE job_id > :b",
                    {"b": before})
    assert stored == [], f"refused bodies stored jobs: {stored[:5]}"
    assert svc.admin("GET", "/jobs")[0] == 200
    hh.check_invariants(svc, what=f"{len(answers)} generated admin bodies")


# -- last: token guessing is throttled ------------------------------------------------------------

def test_failed_tokens_are_throttled(svc):
    statuses = []
    for i in range(12):
        statuses.append(svc.admin("GET", "/status", headers={"Authorization": f"Bearer wrong-token-{i:04d}xxxxxx"})[0])
        if statuses[-1] == 429:
            break
    assert 429 in statuses, f"12 wrong tokens in a row were never answered 429: {statuses}"
    assert statuses.index(429) <= 10, f"throttling came only after {statuses.index(429)} failures"
    # the login form is throttled too
    form = []
    for i in range(12):
        form.append(svc.admin("POST", "/login", auth=False, body=urlencode({"token": f"nope{i}"}).encode(),
                              headers=same_origin_headers(svc, **{"Content-Type": FORM}))[0])
        if form[-1] == 429:
            break
    assert 429 in form, f"12 wrong tokens on the login form were never answered 429: {form}"
    hh.check_invariants(svc, what="token guessing")

