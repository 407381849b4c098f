"""No secret appears in any log, error message, job row, status output or traceback.

The service runs on RabbitMQ + MariaDB with secrets this test made up and therefore knows: a
RabbitMQ user's password (mq.cfg), a MariaDB user's password (the URLs of worker.properties and
dasein-persistence.properties), the ENCRYPTION_KEY of enstratus-provisioning.cfg, the KM's master
key and a cloud credential put through the KM. Every path an operator or a user can take is run
(start, jobs that succeed and fail, an action that fetches the credential, a KM outage with its
traceback, every CLI view, a bad config, a wrong MQ and DB password, stop); then every file the
service wrote, every command's output and every row of every database is searched for every
secret, raw and encoded.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import shutil
import sqlite3
import subprocess
import uuid
from pathlib import Path
from urllib.parse import quote

import pytest

from tests import servicehome as sh
from tests.conftest import unavailable

pytestmark = [pytest.mark.slow]

PINGER = sh.REPO / "services" / "worker" / "bin" / "pinger"
ADMIN_TOKEN = "services/worker/run/admin.token"


# -- real-server users with passwords nobody else knows ------------------------------------------

def _rabbitmqctl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["rabbitmqctl", *args], capture_output=True, text=True, timeout=60)


@pytest.fixture
def rabbit_user(rabbitmq_url):
    """A RabbitMQ user with a fresh random password and full rights on vhost /; deleted after."""
    if shutil.which("rabbitmqctl") is None:
        unavailable("rabbitmqctl is not on PATH: cannot create a RabbitMQ user")
    name = f"ewsec-{uuid.uuid4().hex[:10]}"
    password = "mq" + secrets.token_urlsafe(24)   # never starts with "-": not an option
    r = _rabbitmqctl("add_user", name, password)
    assert r.returncode == 0, r.stdout + r.stderr
    try:
        r = _rabbitmqctl("set_permissions", "-p", "/", name, ".*", ".*", ".*")
        assert r.returncode == 0, r.stdout + r.stderr
        yield name, password
    finally:
        _rabbitmqctl("delete_user", name)


@pytest.fixture
def mysql_user(mysql_url):
    """A MariaDB user with a random password (with characters a URL must escape), granted on the
    test's database; yields ``(database, user, password)`` and drops the user after."""
    import pymysql

    database = mysql_url.rsplit("/", 1)[1]
    user = f"ewsec_{uuid.uuid4().hex[:10]}"
    password = "db" + secrets.token_urlsafe(18) + "/p@ss:w%rd+"
    conn = pymysql.connect(host="127.0.0.1", port=3306, user="root", password="", autocommit=True)
    try:
        with conn.cursor() as cur:
            for host in ("127.0.0.1", "localhost"):
                cur.execute("CREATE USER %s@%s IDENTIFIED BY %s", (user, host, password))
                cur.execute(f"GRANT ALL PRIVILEGES ON `{database}`.* TO %s@%s", (user, host))
        yield database, user, password
    finally:
        with conn.cursor() as cur:
            for host in ("127.0.0.1", "localhost"):
                cur.execute("DROP USER IF EXISTS %s@%s", (user, host))
        conn.close()


# -- the search -----------------------------------------------------------------------------------

def _base64_forms(value: bytes) -> set[bytes]:
    """The base64 text of ``value`` wherever it sits in a longer encoded stream: at each of the
    three alignments, without the characters that depend on the neighbouring bytes."""
    found = set()
    for k in range(3):
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            text = encode(b"\0" * k + value).rstrip(b"=")
            found.add(text[(k + 1 if k else 0):-1])
    return found


def forms(secret: str | bytes) -> dict[str, bytes]:
    """The ways ``secret`` could leak: as is, base64 (both alphabets), hex, URL-encoded, JSON."""
    raw = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
    out = {"raw": raw, "hex": raw.hex().encode(), "HEX": raw.hex().upper().encode()}
    for i, b64 in enumerate(sorted(_base64_forms(raw))):
        out[f"base64#{i}"] = b64
    if isinstance(secret, str):
        out["url-encoded"] = quote(secret, safe="").encode()
        out["url-encoded-path"] = quote(secret).encode()
        out["json"] = json.dumps(secret)[1:-1].encode()
    return out


def find_leaks(secret_values: dict[str, str | bytes], where: dict[str, bytes]) -> list[str]:
    """``"<secret> (<form>) in <place> at <offset>"`` for every occurrence."""
    leaks = []
    for label, value in secret_values.items():
        for form, needle in forms(value).items():
            for place, haystack in where.items():
                at = haystack.find(needle)
                if at >= 0:
                    leaks.append(f"{label} ({form}) in {place} at byte {at}: "
                                 f"...{haystack[max(0, at - 60):at].decode('utf-8', 'replace')}[SECRET]...")
    return leaks


def service_files(home: Path, stores: tuple[str, ...] = ()) -> dict[str, bytes]:
    """Every regular file the service wrote under ``home``: logs, pid files, data, the local
    cloud's state and agent logs. The config directories (``classes/``) are where the operator
    put the secrets, so they are left out, as are the other files named in ``stores`` (relative
    to ``home``) whose job is to hold a secret."""
    files = {}
    for path in sorted(home.rglob("*")):
        rel = path.relative_to(home)
        if rel.parts[:1] == ("services",) and len(rel.parts) > 2 and rel.parts[2] == "classes":
            continue
        if str(rel) in stores:
            continue
        if path.is_file() and not path.is_symlink():
            files[str(rel)] = path.read_bytes()
    return files


def sqlite_dumps(home: Path) -> dict[str, bytes]:
    """``SELECT *`` of every table of every SQLite file under ``home``, as text."""
    dumps = {}
    for path in sorted(home.rglob("*")):
        if not path.is_file() or not path.read_bytes()[:16] == b"SQLite format 3\0":
            continue
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
            for table in tables:
                rows = conn.execute(f'SELECT * FROM "{table}"').fetchall()
                dumps[f"sqlite {path.relative_to(home)} table {table}"] = repr(rows).encode()
        finally:
            conn.close()
    return dumps


def mysql_dump(database: str) -> dict[str, bytes]:
    """``SELECT *`` of every table of the test's MariaDB database, as text (read as root)."""
    import pymysql

    dumps = {}
    conn = pymysql.connect(host="127.0.0.1", port=3306, user="root", password="", database=database)
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW TABLES")
            for (table,) in cur.fetchall():
                cur.execute(f"SELECT * FROM `{table}`")
                rows = cur.fetchall()
                dumps[f"mysql {database}.{table}"] = (repr(rows) + "\n" + "\n".join(
                    v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
                    for row in rows for v in row)).encode()
    finally:
        conn.close()
    return dumps


# -- running things, keeping every output ----------------------------------------------------------

class Transcript:
    """Runs commands against one install and keeps each one's stdout and stderr."""

    def __init__(self, home: Path):
        self.home = home
        self.outputs: dict[str, bytes] = {}

    def _keep(self, label: str, r: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
        label = f"#{len(self.outputs) + 1} {label}"
        self.outputs[label] = f"rc={r.returncode}\n{r.stdout}\n{r.stderr}".encode()
        return r

    def init(self, verb):
        return self._keep(f"init.d/enstratus-workers {verb}", sh.init(self.home, verb))

    def km(self, verb):
        return self._keep(f"init.d/enstratus-km {verb}", sh.km_init(self.home, verb))

    def cli(self, *args):
        return self._keep("enstratus-workers " + " ".join(args), sh.cli(self.home, *args))

    def pinger_check(self):
        r = subprocess.run([str(PINGER), "check"], env=sh.env_for(self.home), capture_output=True,
                           text=True, timeout=60)
        return self._keep("pinger check", r)

    def submit(self, action, arguments, *extra) -> dict:
        r = self.cli("submit", action, "--args", json.dumps(arguments), "--wait", "--json", *extra)
        assert r.returncode in (0, 1), r.stdout + r.stderr
        return json.loads(r.stdout)


def replace_line(path: Path, key: str, line: str) -> None:
    """Replace the ``key = ...`` line of a config file by ``line`` verbatim (mode kept)."""
    text = path.read_text()
    text, n = re.subn(rf"^[ \t]*{re.escape(key)}[ \t]*[=:].*$", lambda _m: line, text, flags=re.M)
    path.write_text(text if n else text + line + "\n")


# -- the tests ----------------------------------------------------------------------------------------

@pytest.mark.rabbitmq
@pytest.mark.mysql
# ~45 commands, each a Python process (about 1 s), and three init.d start/stop rounds: 80-90 s
# alone at load 4; beside another xdist worker's end-to-end test it took more than 150 s once
@pytest.mark.timeout(360)
def test_no_secret_appears_in_any_log_error_job_row_status_output_or_traceback(
        tmp_path, amqp_names, rabbit_user, mysql_user):
    mq_user, mq_password = rabbit_user
    database, db_user, db_password = mysql_user
    wrong_mq_password = "wrongmq" + secrets.token_urlsafe(20)
    wrong_db_password = "wrongdb" + secrets.token_urlsafe(20)
    cloud_secret = "cloudsecret-" + secrets.token_urlsafe(24)

    # Given an install on RabbitMQ and MariaDB whose every password is one we know
    db_url = f"mysql+pymysql://{db_user}:{quote(db_password, safe='')}@127.0.0.1:3306/{database}"
    home = sh.make_home(tmp_path, amqp={**amqp_names, "user": mq_user, "password": mq_password},
                        mysql_url=db_url)
    classes = home / "services" / "worker" / "classes"
    sh.set_keys(classes / "dasein-persistence.properties",
                {"dsn.cache.default": "relational", "dsn.relational.url": db_url})
    for name in ("mq.cfg", "worker.properties", "dasein-persistence.properties"):
        os.chmod(classes / name, 0o600)
    sh.any_admin_port(home)
    sh.add_km(home)
    encryption_key = base64.b64decode(
        re.search(r"^ENCRYPTION_KEY\s*=\s*(\S+)", (classes / "enstratus-provisioning.cfg").read_text(),
                  re.M).group(1))
    assert len(encryption_key) == 32
    t = Transcript(home)
    try:
        # When the KM and the workers are started
        assert t.km("start").returncode == 0, t.outputs
        assert t.init("start").returncode == 0, t.outputs
        master_key = (home / "services/km/classes/km-master.key").read_bytes()
        admin_token_file = home / ADMIN_TOKEN   # the HTTP admin daemon's, where there is one
        admin_token = admin_token_file.read_text().strip() if admin_token_file.exists() else None
        with sh.km_client(home) as km:
            km.put("acct-s", "cloud", cloud_secret, metadata={"provider": "local", "key": "acct-s-key"})

        # And jobs succeed and fail, one of them launching a server with the KM's credential
        echo = t.submit("echo", {"hello": "world"})
        assert echo["status"] == "succeeded"
        failed = t.submit("fail", {"message": "failed on purpose"})
        assert failed["status"] == "failed" and failed["error"] == "failed on purpose"
        unknown = t.submit("no.such.action", {})
        assert unknown["status"] == "failed"
        launch = t.submit("server.launch", {"account": "acct-s", "image": "local-agent",
                                            "size": "small", "name": "leakcheck"})
        assert launch["status"] == "succeeded", launch["error"]
        terminate = t.submit("server.terminate", {"server_id": launch["result"]["server_id"]})
        assert terminate["status"] == "succeeded", terminate["error"]
        nocred = t.submit("server.launch", {"account": "acct-none", "image": "local-agent",
                                            "size": "small", "name": "nocred"})
        assert nocred["status"] == "failed" and "no cloud credentials" in nocred["error"]

        # And a KM outage makes the launch raise (its traceback goes to the worker's log)
        assert t.km("stop").returncode == 0
        outage = t.submit("server.launch", {"account": "acct-s", "image": "local-agent",
                                            "size": "small", "name": "outage"}, "--max-attempts", "1")
        assert outage["status"] in ("failed", "dead") and "KMUnavailable" in outage["error"]
        assert t.km("start").returncode == 0

        # And every view an operator has is looked at
        assert t.cli("status", "--json").returncode == 0, t.outputs
        assert t.cli("status").returncode == 0
        assert t.cli("jobs", "--json", "--limit", "100").returncode == 0
        assert t.cli("jobs").returncode == 0
        for job in (echo, failed, unknown, launch, terminate, nocred, outage):
            assert t.cli("job", str(job["job_id"]), "--json").returncode == 0
            assert t.cli("job", str(job["job_id"])).returncode == 0
        assert t.cli("config", "check", "--json").returncode == 0, t.outputs
        assert t.cli("config", "check").returncode == 0
        assert sh.wait_until(lambda: t.pinger_check().returncode == 0, 20), list(t.outputs.values())[-1]
        assert t.init("status").returncode == 0
        assert t.init("stop").returncode == 0

        # And a bad config file (a bad value, and a URL whose port is out of range) is reported
        props = classes / "worker.properties"
        good_props = props.read_text()
        replace_line(props, "action.max_attempts", "action.max_attempts = lots")
        bad_url = db_url.replace(":3306/", ":70000/")
        replace_line(props, "analytics.url", f"analytics.url = {bad_url}")
        started = t.init("start")
        assert started.returncode == 6 and "action.max_attempts" in started.stdout + started.stderr
        assert list((home / "services/worker/run").glob("*.pid")) == []
        checked = t.cli("config", "check", "--json")
        assert checked.returncode == 6 and "analytics.url" in checked.stdout + checked.stderr
        assert "worker.properties:" in checked.stderr and "'lots' is not an integer" in checked.stderr
        assert t.cli("config", "check").returncode == 6
        assert t.cli("status", "--json").returncode == 6
        assert t.cli("submit", "echo", "--args", "{}", "--json").returncode == 6
        assert t.pinger_check().returncode == 3
        props.write_text(good_props)

        # And a wrong database password is met by the operator's views
        replace_line(props, "provisioning.url",
                     f"provisioning.url = {db_url.replace(quote(db_password, safe=''), wrong_db_password)}")
        denied = t.cli("status", "--json")
        assert "denied" in (denied.stdout + denied.stderr).lower(), denied.stdout + denied.stderr
        assert t.pinger_check().returncode == 2
        props.write_text(good_props)

        # And a wrong MQ password makes the daemons meet the connection-error path
        sh.set_keys(classes / "mq.cfg", {"password": wrong_mq_password})
        assert oct((classes / "mq.cfg").stat().st_mode & 0o777) == "0o600"
        t.init("start")
        [publisher_log] = (home / "services/worker/log").glob("publisher@*.log")
        assert sh.wait_until(lambda: b"ACCESS_REFUSED" in publisher_log.read_bytes(), 20)
        assert t.cli("submit", "echo", "--args", "{}", "--json").returncode == 0  # the outbox takes it
        refused = t.pinger_check()
        assert refused.returncode == 2 and "ACCESS_REFUSED" in refused.stdout, refused.stdout
        assert t.cli("status", "--json").returncode == 1
        t.init("status")
        assert t.init("stop").returncode == 0
        sh.set_keys(classes / "mq.cfg", {"password": mq_password})
        assert t.km("stop").returncode == 0
    finally:
        sh.init(home, "stop")
        sh.km_init(home, "stop")
        sh.kill_strays(home)

    # Then the paths did run: the logs hold the launch, the outage's traceback, the refusal
    files = service_files(home, stores=(ADMIN_TOKEN,))
    logs = b"\n".join(v for k, v in files.items() if "/log/" in k)
    assert b"launched server" in logs and b"Traceback" in logs and b"KMUnavailable" in logs
    assert b"ACCESS_REFUSED" in logs and b"Access denied" in b"".join(t.outputs.values())
    dumps = {**sqlite_dumps(home), **mysql_dump(database)}
    assert any("enstratus_job" in k for k in dumps) and any("credential" in k for k in dumps)

    # And not one secret, in any form, is in any file, output or row
    secret_values = {
        "RabbitMQ password": mq_password, "wrong RabbitMQ password": wrong_mq_password,
        "MariaDB password": db_password, "wrong MariaDB password": wrong_db_password,
        "ENCRYPTION_KEY": encryption_key, "KM master key": master_key,
        "KM credential secret": cloud_secret,
    }
    if admin_token:
        secret_values["admin token"] = admin_token
    leaks = find_leaks(secret_values, {**{f"file {k}": v for k, v in files.items()},
                                       **{f"output of {k}": v for k, v in t.outputs.items()},
                                       **dumps})
    assert not leaks, "secrets leaked:\n" + "\n".join(leaks)
    assert sh.our_processes(home) == []


def test_an_mq_cfg_with_a_password_readable_by_others_is_refused_and_nothing_starts(tmp_path):
    # Given an mq.cfg holding a password, readable by group and others
    password = "mq" + secrets.token_urlsafe(24)
    home = sh.make_home(tmp_path, amqp={"user": "ops", "password": password})
    sh.any_admin_port(home)
    mq_cfg = home / "services" / "worker" / "classes" / "mq.cfg"
    os.chmod(mq_cfg, 0o644)
    try:
        # When the service is started
        r = sh.init(home, "start")

        # Then it refuses with the LSB code for a configuration error, naming the file and the fix
        out = r.stdout + r.stderr
        assert r.returncode == 6, out
        assert str(mq_cfg) in out and "chmod 600" in out
        assert password not in out
        # And nothing was started: no process, no pid file
        assert sh.our_processes(home) == []
        assert list(home.glob("services/*/run/*.pid")) == []
        assert sh.init(home, "status").returncode == 3
        # And once the operator restricts the file, the configuration is accepted
        os.chmod(mq_cfg, 0o600)
        checked = sh.cli(home, "config", "check", "--json")
        assert checked.returncode == 0, checked.stdout + checked.stderr
    finally:
        sh.init(home, "stop")
        sh.kill_strays(home)
