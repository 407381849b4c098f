"""The admin API fuzzed from its own OpenAPI spec (schemathesis): whatever a client sends, valid
or not, the answer is never a server error, and it is what the spec says it may be.

Bounded: a handful of examples per operation, against one temporary SQLite home.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from enstratus_workers.admin import (
    AdminContext,
    create_app,
    load_admin_settings,
    load_token,
)
from enstratus_workers.admin.outcome_watch import WAIT_MAX_S
from enstratus_workers.config import load_settings
from enstratus_workers.jobs.submit import new_job
from enstratus_workers.layout import Layout
from tests import servicehome as sh

MAX_EXAMPLES = 15  # per operation and mode: some 600 requests in all, in-process
#: ``GET /jobs/{id}?wait=`` waits that long for a job to end, and no job runs here: the valid
#: waits generated (in either mode: a negative case may break another part) are cut to this
#: (the client's read times out at 10 s)
WAIT_CAP_S = 0.5
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def admin(tmp_path_factory):
    home = sh.make_home(tmp_path_factory.mktemp("fuzz"))
    layout = Layout(home)
    # schemathesis' in-process client calls the app "testserver" (port 80): that is its address here
    admin_settings = replace(load_admin_settings(layout), host="testserver", port=80)
    token = load_token(admin_settings)
    ctx = AdminContext.open(load_settings(layout), layout, admin_settings)
    app, auth = create_app(ctx, token), {"Authorization": f"Bearer {token.reveal()}"}
    ctx.dbs.jobs.submit(new_job(ctx.settings, "noop"))  # job 1, for the known-ids runs
    yield app, auth
    ctx.close()


@pytest.fixture(scope="module")
def admin_schema(admin):
    app, headers = admin
    return schemathesis.openapi.from_asgi("/openapi.json", app, headers=headers)


#: every operation of the spec ("METHOD path"); the last test keeps this list equal to the spec.
#: The deletions come last, so the "known" runs of the others still find what they aim at.
OPERATIONS = (
    "GET /instances", "POST /instances", "GET /instances/{instance_id}",
    "POST /instances/{instance_id}/enable", "POST /instances/{instance_id}/disable",
    "POST /instances/{instance_id}/start", "PUT /instances/{instance_id}/autoscale",
    "PUT /instances/{instance_id}/queues/{queue}", "DELETE /instances/{instance_id}/queues/{queue}",
    "GET /queues", "POST /queues", "GET /queues/{name}",
    "POST /queues/{name}/pause", "POST /queues/{name}/resume", "POST /accounts/{account}/pause",
    "POST /accounts/{account}/resume", "GET /pauses",
    "POST /jobs", "GET /jobs", "GET /jobs/stats", "POST /jobs/stats/reset", "GET /jobs/{job_id}",
    "POST /jobs/{job_id}/cancel", "POST /jobs/{job_id}/retry", "POST /jobs/dead/retry", "GET /audit",
    "GET /status", "GET /metrics",
    "PUT /instances/{instance_id}/placement", "GET /hosts", "GET /hosts/{name}",
    "DELETE /queues/{name}", "DELETE /instances/{instance_id}", "DELETE /hosts/{name}",
)


#: path parameters that name things the fuzzed home has (the seeded instance, its queue, a job)
KNOWN_IDS = {"instance_id": 1, "queue": "default", "name": "default", "job_id": 1, "account": "42"}


def operations(schema) -> dict:
    return {f"{op.method.upper()} {op.path}": op for op in (r.ok() for r in schema.get_all_operations())}


# Each operation is driven through its Hypothesis strategy here rather than with
# ``schema.parametrize()``: schemathesis' pytest plugin reads a pytest-internal attribute that
# pytest 9 no longer has, and the strategy is the same generator underneath. Negative examples
# (bodies and parameters that break the spec) must be refused with a 4xx, never a 5xx.
# random ids mostly name nothing (404): "known" runs aim the same fuzzing at things that exist
RUNS = [pytest.param(op, mode, known, id=f"{op}-{mode.value}{'-known' if known else ''}")
        for op in OPERATIONS for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
        for known in ((False, True) if "{" in op else (False,))]


@pytest.mark.parametrize("operation,mode,known", RUNS)
def test_no_request_makes_the_admin_api_fail(admin, admin_schema, operation, mode, known):
    _app, auth = admin
    op = operations(admin_schema)[operation]
    seen = []
    wanted = {p.name for p in op.path_parameters} if known else set()
    fixed = {k: v for k, v in KNOWN_IDS.items() if k in wanted}

    @given(case=op.as_strategy(generation_mode=mode, path_parameters=fixed or None))
    @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def call(case):
        wait = (case.query or {}).get("wait")
        if isinstance(wait, (int, float)) and not isinstance(wait, bool) and WAIT_CAP_S < wait <= WAIT_MAX_S:
            case.query["wait"] = WAIT_CAP_S   # a valid wait on a job nobody runs lasts all of it
        response = case.call(headers=auth)
        seen.append(response.status_code)
        assert response.status_code < 500, (
            f"{case.method} {case.formatted_path}: {response.status_code} {response.text}")
        if mode is GenerationMode.POSITIVE:
            case.validate_response(response, checks=CHECKS)
        elif response.status_code == 401:  # a refusal must say what is wrong, unless the token was left out
            assert response.request.headers.get("Authorization") != auth["Authorization"], response.text

    try:
        call()
    except Unsatisfiable:  # an operation with nothing to break (no parameters, no body)
        assert mode is GenerationMode.NEGATIVE
    assert seen or mode is GenerationMode.NEGATIVE, f"no example was generated for {operation}"


def test_the_spec_covers_every_resource(admin_schema):
    assert set(operations(admin_schema)) == set(OPERATIONS)
