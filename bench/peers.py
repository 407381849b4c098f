"""Celery and Dramatiq beside us, through the shared anchors (``../shared/bench/``), when present.

The anchors are optional: a checkout on its own has no ``../shared/bench/anchors.sh``, and then
each bench says the peers are absent and measures the rest. When present, they are run the way
``anchors.sh`` runs them: its venv (``$ANCHOR_VENV``, default ``/tmp/anchor-venv``, built with
pika, celery and dramatiq[rabbitmq] on first use), the same worker command lines and start-up
pauses, a fresh counter file per run, and its scripts (``drive.py``, ``latency.py``) as they are.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from harness import REPO, BenchFailed, delete_amqp

DEFAULT_ANCHORS = REPO.parent / "shared" / "bench"
VENV = Path(os.environ.get("ANCHOR_VENV", "/tmp/anchor-venv"))
# the workers as anchors.sh starts them, and the seconds it gives each to come up
CELERY = (["celery", "-A", "celery_app", "worker", "-c", "2", "-P", "prefork", "--loglevel=WARNING"], 8)
DRAMATIQ = (["dramatiq", "dramatiq_app", "-p", "2", "-t", "8"], 6)


def add_arguments(ap, peers_help: str = "also Celery and Dramatiq (needs the anchors)") -> None:
    """``--peers`` and ``--anchors``, as every script that measures the peers takes them."""
    ap.add_argument("--peers", action="store_true", help=peers_help)
    ap.add_argument("--anchors", type=Path, default=DEFAULT_ANCHORS, help="the shared anchors' directory")


def opened(args, wanted: bool = True) -> "Anchors | None":
    """The anchors, when ``--peers`` asks for them (and the bench ``wanted`` them) and they are
    there; else None, saying so when they were asked for but are absent."""
    if not (args.peers and wanted):
        return None
    if not available(args.anchors):
        print(absent_line(args.anchors))
        return None
    return Anchors(args.anchors)


def available(anchors: Path) -> bool:
    return (anchors / "anchors.sh").is_file()


def absent_line(anchors: Path) -> str:
    return f"peers: absent ({anchors / 'anchors.sh'} not found; pass --anchors DIR)"


#: the broker objects Celery and Dramatiq declare under the anchors' settings
PEER_QUEUES = ("celery", "default", "default.DQ", "default.XQ")
PEER_EXCHANGES = ("celery", "celeryev", "celery.pidbox", "reply.celery.pidbox")


class Anchors:
    """The shared anchor scripts and their venv, with one counter file per instance."""

    def __init__(self, directory: Path):
        if not available(directory):
            raise BenchFailed(absent_line(directory))
        self.dir = directory
        self._ensure_venv()
        fd, counter = tempfile.mkstemp(prefix="ewbench-counter-")
        os.close(fd)
        self.counter = Path(counter)
        self.env = {**os.environ, "PATH": f"{VENV / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
                    "BENCH_COUNTER": counter}
        self.env.pop("PYTHONPATH", None)   # the peers run on their venv alone

    def close(self) -> None:
        for leftover in (self.counter, Path(str(self.counter) + ".lat")):
            leftover.unlink(missing_ok=True)
        # what the peers made on the broker (their fixed names): gone with the measurement
        try:
            delete_amqp(list(PEER_EXCHANGES), list(PEER_QUEUES))
        except Exception as exc:  # noqa: BLE001 - the broker may be why the bench failed
            print(f"could not delete the peers' queues: {exc}", file=sys.stderr)

    def __enter__(self):
        return self

    def __exit__(self, *_exc):
        self.close()

    @staticmethod
    def _ensure_venv() -> None:
        if (VENV / "bin" / "python").exists():
            return
        print(f"building the anchors' venv in {VENV} (first use)", file=sys.stderr, flush=True)
        for cmd in (["python3", "-m", "venv", str(VENV)],
                    [str(VENV / "bin" / "pip"), "install", "-q", "pika", "celery", "dramatiq[rabbitmq]"]):
            r = subprocess.run(cmd, check=False, capture_output=True, text=True)
            if r.returncode != 0:
                raise BenchFailed(f"could not build the anchors' venv: {' '.join(cmd)}: {r.stderr[-2000:]}")

    @property
    def python(self) -> str:
        return str(VENV / "bin" / "python")

    @contextmanager
    def worker(self, kind: str, *, confirm: bool = True):
        """A Celery or Dramatiq worker, up and idle, for the body of the ``with``; stopped after."""
        cmd, settle = CELERY if kind == "celery" else DRAMATIQ
        env = {**self.env, "DQ_CONFIRM": "1" if confirm else "0"}
        with tempfile.NamedTemporaryFile(prefix=f"ewbench-{kind}-", suffix=".log") as log:
            proc = subprocess.Popen(cmd, cwd=self.dir, env=env, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
            try:
                time.sleep(settle)
                if proc.poll() is not None:
                    log.seek(0)
                    raise BenchFailed(f"the {kind} worker exited at start: {log.read()[-2000:].decode(errors='replace')}")
                yield proc
            finally:
                _stop(proc)

    def run(self, script: str, *args, confirm: bool = True, timeout: float = 300) -> str:
        """Run one anchor script with the venv's Python; its stdout (a failure fails the bench)."""
        env = {**self.env, "DQ_CONFIRM": "1" if confirm else "0"}
        r = subprocess.run([self.python, script, *map(str, args)], check=False, cwd=self.dir, env=env,
                           capture_output=True, text=True, timeout=timeout)
        if r.returncode != 0:
            raise BenchFailed(f"{script} {' '.join(map(str, args))} failed: {r.stderr[-2000:]}")
        return r.stdout

    def rate(self, kind: str, n: int, *, confirm: bool = True) -> float:
        """drive.py: N one-by-one enqueues (``.delay()`` / ``.send()``) into an idle worker."""
        with self.worker(kind, confirm=confirm):
            out = self.run("drive.py", kind, n, confirm=confirm)
        return float(_field(out, r"rate=(\d+)/s"))

    def rate_and_cpu(self, kind: str, n: int, cpu_of) -> tuple[float, dict[str, float]]:
        """``rate``, and the CPU seconds each part spent on the N tasks: ``cpu_of(worker_pids)``
        (the worker's process and its pool's; the caller adds what else it counts, by part) read
        before and after the drive, and ``drive.py`` itself as ``client``."""
        import resource

        import psutil

        def client() -> float:
            r = resource.getrusage(resource.RUSAGE_CHILDREN)   # drive.py, once it was waited for
            return r.ru_utime + r.ru_stime

        with self.worker(kind) as proc:
            tree = [proc.pid] + [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
            before, client0 = cpu_of(tree), client()
            out = self.run("drive.py", kind, n)
            after = cpu_of(tree)
            spent = {k: after[k] - before[k] for k in after}
            spent["client"] = client() - client0
        return float(_field(out, r"rate=(\d+)/s")), spent

    def latency(self, kind: str, n: int) -> tuple[float, float]:
        """latency.py: idle enqueue -> task start, p50 and p99 in ms (Dramatiq with confirms)."""
        with self.worker(kind, confirm=True):
            out = self.run("latency.py", kind, n, timeout=120 + n)
        return float(_field(out, r"p50=([\d.]+)")), float(_field(out, r"p99=([\d.]+)"))


def _field(out: str, pattern: str) -> str:
    m = re.search(pattern, out)
    if not m:
        raise BenchFailed(f"unexpected anchor output: {out!r}")
    return m.group(1)


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the worker's process group (its pool children too), then SIGKILL if it lingers."""
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        if proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            continue
