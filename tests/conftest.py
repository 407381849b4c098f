"""Shared fixtures: real-server access that skips on a laptop without the server and fails in CI.

Following Dramatiq's conftest: the decision is made inside a fixture, never at import.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import uuid

import pytest

CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
RABBITMQ_URL = os.environ.get("RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
MYSQL_URL = os.environ.get("MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306")

_RUN_ID = uuid.uuid4().hex[:8]
_counter = itertools.count(1)


def unavailable(reason: str):
    """Skip with the reason on a developer machine; fail in CI, where every server must be up."""
    if CI:
        pytest.fail(f"required server unavailable in CI: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def rabbitmq_url():
    try:
        import pika

        conn = pika.BlockingConnection(pika.URLParameters(RABBITMQ_URL))
        conn.close()
    except Exception as exc:  # any failure to connect means "no broker here"
        unavailable(f"RabbitMQ not reachable at {RABBITMQ_URL}: {exc!r}")
    yield RABBITMQ_URL
    _delete_test_queues()


@pytest.fixture
def amqp_names(rabbitmq_url):
    """A unique exchange and queue prefix for one test; everything under them is deleted at the end."""
    n = next(_counter)
    yield {"exchange": f"ewtest.{_RUN_ID}.{n}", "queue_prefix": f"ewtest.{_RUN_ID}.{n}."}


def _delete_test_queues():
    import pika

    try:
        out = subprocess.run(["rabbitmqctl", "list_queues", "-q", "--no-table-headers", "name"],
                             capture_output=True, text=True, timeout=60).stdout
        ex_out = subprocess.run(["rabbitmqctl", "list_exchanges", "-q", "--no-table-headers", "name"],
                                capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return
    mine = f"ewtest.{_RUN_ID}."
    conn = pika.BlockingConnection(pika.URLParameters(RABBITMQ_URL))
    ch = conn.channel()
    for name in out.split():
        if name.startswith(mine):
            ch.queue_delete(name)
    for name in ex_out.split():
        if name.startswith(mine):
            ch.exchange_delete(name)
    conn.close()


@pytest.fixture(scope="session")
def mysql_server():
    try:
        import pymysql

        conn = pymysql.connect(host="127.0.0.1", port=3306, user="root", password="", connect_timeout=5,
                               ssl_disabled=True)
        conn.close()
    except Exception as exc:
        unavailable(f"MySQL/MariaDB not reachable at 127.0.0.1:3306: {exc!r}")
    return MYSQL_URL


@pytest.fixture
def mysql_url(mysql_server):
    """A fresh database for one test (dropped afterwards); yields its SQLAlchemy URL."""
    import pymysql

    name = f"ewtest_{_RUN_ID}_{next(_counter)}"

    def run(sql):
        # a fresh connection each time: a test may have restarted the server in between; without
        # TLS, as the service's own (dburl.driver_tls): PyMySQL's own try costs ~50 ms of CPU each
        conn = pymysql.connect(host="127.0.0.1", port=3306, user="root", password="", autocommit=True,
                               ssl_disabled=True)
        try:
            with conn.cursor() as cur:
                cur.execute(sql)
        finally:
            conn.close()

    run(f"CREATE DATABASE `{name}`")
    try:
        yield f"{mysql_server}/{name}"
    finally:
        run(f"DROP DATABASE IF EXISTS `{name}`")


@pytest.fixture
def mariadb_dbs(mysql_url, tmp_path):
    """The service's databases (provisioning and analytics in one) on a fresh MariaDB database."""
    from enstratus_workers.config.settings import Secret, WorkerSettings
    from enstratus_workers.db import open_databases
    from enstratus_workers.layout import Layout

    dbs = open_databases(WorkerSettings(provisioning_url=Secret(mysql_url), analytics_url=Secret(mysql_url)),
                         Layout(tmp_path))
    yield dbs
    dbs.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Captured output with a lone surrogate (the hostile-input tests log some on purpose) is kept
    with the surrogate escaped: a report must be encodable as UTF-8 to travel from a pytest-xdist
    worker to the controller, which otherwise loses the worker."""
    outcome = yield
    report = outcome.get_result()
    report.sections = [(title, _utf8_safe(text)) for title, text in report.sections]


def _utf8_safe(text):
    if not isinstance(text, str):
        return text
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
