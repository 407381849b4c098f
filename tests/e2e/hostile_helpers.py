"""Shared machinery of the hostile-input suite (tests/e2e/test_hostile*.py).

A ``Svc`` is one running scratch install (init script, real daemons) on the embedded default or
on RabbitMQ + MariaDB, optionally with its KM. ``check_invariants`` is the one helper every
hostile test ends with: it says which invariant broke and with what data.

Everything here talks to 127.0.0.1 only, and every process a test starts is stopped by pid in
``stop_service`` (init script stop, then SIGKILL of whatever of the install is left).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from enstratus_workers.mq.amqp_declare import service_exchanges
from tests import servicehome as sh

REPO = sh.REPO
BIN = REPO / "services" / "worker" / "bin"
MYSQL_ROOT = "mysql+pymysql://root@127.0.0.1:3306"

#: credentials planted in the KM of a service: no other (account, name) may read their secrets
PLANTED = (("sec_acct", "aws", "planted-secret-aws-1f2e3d"),
           ("42", "cloud", "planted-secret-cloud-9a8b7c"))
#: names that differ from a planted one only by case, accents or trailing spaces
NEAR_NAMES = (("SEC_ACCT", "aws"), ("séc_acct", "áws"), ("sec_acct ", "aws"), ("sec_acct", "aws "),
              ("sec_acct", "AWS"), ("Sec_Acct", "Aws"), ("42 ", "cloud"), ("42", "CLOUD"), ("42", "clöud"))


class Broken(AssertionError):
    """An invariant of the running service does not hold; the message says which and with what."""


# -- databases and broker names of one service ------------------------------------------------

def _mysql(sql: str, db: str | None = None) -> list[tuple]:
    import pymysql

    conn = pymysql.connect(host="127.0.0.1", port=3306, user="root", password="", database=db,
                           autocommit=True, connect_timeout=5, ssl_disabled=True)   # as dburl.driver_tls
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            return list(cur.fetchall())
    finally:
        conn.close()


def new_mysql_db() -> tuple[str, str]:
    """A fresh MariaDB database: (name, SQLAlchemy URL)."""
    name = f"ewhostile_{uuid.uuid4().hex[:10]}"
    _mysql(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    return name, f"{MYSQL_ROOT}/{name}"


def drop_mysql_db(name: str) -> None:
    with contextlib.suppress(Exception):
        _mysql(f"DROP DATABASE IF EXISTS `{name}`")


def new_amqp_names() -> dict:
    n = uuid.uuid4().hex[:10]
    return {"exchange": f"ewhostile.{n}", "queue_prefix": f"ewhostile.{n}."}


def rabbitmqctl_queues() -> list[tuple[str, int, int]]:
    """(name, messages_unacknowledged, messages_ready) of every queue of the broker."""
    out = subprocess.run(["rabbitmqctl", "list_queues", "-q", "--no-table-headers",
                          "name", "messages_unacknowledged", "messages_ready"],
                         capture_output=True, text=True, timeout=60).stdout
    rows = []
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
            rows.append((parts[0], int(parts[1]), int(parts[2])))
    return rows


def delete_amqp(names: dict) -> None:
    import pika

    with contextlib.suppress(Exception):
        conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", 5672))
        ch = conn.channel()
        for name, _u, _r in rabbitmqctl_queues():
            if name.startswith(names["queue_prefix"]):
                ch.queue_delete(name)
        for ex in service_exchanges(names["exchange"]):
            ch.exchange_delete(ex)
        conn.close()


# -- a plug-in action that returns a result of any size, loaded through PYTHONPATH ------------

_PLUGIN = '''
def big_result(arguments, context):
    """Returns a result of arguments["mb"] MiB: more than MariaDB's max_allowed_packet at 20."""
    return {"blob": "x" * int(float(arguments.get("mb", 1)) * 1024 * 1024)}
'''


def write_plugin(root: Path) -> Path:
    """A directory that, on PYTHONPATH, registers the action ``hostile.big_result``."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "ew_hostile_actions.py").write_text(_PLUGIN)
    dist = root / "ew_hostile_actions-0.1.dist-info"
    dist.mkdir(exist_ok=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ew-hostile-actions\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[enstratus_workers.actions]\nhostile.big_result = ew_hostile_actions:big_result\n")
    return root


# -- one running service ------------------------------------------------------------------------

@dataclass
class Svc:
    kind: str                                  # "embedded" or "rabbitmq+mariadb"
    home: Path
    env: dict
    amqp: dict | None = None
    mysql_db: str | None = None
    km_port: int | None = None
    admin_statuses: list = field(default_factory=list)   # (method, path, status) of every call
    started_at: float = 0.0

    @property
    def layout(self):
        from enstratus_workers.layout import Layout

        return Layout(self.home)

    @property
    def settings(self):
        from enstratus_workers.config import load_settings

        return load_settings(self.layout)

    @property
    def log_dir(self) -> Path:
        return self.home / "services" / "worker" / "log"

    @property
    def run_dir(self) -> Path:
        return self.home / "services" / "worker" / "run"

    def dbs(self):
        from enstratus_workers.db import open_databases

        return open_databases(self.settings.worker, self.layout, ensure=False)

    # admin API
    def admin_url(self, timeout: float = 20.0) -> str:
        found = sh.wait_until(lambda: list(self.run_dir.glob("admin@*.url")), timeout, 0.1)
        if not found:
            raise Broken(f"admin daemon of {self.home} wrote no URL file in {timeout}s")
        return found[0].read_text().strip().rstrip("/")

    def token(self) -> str:
        return (self.run_dir / "admin.token").read_text().strip()

    def admin(self, method: str, path: str, *, body: bytes | None = None, headers: dict | None = None,
              auth: bool = True, timeout: float = 15.0):
        """One HTTP request to the admin daemon (http.client: raw bodies go out untouched);
        returns (status, headers, body bytes) and keeps the status for the no-5xx invariant."""
        import http.client
        from urllib.parse import urlsplit

        url = urlsplit(self.admin_url())
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=timeout)
        hdrs = {"Accept": "application/json", **(headers or {})}
        if auth:
            hdrs.setdefault("Authorization", f"Bearer {self.token()}")
        if body is not None:
            hdrs.setdefault("Content-Type", "application/json")
        try:
            conn.request(method, path, body=body, headers=hdrs)
            resp = conn.getresponse()
            data = resp.read()
            result = (resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)
            set_cookies = resp.headers.get_all("set-cookie") or []
            result[1]["set-cookie-all"] = set_cookies
        finally:
            conn.close()
        self.admin_statuses.append((method, path, result[0], data[:300]))
        return result

    def publish_raw(self, bodies: list[bytes], queue: str = "default") -> None:
        """Put these bodies straight onto the service's real work queue: pika on RabbitMQ, the
        embedded transport's own publish on the embedded default. No job row is made for them."""
        if self.kind == "embedded":
            from enstratus_workers.mq import open_transport
            from enstratus_workers.mq.base import OutgoingMessage

            with open_transport(self.settings.mq, self.layout) as t:
                t.declare([queue])
                t.publish([OutgoingMessage(queue, b, f"hostile-{uuid.uuid4().hex[:12]}") for b in bodies])
            return
        import pika

        mq = self.settings.mq
        conn = pika.BlockingConnection(pika.ConnectionParameters(
            "127.0.0.1", mq.port, mq.vhost, pika.PlainCredentials(mq.user, mq.password.reveal())))
        try:
            ch = conn.channel()
            ch.confirm_delivery()
            for b in bodies:
                ch.basic_publish(mq.exchange, queue, b, pika.BasicProperties(
                    delivery_mode=2, message_id=f"hostile-{uuid.uuid4().hex[:12]}",
                    content_type="application/json"), mandatory=True)
        finally:
            conn.close()

    def depth(self, queue: str = "default"):
        """(ready, unacked, dead) of a logical queue, as the broker itself counts them.

        On RabbitMQ the ready count comes from a passive declare; the unacked count needs
        ``rabbitmqctl`` (seconds on a loaded host), so it is asked only once nothing is ready."""
        from enstratus_workers.mq import open_transport

        with open_transport(self.settings.mq, self.layout) as t:
            d = t.depths([queue])[0]
            if self.kind == "embedded" or d.ready:
                return d.ready, d.unacked, d.dead
            name = t.queue_name(queue)
        for qname, unacked, ready in rabbitmqctl_queues():
            if qname == name:
                return ready, unacked, d.dead
        return d.ready, None, d.dead

    def dead_letters(self, queue: str = "default"):
        from enstratus_workers.mq import open_transport

        with open_transport(self.settings.mq, self.layout) as t:
            return t.dead_letters(queue, limit=1000)

    def km(self):
        return sh.km_client(self.home)

    def pinger_check(self) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "pinger"), "check"], env=self.env, capture_output=True,
                              text=True, timeout=60)

    def logs(self) -> dict[str, str]:
        out = {}
        for d in (self.log_dir, self.home / "services" / "km" / "log"):
            for f in sorted(d.glob("*.log")) if d.exists() else []:
                out[str(f.relative_to(self.home))] = f.read_text(errors="replace")
        return out


def make_service(tmp: Path, kind: str, *, km: bool = False, worker_props: dict | None = None,
                 plugin: bool = False) -> Svc:
    """A scratch install (not started). ``kind`` is ``embedded`` or ``rabbitmq+mariadb``."""
    amqp = mysql_db = mysql_url = None
    if kind != "embedded":
        amqp = new_amqp_names()
        mysql_db, mysql_url = new_mysql_db()
    home = sh.make_home(tmp, amqp=amqp, mysql_url=mysql_url, worker_props=worker_props)
    env = sh.env_for(home)
    if plugin:
        path = write_plugin(tmp / "plugin")
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(path), env.get("PYTHONPATH", "")) if p)
    svc = Svc(kind, home, env, amqp=amqp, mysql_db=mysql_db)
    if km:
        svc.km_port = sh.add_km(home)
        if mysql_url:
            sh.set_keys(home / "services" / "km" / "classes" / "km.cfg", {"credentials_url": mysql_url})
    return svc


def start_service(svc: Svc) -> Svc:
    if svc.km_port is not None:
        r = subprocess.run([str(sh.KM_INIT), "start"], env=svc.env, capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise Broken(f"KM of {svc.kind} did not start: rc={r.returncode} {r.stdout}{r.stderr}")
        with svc.km() as client:
            for account, name, secret in PLANTED:
                client.put(account, name, secret)
    r = subprocess.run([str(sh.INIT), "start"], env=svc.env, capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        raise Broken(f"service ({svc.kind}) did not start: rc={r.returncode} {r.stdout}{r.stderr}")
    svc.started_at = time.monotonic()
    return svc


def stop_service(svc: Svc, timeout: float = 90) -> float:
    """Stop the install (init script, KM too), then SIGKILL any process of it left, by pid;
    drop its database and broker objects. Returns how long the init script's stop took."""
    began = time.monotonic()
    try:
        with contextlib.suppress(subprocess.TimeoutExpired):
            subprocess.run([str(sh.INIT), "stop"], env=svc.env, capture_output=True, text=True, timeout=timeout)
        took = time.monotonic() - began
        if svc.km_port is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                subprocess.run([str(sh.KM_INIT), "stop"], env=svc.env, capture_output=True, text=True, timeout=30)
    finally:
        for pid in sh.our_processes(svc.home):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if svc.amqp:
            delete_amqp(svc.amqp)
        if svc.mysql_db:
            drop_mysql_db(svc.mysql_db)
    return took


@contextlib.contextmanager
def running_service(tmp: Path, kind: str, **kw):
    svc = make_service(tmp, kind, **kw)
    try:
        start_service(svc)
        yield svc
    finally:
        stop_service(svc)


def needs_servers(request, kind: str) -> None:
    """Skip (or fail in CI) through the conftest fixtures when the servers are absent."""
    if kind != "embedded":
        request.getfixturevalue("rabbitmq_url")
        request.getfixturevalue("mysql_server")


# -- jobs -----------------------------------------------------------------------------------------

def submit(svc: Svc, action: str, arguments=None, **kw):
    """Submit as the CLI does (``submit.submit``: validation, then a pending row); the Job."""
    from enstratus_workers.jobs.submit import submit as do_submit

    dbs = svc.dbs()
    try:
        job, _created = do_submit(svc.settings, dbs, action, json.dumps({} if arguments is None else arguments), **kw)
        return job
    finally:
        dbs.close()


def wait_jobs(svc: Svc, job_ids, timeout: float = 30.0) -> dict:
    """Wait until every job is terminal; {job_id: Job} as last seen."""
    from enstratus_workers.db.schema import TERMINAL

    dbs = svc.dbs()
    try:
        deadline = time.monotonic() + timeout
        while True:
            jobs = {i: dbs.jobs.get(i) for i in job_ids}
            if all(j is not None and j.status in TERMINAL for j in jobs.values()) or time.monotonic() > deadline:
                return jobs
            time.sleep(0.1)
    finally:
        dbs.close()


def job(svc: Svc, job_id: int):
    dbs = svc.dbs()
    try:
        return dbs.jobs.get(job_id)
    finally:
        dbs.close()


def events_of(svc: Svc, job_id: int):
    dbs = svc.dbs()
    try:
        return dbs.events.for_job(job_id)
    finally:
        dbs.close()


def sql(svc: Svc, engine_name: str, text: str, params: dict | None = None) -> list[tuple]:
    import sqlalchemy as sa

    dbs = svc.dbs()
    try:
        engine = dbs.provisioning if engine_name == "provisioning" else dbs.analytics
        with engine.begin() as conn:
            res = conn.execute(sa.text(text), params or {})
            return [tuple(r) for r in res] if res.returns_rows else []
    finally:
        dbs.close()


def max_job_id(svc: Svc) -> int:
    return sql(svc, "provisioning", "SELECT COALESCE(MAX(job_id), 0) FROM enstratus_job")[0][0]


def insert_queued_job(svc: Svc, action: str, arguments: dict, attempts: int = 0) -> int:
    """A job row as the publisher leaves it after relaying (``queued``), with no message: the
    test then plays the message. Returns its id."""
    from enstratus_workers.db.jobs import now_ms

    sql(svc, "provisioning",
        "INSERT INTO enstratus_job (action, arguments, queue, status, attempts, max_attempts, "
        "created_timestamp, queued_timestamp) VALUES (:a, :g, 'default', 'queued', :n, 3, :t, :t)",
        {"a": action, "g": json.dumps(arguments), "n": attempts, "t": now_ms()})
    return sql(svc, "provisioning", "SELECT MAX(job_id) FROM enstratus_job WHERE action = :a", {"a": action})[0][0]


def message(job_id, action="echo", arguments=None, attempt=1, **extra) -> bytes:
    doc = {"job_id": job_id, "action": action, "arguments": {} if arguments is None else arguments,
           "attempt": attempt, **extra}
    return json.dumps(doc).encode()


# -- the invariants -----------------------------------------------------------------------------

def _jobs_still_succeed(svc: Svc, problems: list[str], n: int = 3, timeout: float = 15.0) -> None:
    try:
        marks = [f"inv-{uuid.uuid4().hex[:8]}" for _ in range(n)]
        ids = [submit(svc, "echo", {"mark": m}).job_id for m in marks]
    except Exception as exc:  # noqa: BLE001 - reported as the broken invariant
        problems.append(f"jobs submitted normally: the submit itself failed: {exc!r}")
        return
    began = time.monotonic()
    jobs = wait_jobs(svc, ids, timeout)
    bad = {}
    for job_id, mark in zip(ids, marks):
        j = jobs[job_id]
        if j is None or j.status != "succeeded" or json.loads(j.result or "null") != {"mark": mark}:
            bad[job_id] = (j.status, j.result, j.error) if j else "row gone"
    if bad:
        problems.append(f"jobs submitted normally must succeed within {timeout:.0f}s; after "
                        f"{time.monotonic() - began:.1f}s these did not: {bad}")


def _queues_settle(svc: Svc, problems: list[str], timeout: float = 15.0) -> None:
    queues = list(svc.settings.worker.all_queues)
    last = {}

    def settled():
        for q in queues:
            last[q] = svc.depth(q)
        return all(ready == 0 and unacked == 0 for ready, unacked, _ in last.values())

    try:
        if not sh.wait_until(settled, timeout, 0.5):
            problems.append(f"nothing may stay unacked or undelivered on the service's queues; after "
                            f"{timeout:.0f}s (ready, unacked, dead) per queue: {last}")
    except Exception as exc:  # noqa: BLE001
        problems.append(f"queue depths could not be read: {exc!r}")


ADMIN_PROBES = ("/status", "/jobs", "/jobs/stats", "/queues", "/instances", "/metrics")


def _no_5xx(svc: Svc, problems: list[str]) -> None:
    try:
        svc.admin_url(timeout=5)
    except Broken:
        return   # a service without its admin daemon (--without-http): nothing to probe
    for path in ADMIN_PROBES:
        try:
            svc.admin("GET", path)
        except Exception as exc:  # noqa: BLE001
            problems.append(f"admin API GET {path} did not answer: {exc!r}")
    fives = [(m, p, s, b) for m, p, s, b in svc.admin_statuses if s >= 500]
    if fives:
        problems.append(f"the admin API answered 5xx: {fives[:10]}")


def _credentials_exact(svc: Svc, problems: list[str]) -> None:
    if svc.km_port is None:
        return
    from enstratus_workers.km import KMError, KMNotFound

    secrets = {s for _a, _n, s in PLANTED}
    planted = {(a, n): s for a, n, s in PLANTED}
    try:
        with svc.km() as client:
            for (account, name), secret in planted.items():
                got = client.get(account, name)
                if got.text() != secret:
                    problems.append(f"KM: planted credential {account!r}/{name!r} no longer reads back")
            for account, name in NEAR_NAMES:
                try:
                    got = client.get(account, name)
                except KMNotFound:
                    continue
                if got.text() in secrets or (got.account, got.name) != (account, name):
                    problems.append(f"KM: get({account!r}, {name!r}) returned the credential "
                                    f"{got.account!r}/{got.name!r} of another name")
    except KMError as exc:
        problems.append(f"KM: the planted credentials could not be checked: {exc!r}")


def _one_event_per_attempt(svc: Svc, problems: list[str]) -> None:
    try:
        dupes = sql(svc, "analytics", "SELECT job_id, attempt, COUNT(*) FROM enstratus_job_event "
                                      "GROUP BY job_id, attempt HAVING COUNT(*) > 1")
        strangers = sql(svc, "analytics", "SELECT DISTINCT job_id FROM enstratus_job_event")
    except Exception as exc:  # noqa: BLE001
        problems.append(f"analytics DB could not be read: {exc!r}")
        return
    if dupes:
        problems.append(f"(job, attempt) with more than one analytics event: {dupes[:20]}")
    known = {r[0] for r in sql(svc, "provisioning", "SELECT job_id FROM enstratus_job")}
    ghosts = sorted(r[0] for r in strangers if r[0] not in known)
    if ghosts:
        problems.append(f"analytics events for jobs that do not exist (a stranger message ran): {ghosts[:20]}")


def check_invariants(svc: Svc, *, what: str = "") -> None:
    """The common invariants, after a hostile act: every broken one is reported, with its data."""
    problems: list[str] = []
    _jobs_still_succeed(svc, problems)
    _queues_settle(svc, problems)
    _no_5xx(svc, problems)
    _credentials_exact(svc, problems)
    _one_event_per_attempt(svc, problems)
    if problems:
        raise Broken(f"[{svc.kind}] after {what or 'the hostile input'}, invariants broke:\n  - "
                     + "\n  - ".join(problems))


def sigterm_and_wait(svc: Svc, daemon: str, timeout: float) -> float | None:
    """SIGTERM (a warm stop) to the daemon's pid from its pid file; seconds until it exited,
    or None if it is still there after ``timeout`` (it is then left to ``stop_service``)."""
    [pid_file] = list(svc.run_dir.glob(f"{daemon}@*.pid"))
    pid = int(pid_file.read_text().split()[0])
    began = time.monotonic()
    os.kill(pid, signal.SIGTERM)
    while time.monotonic() - began < timeout:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split(") ", 1)[1].startswith("Z"):
                    return time.monotonic() - began
        except (FileNotFoundError, ProcessLookupError):
            return time.monotonic() - began
        time.sleep(0.1)
    return None


def raw_tcp(port: int, data: bytes = b"", *, wait: float = 0.0) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    if data:
        s.sendall(data)
    if wait:
        time.sleep(wait)
    return s


def closed_within(s: socket.socket, seconds: float) -> float | None:
    """Seconds until the peer closed ``s`` (EOF or reset), or None if still open after ``seconds``."""
    began = time.monotonic()
    deadline = began + seconds
    while time.monotonic() < deadline:
        s.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            chunk = s.recv(65536)
        except (TimeoutError, socket.timeout):
            continue
        except OSError:
            return time.monotonic() - began
        if not chunk:
            return time.monotonic() - began
    return None


def cli(svc_or_home, *args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    home = svc_or_home.home if isinstance(svc_or_home, Svc) else svc_or_home
    return subprocess.run([sys.executable, "-m", "enstratus_workers.cli", "--home", str(home), *args],
                          env=sh.env_for(home), capture_output=True, text=True, timeout=timeout)


def dedent(text: str) -> str:
    return textwrap.dedent(text).lstrip()
