"""The admin app under test: one app over one scratch home, driven through FastAPI's test client
as a script (the bearer token) or as our own pages in a browser (Origin, Sec-Fetch-Site, cookie)."""

from __future__ import annotations

import contextlib
import threading
from dataclasses import replace

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from enstratus_workers.admin import AdminContext, create_app, load_admin_settings, load_token
from enstratus_workers.mq.shared import SharedTransport
from enstratus_workers.config import load_settings
from enstratus_workers.db.jobs import NewJob
from enstratus_workers.db.schema import jobs as J
from enstratus_workers.layout import Layout
from tests import servicehome as sh

TOKEN = "t0ps3cret-token-for-tests-0123456789"
PORT = 8777  # the address the apps under test believe they serve (no socket is bound)
BASE = f"http://127.0.0.1:{PORT}"
#: what Chromium sends with a fetch() or a form post of our own pages
SAME_ORIGIN = {"Origin": BASE, "Sec-Fetch-Site": "same-origin"}


def set_token(home, token=TOKEN):
    cfg = home / "services" / "worker" / "classes" / "admin.cfg"
    sh.set_keys(cfg, {"token": token})
    cfg.chmod(0o600)


class Admin:
    """One app over one home; ``restart`` closes it and builds a new one over the same home."""

    def __init__(self, home, queues: SharedTransport | None = None):
        self.home, self.layout = home, Layout(home)
        self.settings = load_settings(self.layout)
        self.admin = replace(load_admin_settings(self.layout), port=PORT)
        self.ctx = AdminContext.open(self.settings, self.layout, self.admin, queues=queues)
        self.app = create_app(self.ctx, load_token(self.admin))
        self.client = TestClient(self.app, base_url=BASE)
        self.auth = {"Authorization": f"Bearer {load_token(self.admin).reveal()}"}

    def call(self, method, path, **kw):
        return self.client.request(method, path, headers={**self.auth, **kw.pop("headers", {})}, **kw)

    def client_from(self, address: str) -> TestClient:
        """Another client of the same app, calling from ``address``."""
        return TestClient(self.app, base_url=BASE, client=(address, 50000))

    def browser(self, address: str = "192.0.2.10") -> TestClient:
        """A client that behaves as our pages do in a browser: same-origin headers, a cookie jar."""
        return TestClient(self.app, base_url=BASE, client=(address, 50000), headers=SAME_ORIGIN)

    def logged_in_browser(self, address: str = "192.0.2.10") -> TestClient:
        b = self.browser(address)
        r = b.post("/login", data={"token": TOKEN, "next": "/ui/status"}, follow_redirects=False)
        assert r.status_code == 303, r.text
        return b

    def restart(self) -> "Admin":
        self.close()
        return Admin(self.home)

    def close(self):
        self.client.close()
        self.ctx.close()


def stored_job(api: Admin, **columns) -> int:
    """A job row with these columns as another tool (or an older version) may have written them,
    unchecked; its id."""
    job, _ = api.ctx.dbs.jobs.submit(NewJob("noop", "{}", "default", 3))
    if columns:
        with api.ctx.dbs.provisioning.begin() as conn:
            conn.execute(sa.update(J).where(J.c.job_id == job.job_id).values(**columns))
    return job.job_id


@pytest.fixture
def home(tmp_path):
    """A scratch install with the test token in admin.cfg."""
    home = sh.make_home(tmp_path)
    set_token(home)
    return home


@pytest.fixture
def api(home):
    """The admin app over ``home``."""
    admin = Admin(home)
    yield admin
    admin.close()


@contextlib.contextmanager
def serving(service, ready_timeout: float = 30.0):
    """The admin daemon ``service`` (an ``AdminService``) running its ``run`` on a thread of its
    own, ready to serve inside the block, stopped after it; a failure of ``run`` fails the test."""
    service.layout.ensure_dirs()
    ready, failure = threading.Event(), []

    def run():
        try:
            service.run(ready.set)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertions below
            failure.append(exc)

    thread = threading.Thread(target=run, name=f"admin-under-test-{service.name}")
    thread.start()
    try:
        assert ready.wait(ready_timeout), failure
        yield service
    finally:
        service.request_stop()
        thread.join(20)
    assert not thread.is_alive() and failure == []
