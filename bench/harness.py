"""What every benchmark shares: the service started in a scratch install root on RabbitMQ +
MariaDB, everything it made removed afterwards, waiting for outcomes, percentiles, and the one
line per figure with its ratios.

Each run gets a random tag: its install root is a ``ewbench-`` temporary directory, its database
``ewbench_<tag>`` and its exchanges and queues ``ewbench.<tag>...``, so runs side by side (and the
test suite's own names) never meet, and the cleanup removes exactly what this run made.

The daemons run on the bench's own interpreter (its directory first on ``PATH``, which is where
the init script looks for ``python3`` when the checkout has no ``.venv``) and import this
checkout's code and ``bench/plugin`` (the ``bench.stamp`` action) through ``PYTHONPATH``.
"""

from __future__ import annotations

import math
import os
import shutil
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PLUGIN = REPO / "bench" / "plugin"
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from enstratus_workers.config import load_settings
from enstratus_workers.db import NewJob, open_databases
from enstratus_workers.layout import Layout
from enstratus_workers.mq.amqp_declare import service_exchanges
from tests import servicehome

# plaintext, as the service connects to a URL without ssl* options (config/dburl.driver_tls):
# PyMySQL 1.2 would otherwise build a TLS context (about 50 ms of CPU) for every connection
MYSQL = {"host": "127.0.0.1", "port": 3306, "user": "root", "ssl_disabled": True}
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"


class BenchFailed(SystemExit):
    """The run cannot give a figure (the service did not start, jobs failed, a peer broke):
    the message goes to stderr and the exit status is 1."""

    def __init__(self, message: str):
        super().__init__(f"bench failed: {message}")


def new_tag() -> str:
    return uuid.uuid4().hex[:8]


# -- figures ------------------------------------------------------------------------------------
def percentile(values, q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of a non-empty sequence."""
    ordered = sorted(values)
    if not ordered:
        raise BenchFailed("no samples to take a percentile of")
    return ordered[max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))]


def ratios(value: float, against: dict[str, float | None], who: str = "ours") -> str:
    """``ours/ceiling=0.52x ours/celery=1.30x`` for the references that were measured."""
    return " ".join(f"{who}/{name}={value / ref:.3g}x" for name, ref in against.items() if ref)


def figure(label: str, text: str, value: float | None = None, against: dict | None = None,
           who: str = "ours") -> None:
    """One line per figure: what, the figure, and its ratios to this run's ceiling and peers."""
    tail = ratios(value, against, who) if value is not None and against else ""
    print(f"{label:<58} {text}{'  ' + tail if tail else ''}", flush=True)


def latency_text(samples_ms) -> str:
    return (f"p50={percentile(samples_ms, 50):.2f}ms p99={percentile(samples_ms, 99):.2f}ms "
            f"n={len(samples_ms)}")


# -- the service in a scratch home --------------------------------------------------------------
def _service_environment() -> None:
    """Let the init script and every daemon it starts use this interpreter, this checkout's code
    and the bench's action plug-in (servicehome passes ``os.environ`` on)."""
    bin_dir = str(Path(sys.executable).parent)
    path = os.environ.get("PATH", "")
    if not path.startswith(bin_dir + os.pathsep):
        os.environ["PATH"] = bin_dir + os.pathsep + path
    parts = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO), str(PLUGIN)]
                                               + [p for p in parts if p not in (str(REPO), str(PLUGIN))])


@dataclass
class Service:
    """A started service: its install root, settings and open databases."""

    home: Path
    layout: Layout
    settings: object
    dbs: object
    tag: str

    @property
    def run_dir(self) -> Path:
        return self.home / "services" / "worker" / "run"

    def _admin_files(self):
        """The suite's reader of the admin daemon's URL and token files (``hostile_helpers.Svc``)."""
        from tests.e2e.hostile_helpers import Svc

        return Svc("rabbitmq+mariadb", self.home, {})

    def admin_url(self, timeout: float = 30.0) -> str:
        try:
            return self._admin_files().admin_url(timeout)
        except AssertionError as exc:   # hostile_helpers.Broken
            raise BenchFailed(str(exc)) from None

    def admin_token(self) -> str:
        return self._admin_files().token()

    def worker_pid_files(self) -> list[Path]:
        return sorted(self.run_dir.glob("worker@*.pid"))

    def warm_up(self, n: int = 50, timeout: float = 120) -> None:
        """Wait for every worker process, then run ``n`` noop jobs: connections, pools and
        caches are warm before any clock starts."""
        wanted = sum(t.min for t in self.settings.worker.types)
        if not servicehome.wait_until(lambda: len(self.worker_pid_files()) >= wanted, 60, 0.1):
            raise BenchFailed(f"only {len(self.worker_pid_files())} of {wanted} worker processes started")
        before = self.dbs.jobs.counts()["succeeded"]
        self.dbs.jobs.submit_many([NewJob("noop", "{}", self.settings.worker.default_queue, 1)] * n)
        wait_succeeded(self.dbs, before + n, timeout)


def _drop_database(name: str) -> None:
    import pymysql

    conn = pymysql.connect(**MYSQL, autocommit=True)
    try:
        conn.cursor().execute(f"DROP DATABASE IF EXISTS `{name}`")
    finally:
        conn.close()


def delete_amqp(exchanges: list[str], queues: list[str]) -> None:
    """Delete these queues and exchanges (absent ones are fine: the broker's delete is idempotent)."""
    import pika

    conn = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    try:
        ch = conn.channel()
        for q in queues:
            ch.queue_delete(q)
        for ex in exchanges:
            ch.exchange_delete(ex)
    finally:
        conn.close()


def stop_process(proc, wait: float = 30.0) -> None:
    """Join a bench's helper process, killed if it is not done within ``wait``; one that never
    started is left alone."""
    if proc.pid is None:
        return
    proc.join(wait)
    if proc.is_alive():
        proc.kill()
        proc.join()


def receipt(pipe, expected, what: str, timeout: float = 30.0) -> float:
    """The stamp a measuring process sent back through ``pipe`` as ``(what it got, stamp)``,
    checked to be for ``expected``."""
    if not pipe.poll(timeout):
        raise BenchFailed(f"{what} did not arrive in {timeout:g} s")
    got, stamp = pipe.recv()
    if got != expected:
        raise BenchFailed(f"{what}: got {got!r} for {expected!r}")
    return stamp


def _service_queues(settings) -> list[str]:
    """Every broker queue the service may have declared: each queue, its dead-letter queue and its
    delay queues (one per step of the delay ladder, made only when a job was retried)."""
    from enstratus_workers.mq.amqp_delay import LADDER

    mq = settings.mq
    names = []
    for q in settings.worker.all_queues:
        names += [mq.queue_prefix + q, mq.queue_prefix + q + ".dead"]
        names += [f"{mq.queue_prefix}{q}.delay.{ms}" for ms in LADDER]
    return names


#: what a bench's service runs with beside the tests' scratch home: the pinger's health round at
#: its shipped interval (``worker.properties``), not the tests' 1 s. A round costs about 30 ms of
#: CPU (the pid files read twice, a broker connection opened, the job counts): once a second it
#: took 3.9% of a core from every job's path on two cores, ten times what a shipped service pays.
SHIPPED_PROPS = {"pinger.heartbeat_interval": 10}


@contextmanager
def started_service(*, embedded: bool = False, km: bool = False, worker_props: dict | None = None,
                    warm_up: int = 50):
    """The service started with its init script in a new scratch home (and its KM with ``km``),
    with ``SHIPPED_PROPS`` unless ``worker_props`` says otherwise; afterwards stopped, its strays
    killed, its database, queues, exchanges and home removed, also when the bench failed half-way."""
    worker_props = {**SHIPPED_PROPS, **(worker_props or {})}
    _service_environment()
    tag = new_tag()
    scratch = Path(tempfile.mkdtemp(prefix="ewbench-"))
    database = f"ewbench_{tag}"
    amqp = None if embedded else {"exchange": f"ewbench.{tag}", "queue_prefix": f"ewbench.{tag}."}
    mysql = None if embedded else f"mysql+pymysql://root@127.0.0.1:3306/{database}"
    try:
        home = servicehome.make_home(scratch, amqp=amqp, mysql_url=mysql, worker_props=worker_props)
        if km:
            servicehome.add_km(home)
        layout = Layout(home)
        settings = load_settings(layout)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    dbs = None
    try:
        with _working_directory(scratch):
            if km:
                _checked("KM", servicehome.km_init(home, "start"))
            _checked("service", servicehome.init(home, "start", timeout=120))
        dbs = open_databases(settings.worker, layout)
        service = Service(home, layout, settings, dbs, tag)
        if warm_up:
            service.warm_up(warm_up)
        yield service
    finally:
        servicehome.init(home, "stop", timeout=120)
        if km:
            servicehome.km_init(home, "stop")
        servicehome.kill_strays(home)
        if dbs is not None:
            dbs.close()
        if not embedded:
            _drop_database(database)
            delete_amqp(list(service_exchanges(amqp["exchange"])), _service_queues(settings))
        shutil.rmtree(scratch, ignore_errors=True)


@contextmanager
def _working_directory(directory: Path):
    """Start the daemons from ``directory``: ``python -m`` puts its working directory first on
    ``sys.path``, so started from a checkout (the usual ``cd`` into one to run a bench) the
    publisher and the subscriber ran that checkout's code, not ``REPO``'s from ``PYTHONPATH``,
    and a bench of the release before from a copy of its tree measured the current one's."""
    before = os.getcwd()
    os.chdir(directory)
    try:
        yield
    finally:
        os.chdir(before)


def _checked(what: str, result) -> None:
    if result.returncode != 0:
        raise BenchFailed(f"the {what} did not start (exit {result.returncode}): {result.stdout}{result.stderr}")


# -- outcomes -----------------------------------------------------------------------------------
def finished_counts(dbs) -> dict[str, int]:
    """``JobStore.counts()``'s figures of the finished statuses, read from their totals alone.

    Those are the same numbers (``counts()`` takes the finished statuses from the totals), but
    ``counts()`` also counts the unfinished rows, a scan of the whole backlog: polled every 10 ms
    through a bulk run that cost MariaDB more CPU than the subscriber did, on the cores the
    service under test shares. The totals are a few rows, written with each outcome."""
    with dbs.jobs.engine.connect() as conn:
        found = dict(conn.exec_driver_sql("SELECT status, jobs FROM enstratus_job_total").all())
    return {s: int(found.get(s, 0)) for s in ("succeeded", "failed", "dead", "cancelled")}


def wait_succeeded(dbs, n: int, timeout: float = 600) -> float:
    """Wait until ``n`` jobs of the database have succeeded; return the time (perf_counter)
    they were seen. Any failed or dead job fails the run: a figure over failed jobs means nothing."""
    deadline = time.monotonic() + timeout
    while True:
        counts = finished_counts(dbs)
        if counts["succeeded"] >= n:
            return time.perf_counter()
        if counts["failed"] or counts["dead"]:
            raise BenchFailed(f"jobs failed during the benchmark: {counts}")
        if time.monotonic() > deadline:
            raise BenchFailed(f"timed out waiting for {n} succeeded jobs: {counts}")
        time.sleep(0.01)


def wait_terminal(dbs, job_id: int, timeout: float = 60, poll: float = 0.001):
    """Poll the job's row every ``poll`` seconds until it is terminal; (job, time.time() seen).
    A job that did not succeed fails the run."""
    from enstratus_workers.db.schema import TERMINAL

    deadline = time.monotonic() + timeout
    while True:
        job = dbs.jobs.get(job_id)
        seen = time.time()
        if job is not None and job.status in TERMINAL:
            if job.status != "succeeded":
                raise BenchFailed(f"job {job_id} ended {job.status}: {job.error}")
            return job, seen
        if time.monotonic() > deadline:
            raise BenchFailed(f"job {job_id} still {job.status if job else 'missing'} after {timeout:g}s")
        time.sleep(poll)
